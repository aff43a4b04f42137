"""Dashboard circuit panels on real run folders written by ``workbench circuit`` (tiny GPT-2 with
weights scaled up, token-id pairs): Head detail's DLA by key position, DLA per head in the
Head grid and on the Circuits page, the path-patching heatmap's q|k|v selector, and the QK
contribution matrix for a chosen query and key. Expected values are read here from the run
folder with safetensors.torch / pandas (not the dashboard's numpy readers), and the QK matrix
is checked against ``actual``, the score from the model's own q and k. Screenshots (headless
Chromium, skipped where missing) go to test-artifacts/app/."""
from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from _dash_client import callback, find, render, texts
from safetensors.torch import load_file

RUNS = {"dla": ["--analysis", "dla"], "path": ["--analysis", "path", "--receivers", "self/1/0,self/1/3"],
        "qk": ["--analysis", "qk", "--head", "self/1/2", "--input", "1", "--key", "1"],
        "comp": ["--analysis", "composition"]}


@pytest.fixture(scope="module")
def circuit_runs(tmp_path_factory):
    from tiny import scale_weights, tiny_hf

    from workbench.cli import main

    root = tmp_path_factory.mktemp("circuit-runs")
    model = tmp_path_factory.mktemp("model") / "tiny-gpt2"
    hf = tiny_hf("gpt2")
    scale_weights(hf, 10.0)
    hf.save_pretrained(model)
    pairs = model.parent / "p.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9, 4 + i], "corrupt": [1, 5, 3, 9, 4 + i],
                                            "target": 4, "distractor": 6}) for i in range(2)))
    for name, extra in RUNS.items():
        assert main(["circuit", str(model), "--task", str(pairs), "--out", str(root / name), "--quiet", *extra]) == 0
    return root


@pytest.fixture(scope="module")
def cclient(circuit_runs):
    from workbench.app import create_app

    return create_app(circuit_runs).server.test_client()


def _arr(v) -> np.ndarray:
    """A figure array as the browser gets it: a list, or plotly's typed array (dtype, bdata, shape)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.array(v, dtype=float)


def _fig(page, cid):
    node = find(page, cid)
    assert node is not None, f"no {cid}"
    return node["props"]["figure"]


def test_head_detail_shows_dla_by_key_position(cclient, circuit_runs):
    per = load_file(str(circuit_runs / "dla" / "dla.safetensors"))["per_position/self/1"]      # [head, input, key]
    comps = pd.read_parquet(circuit_runs / "dla" / "dla_components.parquet")
    page = render(cclient, "/detail", "?run=dla&stream=self&layer=1&head=2&input=1")
    y = _arr(_fig(page, "detail-dla-graph")["data"][0]["y"]).astype(float)
    assert np.allclose(y, per[2, 1].double().numpy(), atol=1e-6)
    head_dla = comps[(comps.component == "self/1/2") & (comps["input"] == 1)].dla.item()
    assert y.sum() == pytest.approx(head_dla, abs=1e-5) and abs(head_dla) > 1e-3
    # another head through the detail page's own inputs: the card follows
    status, out = callback(cclient, "detail-dla.children", ["self", 1, 3, 0], ["dla"])
    assert status == 200
    y = _arr(find(out["detail-dla.children"], "detail-dla-graph")["props"]["figure"]["data"][0]["y"]).astype(float)
    assert np.allclose(y, per[3, 0].double().numpy(), atol=1e-6)
    # a run without DLA hides the card
    page = render(cclient, "/detail", "?run=qk&stream=self&layer=1&head=2")
    assert find(page, "detail-dla")["props"]["style"] == {"display": "none"}


def test_dla_per_head_in_the_head_grid_and_on_the_circuits_page(cclient, circuit_runs):
    heads = pd.read_parquet(circuit_runs / "dla" / "heads.parquet")
    want = heads.pivot(index="layer", columns="head", values="dla.value").to_numpy()
    for page, cid in ((render(cclient, "/grid", "?run=dla&metric=dla.value"), "grid-heatmap"),
                      (render(cclient, "/circuits", "?run=dla"), "circuits-dla-grid")):
        z = _arr(_fig(page, cid)["data"][0]["z"]).astype(float)
        assert z.shape == want.shape and np.allclose(z, want, atol=1e-6), cid


def test_path_heatmap_kind_selector(cclient, circuit_runs):
    table = pd.read_parquet(circuit_runs / "path" / "path.parquet")
    page = render(cclient, "/circuits", "?run=path")
    assert find(page, "circuits-kind") is not None
    for kind in ("q", "k", "v"):
        status, out = callback(cclient, "circuits-graph.figure", [kind], ["path", {"run": "path", "analysis": "path"}])
        assert status == 200
        fig = out["circuits-graph.figure"]
        want = table[table.kind == kind].pivot(index="sender", columns="receiver", values="effect")
        z = _arr(fig["data"][0]["z"]).astype(float)
        assert kind in fig["layout"]["title"]["text"]
        assert z.shape == want.shape and np.isclose(np.nansum(z), want.to_numpy().sum(), atol=1e-6)
        assert list(fig["data"][0]["y"]) == sorted(want.index, key=lambda n: int(n.split("/")[1]) * 100 +
                                                   int(n.split("/")[2]))


def _items(panel) -> list[tuple[list, float]]:
    """A top list's rows: ([(link text, href), ...], value shown)."""
    rows = []
    for li in panel["props"]["children"][1]["props"]["children"]:
        parts = li["props"]["children"]
        links = [(c["props"]["children"], c["props"]["href"]) for c in parts if isinstance(c, dict) and
                 "href" in c["props"]]
        rows.append((links, float(parts[-1]["props"]["children"])))
    return rows


def _link(run: str, name: str) -> tuple[str, str]:
    stream, layer, head = name.split("/")
    return name, f"/detail?run={run}&stream={stream}&layer={layer}&head={head}"


def _expect_pairs(run: str, values: np.ndarray, senders: list, receivers: list, by_abs: bool) -> list:
    """([sender link, receiver link], value) of the top 10 cells of ``values`` [sender, receiver]."""
    cells = [(values[i, j], s, r) for i, s in enumerate(senders) for j, r in enumerate(receivers)
             if not np.isnan(values[i, j])]
    cells.sort(key=lambda c: -abs(c[0]) if by_abs else -c[0])
    return [([_link(run, s), _link(run, r)], float(v)) for v, s, r in cells[:10]]


def _same(got: list, want: list):
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, g), (_, w) in zip(got, want):
        assert g == pytest.approx(w, rel=1e-3, abs=1e-9)            # shown with 4 significant digits


def test_circuits_top_lists_rank_the_heatmaps(cclient, circuit_runs):
    """Beside each Circuits heatmap, its top 10 ranked as the title says, from the saved tensors."""
    comps = pd.read_parquet(circuit_runs / "dla" / "dla_components.parquet")
    dla = comps[comps.kind == "head"].groupby("component").dla.mean()
    dla = dla.reindex(dla.abs().sort_values(ascending=False).index)
    page = render(cclient, "/circuits", "?run=dla")
    panel = find(page, "circuits-dla-top")
    assert texts(panel).startswith(f"Top {len(dla)} heads by |value|")
    want = [([(f"self L{n.split('/')[1]} H{n.split('/')[2]}", _link("dla", n)[1])], float(v))
            for n, v in dla.head(10).items()]
    _same(_items(panel), want)
    assert find(page, "circuits-top")["props"]["style"] == {"display": "none"}      # the DLA bars are ranked

    meta = json.loads((circuit_runs / "path" / "meta.json").read_text())["analyses"]["circuit.path"]
    effect = load_file(str(circuit_runs / "path" / "path.safetensors"))["effect"].double().numpy()
    page = render(cclient, "/circuits", "?run=path")
    panel = find(page, "circuits-top-list")
    assert texts(panel).startswith("Top 8 sender → receiver pairs via q, by |effect|")
    _same(_items(panel), _expect_pairs("path", effect[:, :, 0], meta["senders"], meta["receivers"], True))
    for kind in ("k", "v"):
        status, out = callback(cclient, "circuits-graph.figure", [kind], ["path", {"run": "path", "analysis": "path"}])
        assert status == 200
        panel = out["circuits-top.children"]
        assert texts(panel).startswith(f"Top 8 sender → receiver pairs via {kind}, by |effect|")
        _same(_items(panel), _expect_pairs("path", effect[:, :, meta["kinds"].index(kind)], meta["senders"],
                                           meta["receivers"], True))

    meta = json.loads((circuit_runs / "comp" / "meta.json").read_text())["analyses"]["circuit.composition"]
    scores = load_file(str(circuit_runs / "comp" / "composition.safetensors"))["scores"].double().numpy()
    for kind in ("q", "v"):
        status, out = callback(cclient, "circuits-graph.figure", [kind],
                               ["comp", {"run": "comp", "analysis": "composition"}])
        assert status == 200
        panel = out["circuits-top.children"]
        assert texts(panel).startswith(f"Top 10 sender → receiver pairs via {kind}, by highest excess")
        excess = scores[:, :, meta["kinds"].index(kind)] - meta["baseline"][kind]
        want = _expect_pairs("comp", excess, meta["heads"], meta["heads"], False)
        assert want != _expect_pairs("comp", excess, meta["heads"], meta["heads"], True)  # highest, not |value|
        _same(_items(panel), want)
    page = render(cclient, "/circuits", "?run=comp")
    assert texts(find(page, "circuits-top-list")).startswith("Top 10 sender → receiver pairs via q, by highest excess")


def _pairs_by_hand(q, k, scaling, names, i, j):
    m = scaling * q[:, i].double() @ k[:, j].double().T
    a, b = divmod(int(m.abs().argmax()), m.shape[1])
    return names[a], names[b], float(m[a, b])


def test_qk_contribution_matrix_for_a_chosen_query_and_key(cclient, circuit_runs):
    t = load_file(str(circuit_runs / "qk" / "qk.safetensors"))
    info = json.loads((circuit_runs / "qk" / "meta.json").read_text())["analyses"]["circuit.qk"]
    names, actual = info["components"], t["actual"].double()
    page = render(cclient, "/circuits", "?run=qk")
    fig = _fig(page, "circuits-qk-matrix")
    n = actual.shape[0]
    z = _arr(fig["data"][0]["z"]).astype(float)
    assert z.sum() == pytest.approx(float(actual[n - 1, 1]), abs=1e-4)          # default: last query, run's key
    assert list(fig["data"][0]["y"]) == names and list(fig["data"][0]["x"]) == names   # 8 <= 12 shown: all
    from workbench.app._circuit_panels import qk_matrix                     # more than top: the rest in 'other'
    m = info["scaling"] * t["q_parts"][:, n - 1].double() @ t["k_parts"][:, 1].double().T
    small = qk_matrix(m.numpy(), names, names, top=3)
    assert small.shape == (4, 4) and small.index[-1] == "other" and small.columns[-1] == "other"
    assert small.to_numpy().sum() == pytest.approx(float(actual[n - 1, 1]), abs=1e-4)
    big_rows = m.abs().sum(1).argsort(descending=True)[:3].sort().values
    assert list(small.index[:3]) == [names[r] for r in big_rows.tolist()]
    qa, kb, v = _pairs_by_hand(t["q_parts"], t["k_parts"], info["scaling"], names, n - 1, 1)
    first = find(page, "circuits-qk-pairs")["props"]["children"][1]["props"]["children"]
    assert [c["props"]["children"] for c in first[:2]] == [qa, kb]
    assert float(first[2]["props"]["children"]) == pytest.approx(v, rel=1e-3)
    for i, j in ((3, 1), (2, 2), (4, 0)):
        status, out = callback(cclient, "circuits-qk-matrix.figure", [i, j], ["qk"])
        assert status == 200
        z = _arr(out["circuits-qk-matrix.figure"]["data"][0]["z"]).astype(float)
        assert z.sum() == pytest.approx(float(actual[i, j]), abs=1e-4) and abs(float(actual[i, j])) > 1e-2
    status, out = callback(cclient, "circuits-qk-matrix.figure", [99, 0], ["qk"])
    assert status == 200 and "outside" in out["circuits-qk-matrix.figure"]["layout"]["title"]["text"]
    assert "Traceback" not in texts(page)


def test_qk_summary_figure_of_a_cross_attention_head():
    """A cross-attention head's summary has one side per row (NaN on the other): the bars
    still show the largest components of both sides."""
    from tiny import tiny_batch, tiny_hf

    from workbench._types import Head
    from workbench.app.pages.circuits import qk_figure
    from workbench.circuits.qk_attribution import qk_attribution
    from workbench.model import wrap

    hf = tiny_hf("whisper")
    m, b = wrap(hf), tiny_batch("whisper", hf)
    b.items = [{"index": 0}, {"index": 1}]
    s = qk_attribution(m, b, Head("cross", 1, 0)).summary(2)
    fig = qk_figure(s, "cross/1/0", 2, top=10)
    names = set(fig.data[0].y)
    assert len(names) == 10 and any(n.startswith("encoder/") for n in names) and "decoder/0/0" in set(s.component)


@pytest.fixture(scope="module")
def circuit_server(circuit_runs):
    from conftest import _serve

    yield from _serve(circuit_runs)


def test_circuit_panels_in_the_browser(browser, circuit_server):
    from _browser import console_errors, errors_on_page, open_page, shot

    console_errors(browser)
    for name, url, graphs in (
            ("circuits-qk-matrix", "/circuits?run=qk", ("#circuits-graph", "#circuits-qk-matrix")),
            ("circuits-dla", "/circuits?run=dla", ("#circuits-graph", "#circuits-dla-grid")),
            ("circuits-path", "/circuits?run=path", ("#circuits-graph",)),
            ("circuits-comp", "/circuits?run=comp", ("#circuits-graph",)),
            ("detail-dla", "/detail?run=dla&stream=self&layer=1&head=2&input=1", ("#detail-dla-graph",))):
        open_page(browser, circuit_server + url, *graphs)
        assert not errors_on_page(browser), (name, errors_on_page(browser))
        assert shot(browser, name).is_file()
    assert not console_errors(browser)
