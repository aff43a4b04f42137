"""Issue 9 section 4: no request produces a 500. Every server callback is called with each of
its inputs and states set to None, wrong types, lists holding None, huge integers and
traversal strings (one at a time, and all at once); malformed callback bodies and odd
routes (``/_dash-component-suites/..%2F...``) too. A bad request gets a 4xx or a page
saying what is wrong, never a traceback."""
from __future__ import annotations

import pytest
from _dash_client import render, router_request, texts
from _synth_runs import make_audio_run, make_broken_runs, make_text_run
from dash._utils import split_callback_id

from workbench.app import create_app

BAD = [None, 0, -1, 10**30, -(10**30), 1.5, True, "", "x", "../../etc/passwd", "..%2F..%2Fetc",
       "/etc/passwd", [None], [], [[None]], ["../../etc/passwd"], {}, {"a": None}, "0" * 5000,
       [0, 0, 0], ["self", 10**30, -1], ["cross", 0, 0], [{}], [{"name": 1, "openable": True}]]


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_text_run(root, "smol", n_layers=3)
    make_audio_run(root, "whisper", durations=(1.0,), n_layers=3)
    make_broken_runs(root, root / "smol")
    app = create_app(root)
    client = app.server.test_client()
    deps = [d for d in client.get("/_dash-dependencies").get_json()
            if d.get("clientside_function") is None and d["output"] in app.callback_map
            and "callback" in app.callback_map[d["output"]]]
    return client, deps


def _post(client, dep, values: list, changed: int = 0):
    items = dep["inputs"] + dep["state"]
    vals = [{**i, "value": v} for i, v in zip(items, values)]
    ins, sts = vals[:len(dep["inputs"])], vals[len(dep["inputs"]):]
    body = {"output": dep["output"], "outputs": split_callback_id(dep["output"]),
            "inputs": ins, "state": sts,
            "changedPropIds": [f"{ins[changed]['id']}.{ins[changed]['property']}"]}
    return client.post("/_dash-update-component", json=body)


def _base(dep) -> list:
    """Plausible values: run pickers name a real run, everything else None."""
    run = "whisper" if dep["output"].startswith(("..flow", "..detail")) else "smol"
    return [run if i["id"].endswith("-run") else None for i in dep["inputs"] + dep["state"]]


def _ok(r, what) -> None:
    assert r.status_code < 500, (what, r.status_code, r.data[:300])
    assert b"Traceback" not in r.data, what
    if r.status_code == 200:
        assert "response" in r.get_json(), what


def test_every_server_callback_survives_bad_values(fuzz_app):
    client, deps = fuzz_app
    assert len(deps) >= 15                       # all page callbacks and the pages router
    statuses = set()
    for dep in deps:
        n = len(dep["inputs"]) + len(dep["state"])
        for bad in BAD:
            r = _post(client, dep, [bad] * n)
            _ok(r, (dep["output"], "all", bad))
            statuses.add(r.status_code)
            for k in range(n):                  # one bad value, the others plausible
                values = _base(dep)
                values[k] = bad
                r = _post(client, dep, values, min(k, len(dep["inputs"]) - 1))
                _ok(r, (dep["output"], k, bad))
                statuses.add(r.status_code)
    assert 400 in statuses and 200 in statuses


def test_runs_page_selection_with_odd_rows(fuzz_app):
    client, deps = fuzz_app
    dep = next(d for d in deps if d["output"] == "runs-actions.children")
    for rows in ([{}], [{"name": 5, "openable": True}], [{"openable": False}], [{"model": None}] * 3):
        for selected in ([0], [0, 1], [0, 1, 2], [-1, 99]):
            _ok(_post(client, dep, [selected, rows]), (rows, selected))


def test_flow_head_picker_with_none_is_a_400_not_a_500(fuzz_app):
    client, deps = fuzz_app
    dep = next(d for d in deps if d["output"].startswith("..flow-align-graph"))
    r = _post(client, dep, [0, [None], "whisper", None], changed=1)
    assert r.status_code == 400 and b"flow-heads.value" in r.data
    r = _post(client, dep, [0, ["../../etc/passwd", "1/99"], "whisper", None], changed=1)
    assert r.status_code == 200
    assert "not a cross-attention head" in str(r.get_json())


def test_malformed_callback_bodies_get_400(fuzz_app):
    client, deps = fuzz_app
    dep = deps[1]
    good = {"output": dep["output"], "outputs": split_callback_id(dep["output"]),
            "inputs": [{**i, "value": None} for i in dep["inputs"]],
            "state": [{**s, "value": None} for s in dep["state"]], "changedPropIds": []}
    bodies = [{}, [], "x", 5, None, {"output": "nope.children"}, {"output": 5},
              {**good, "inputs": 5}, {**good, "inputs": [5]}, {**good, "inputs": []},
              {**good, "inputs": good["inputs"] + good["inputs"]},
              {**good, "state": [{"id": "x", "property": "y", "value": 1}]},
              {**good, "outputs": [{"id": "a", "property": "b"}]}, {**good, "outputs": 5},
              {**good, "changedPropIds": 5}, {**good, "changedPropIds": [None]},
              {"output": "..shell-nav-0.href...shell-nav-1.href...shell-nav-2.href"
                         "...shell-nav-3.href...shell-nav-4.href...shell-nav-5.href..",
               "inputs": [], "state": []}]
    for body in bodies:
        r = client.post("/_dash-update-component", json=body)
        assert r.status_code == 400, (body, r.status_code, r.data[:200])
    for raw in (b"not json", b"", b"{", b"\xff\xfe"):
        r = client.post("/_dash-update-component", data=raw, content_type="application/json")
        assert 400 <= r.status_code < 500, raw
    assert client.post("/_dash-update-component", json=good).status_code in (200, 204)


ROUTES = [
    "/_dash-component-suites/..%2F..%2Fetc%2Fpasswd", "/_dash-component-suites/dash/..%2F..%2Fetc",
    "/_dash-component-suites/dash/deps/..%2F..%2F__init__.py", "/_dash-component-suites/os/x.js",
    "/_dash-component-suites/nope/x.js", "/_dash-component-suites/dash/%2e%2e/x.js",
    "/_dash-component-suites/dash/deps/polyfill@7.v4_4_1m1.js", "/_dash-component-suites/plotly/",
    "/download/smol/heads.csv?x=%00", "/download/%00/heads.csv", "/download/smol/%00.csv",
    "/download/" + "a" * 5000 + "/heads.csv", "/media/whisper/audio/" + "9" * 40 + ".wav",
    "/media/whisper/audio/%2e%2e.wav", "/media/../audio/0.wav", "/download/smol/heads.",
    "/grid?run=smol&layer=" + "9" * 5000, "/grid?run=smol&layer=1e400&head=-0&stream=%00",
    "/detail?run=whisper&input=99999999999999999999999&head=-3&layer=x&stream=..",
    "/flow?run=whisper&input=%FF", "/?token=x", "/_dash-layout?x=1", "/_reload-hash",
    "/_favicon.ico", "/%2e%2e/%2e%2e/etc/passwd", "/assets/..%2F..%2Fetc%2Fpasswd",
    "/_dash-update-component", "/..;/etc/passwd", "/grid/" + "../" * 10,
]


@pytest.mark.parametrize("path", ROUTES)
def test_odd_routes_never_500(fuzz_app, path):
    client, _ = fuzz_app
    r = client.get(path)
    assert r.status_code < 500, (path, r.status_code, r.data[:300])
    assert b"root:" not in r.data and b"Traceback" not in r.data


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("path", ["/", "/grid?run=smol", "/download/smol/heads.csv",
                                  "/media/whisper/audio/0.wav", "/_dash-layout",
                                  "/_dash-update-component", "/download/smol/report.md"])
def test_other_methods_never_500(fuzz_app, method, path):
    client, _ = fuzz_app
    r = client.open(path, method=method, data=b"\x00garbage")
    assert r.status_code < 500, (method, path, r.status_code)


SEARCHES = ["?run=smol&run=whisper", "?layer=" + "9" * 400, "?run=..%2F..%2Fetc%2Fpasswd",
            "?run=%00", "?input=-1&head=1e9", "?metric=../../x&compare=../../etc",
            "?stream=%F0%9F%92%A9&layer=-1", "?" + "&".join(f"k{i}=v" for i in range(300))]


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("page", ["/", "/grid", "/detail", "/flow", "/patching", "/export"])
def test_pages_render_for_odd_query_strings(fuzz_app, page, search):
    client, _ = fuzz_app
    tree = render(client, page, search)
    assert "Traceback" not in texts(tree)


def test_router_callback_with_wrong_types_is_a_400(fuzz_app):
    client, _ = fuzz_app
    for path, search in ((5, ""), ("/grid", ["?run=smol"]), (None, {"a": 1}), ("/grid", 10**30)):
        r = client.post("/_dash-update-component", json=router_request(path, search))
        assert r.status_code == 400, (path, search, r.status_code)
