"""Drive Dash callbacks through Flask's test client, the way the browser's renderer does."""
from __future__ import annotations

ROUTER_OUTPUT = ".._pages_content.children..._pages_store.data.."


def router_request(path, search) -> dict:
    """The body the browser posts to run the pages router callback for ``path`` and ``search``."""
    return {"output": ROUTER_OUTPUT,
            "outputs": [{"id": "_pages_content", "property": "children"},
                        {"id": "_pages_store", "property": "data"}],
            "inputs": [{"id": "_pages_location", "property": "pathname", "value": path},
                       {"id": "_pages_location", "property": "search", "value": search}],
            "changedPropIds": ["_pages_location.pathname"], "state": []}


def render(client, path: str, search: str = "") -> dict:
    """Run the pages router callback; returns the rendered page (Dash component JSON)."""
    r = client.post("/_dash-update-component", json=router_request(path, search))
    assert r.status_code == 200, r.data[:500]
    return r.get_json()["response"]["_pages_content"]["children"]


def _outputs(spec: str) -> list[dict]:
    if not spec.startswith(".."):
        cid, prop = spec.rsplit(".", 1) if "@" not in spec else spec.split(".", 1)
        return [{"id": cid, "property": prop}]
    out = []
    for part in spec.strip(".").split("..."):
        cid, prop = part.split(".", 1)
        out.append({"id": cid, "property": prop})
    return out


def callback_body(deps: list, first_output: str, inputs: list, state: list = (), changed: int = 0) -> dict:
    """The body the browser posts to run the callback whose first output is ``first_output``
    ("grid-heatmap.figure"), given the app's ``/_dash-dependencies`` and input and state values
    in declaration order (``changed``: index of the input that fired). Raises KeyError."""
    for dep in deps:
        outs = _outputs(dep["output"])
        if f"{outs[0]['id']}.{outs[0]['property']}" == first_output:
            break
    else:
        raise KeyError(f"no callback with first output {first_output}")
    ins = [{**i, "value": v} for i, v in zip(dep["inputs"], inputs)]
    sts = [{**s, "value": v} for s, v in zip(dep["state"], state)]
    return {"output": dep["output"], "outputs": outs if dep["output"].startswith("..")
            else outs[0], "inputs": ins, "state": sts,
            "changedPropIds": [f"{ins[changed]['id']}.{ins[changed]['property']}"]}


def callback(client, first_output: str, inputs: list, state: list = (), changed: int = 0):
    """Call the callback whose first output is ``first_output`` ("grid-heatmap.figure") with
    input and state values in declaration order. Returns (status, {output: value})."""
    body = callback_body(client.get("/_dash-dependencies").get_json(), first_output, inputs, state, changed)
    r = client.post("/_dash-update-component", json=body)
    if r.status_code != 200:
        return r.status_code, None
    resp = r.get_json()["response"]
    return 200, {f"{cid}.{prop.split('@')[0]}": v for cid, props in resp.items()
                 for prop, v in props.items()}


def find(tree, cid: str):
    """The component with id ``cid`` in a rendered Dash JSON tree, or None."""
    if isinstance(tree, dict):
        props = tree.get("props", {})
        if props.get("id") == cid:
            return tree
        for v in props.values():
            hit = find(v, cid)
            if hit is not None:
                return hit
    elif isinstance(tree, list):
        for v in tree:
            hit = find(v, cid)
            if hit is not None:
                return hit
    return None


def texts(tree) -> str:
    """All strings in a rendered tree, joined (to look for messages)."""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, dict):
        return " ".join(texts(v) for v in tree.get("props", {}).values())
    if isinstance(tree, list):
        return " ".join(texts(v) for v in tree)
    return ""


def classes(tree) -> list[str]:
    out = []
    if isinstance(tree, dict):
        props = tree.get("props", {})
        if "className" in props:
            out.append(props["className"])
        for v in props.values():
            out += classes(v)
    elif isinstance(tree, list):
        for v in tree:
            out += classes(v)
    return out
