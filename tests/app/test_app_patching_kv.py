"""The dashboard on a ``workbench patch --node k`` run (issue 11): its rows are KV heads
(``Head(stream, layer, kv_head)``), so the Patching page labels them as KV heads and opens the
query heads they feed in Head detail, not the query head with the same index.

The run is written by the CLI for a tiny random Llama with 6 query heads and 2 KV heads per layer
(r = 3: KV head k feeds query heads 3k, 3k+1, 3k+2, the grouping of HF's ``repeat_kv``; built by
``_kv_runs``, shared with the Head grid's test); the expected names and links are written out from
that grouping and the saved head table. The click on a heatmap cell (client-side JavaScript) is
checked in headless Chromium."""
from __future__ import annotations

import base64
import threading

import numpy as np
import pandas as pd
import pytest
from _dash_client import callback, classes, find, render, texts
from _kv_runs import LAYERS, N_HEADS, N_KV, R
from _kv_runs import detail_href as _href
from _kv_runs import group as _group
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def kv_run(kv_runs_dir):
    from workbench.app import create_app

    client = create_app(kv_runs_dir).server.test_client()
    return client, pd.read_parquet(kv_runs_dir / "kv" / "heads.parquet"), kv_runs_dir


def test_kv_rows_are_labelled_and_open_their_query_heads(kv_run):
    client, heads, _ = kv_run
    assert sorted(heads["head"].unique()) == list(range(N_KV)) and set(heads["patch.node"]) == {"k"}
    page = render(client, "/patching", "?run=kv")
    assert "msg msg-error" not in classes(page), texts(page)[:400]
    assert "per key/value head" in texts(find(page, "patching-kv-note"))
    # top list: every KV row, largest |effect| first, named with its group, linking to the group's first head
    top = find(page, "patching-top-0")
    assert texts(top).startswith(f"Top {LAYERS * N_KV} KV heads")
    links = [li["props"]["children"][0]["props"] for li in top["props"]["children"][1]["props"]["children"]]
    want = heads.reindex(heads["patch.effect"].abs().sort_values(ascending=False, kind="stable").index)
    assert [(x["children"], x["href"]) for x in links] == [
        (f"self L{l} KV{k} (H{_group(k)[0]}–H{_group(k)[-1]})", _href("kv", l, _group(k)[0]))
        for l, k in zip(want["layer"], want["head"])]
    # heatmap: KV-head axis, each cell's click target and hover name
    fig = find(page, {"type": "patching-effect", "index": 0})["props"]["figure"]
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("KV head")
    trace = fig["data"][0]
    assert list(trace["x"]) == list(range(N_KV))
    for layer in range(LAYERS):
        for kv in range(N_KV):
            assert trace["customdata"][layer][kv] == _href("kv", layer, _group(kv)[0])
            assert trace["text"][layer][kv].startswith(f"<b>self L{layer} KV{kv} (H{kv * R}–H{kv * R + R - 1})</b>")
    # the exact-vs-AtP scatter names its points as KV heads too
    scatter = find(page, "patching-scatter")["props"]["figure"]["data"][0]
    assert sorted(scatter["text"]) == sorted(f"self L{l} KV{k} (H{k * R}–H{k * R + R - 1})"
                                             for l, k in zip(heads["layer"], heads["head"]))


def _array(v) -> np.ndarray:
    """A figure array as plotly sends it: a list, or {dtype, bdata (base64), shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v.get("shape", len(a))).split(",")])
    return np.array(v, dtype=np.float64)


def test_kv_effects_per_key_position(kv_run):
    client, _, runs = kv_run
    heads = pd.read_parquet(runs / "kvpos" / "heads.parquet")
    saved = load_file(str(runs / "kvpos" / "patch.safetensors"))
    page = render(client, "/patching", "?run=kvpos")
    fig = find(page, "patching-pos-graph")["props"]["figure"]
    assert fig["layout"]["title"]["text"].startswith("effect per key position · input 0")
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("key position")
    want = heads.reindex(heads["patch.effect"].abs().sort_values(ascending=False, kind="stable").index)
    assert list(fig["layout"]["yaxis"]["ticktext"]) == [f"self L{l} KV{k} (H{k * R}–H{k * R + R - 1})"
                                                        for l, k in zip(want["layer"], want["head"])]
    z = _array(fig["data"][0]["z"])
    for row, (layer, kv) in enumerate(zip(want["layer"], want["head"])):
        np.testing.assert_allclose(z[row], saved[f"effect_pos/self/{layer}"][kv, 0], rtol=1e-6)


def test_detail_of_a_kv_run_shows_every_query_head_and_names_the_group(kv_run):
    client, heads, _ = kv_run
    head = N_HEADS - 1                                           # reads KV head 1; >= N_KV, once clamped to 0
    page = render(client, "/detail", f"?run=kv&layer=1&head={head}")
    assert "msg msg-error" not in classes(page), texts(page)[:400]
    dd = find(page, "detail-head")["props"]
    assert dd["value"] == head and [o["value"] if isinstance(o, dict) else o for o in dd["options"]] == \
        list(range(N_HEADS))
    note = find(page, "detail-kv-note")
    assert "reads KV head 1" in texts(note) and "node k" in texts(note)
    others = [h for h in _group(1) if h != head]
    for h in others:
        assert find(note, f"detail-kv-head-{h}")["props"]["href"] == _href("kv", 1, h)
    kv_effect = float(heads[(heads["layer"] == 1) & (heads["head"] == 1)]["patch.effect"].iloc[0])
    from workbench.app.metrics import format_value

    assert format_value(kv_effect) in texts(find(page, "detail-metrics"))
    # the head picker's redraw: query head 2 reads KV head 0 (shared with heads 0 and 1)
    _, out = callback(client, "detail-graph.figure", ["self", 1, 2, 0, "linear", [], "clean"],
                      ["kv", {"run": "kv"}], changed=2)
    note = out["detail-kv.children"]
    assert "reads KV head 0" in texts(note)
    assert [find(note, f"detail-kv-head-{h}")["props"]["href"] for h in (0, 1)] == \
        [_href("kv", 1, 0), _href("kv", 1, 1)]
    kv0 = float(heads[(heads["layer"] == 1) & (heads["head"] == 0)]["patch.effect"].iloc[0])
    assert format_value(kv0) in texts(out["detail-metrics.children"])


def test_z_runs_keep_head_rows(kv_run):
    client, _, _ = kv_run
    page = render(client, "/patching", "?run=z")
    assert find(page, "patching-kv-note") is None
    top = find(page, "patching-top-0")
    assert texts(top).startswith("Top ") and " KV " not in texts(top)
    first = top["props"]["children"][1]["props"]["children"][0]["props"]["children"][0]["props"]
    layer, head = (int(x[1:]) for x in first["children"].split()[1:])
    assert first["href"] == _href("z", layer, head)
    fig = find(page, {"type": "patching-effect", "index": 0})["props"]["figure"]
    assert fig["data"][0]["customdata"][0][0] == "self"
    detail = render(client, "/detail", "?run=z&layer=1&head=5")
    assert find(detail, "detail-head")["props"]["value"] == 5 and find(detail, "detail-kv-note") is None


_CELL = """
const g = document.getElementById('{"index":0,"type":"patching-effect"}').querySelector('.js-plotly-plot');
g.scrollIntoView({block: 'center'});
const fl = g._fullLayout, r = g.getBoundingClientRect();
return [r.left + fl.xaxis._offset + fl.xaxis.l2p(arguments[0]), r.top + fl.yaxis._offset + fl.yaxis.l2p(arguments[1])];
"""


def test_a_click_on_a_kv_cell_opens_its_first_query_head(kv_run, browser):
    from _browser import console_errors, errors_on_page, open_page, wait
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    from workbench.app.server import make_app_server

    server = make_app_server(kv_run[2], "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        console_errors(browser)
        open_page(browser, f"http://127.0.0.1:{server.server_port}/patching?run=kv")
        wait(browser, lambda d: d.execute_script(
            "const g = document.getElementById('{\"index\":0,\"type\":\"patching-effect\"}');"
            "return !!(g && g.querySelector('.js-plotly-plot'));"), 20, "the effect heatmap")
        px, py = browser.execute_script(_CELL, 1, 1)                # KV head 1 of layer 1
        builder = ActionBuilder(browser)
        builder.pointer_action.move_to_location(int(px), int(py))
        builder.pointer_action.click()
        builder.perform()
        wait(browser, lambda d: "/detail" in d.current_url, 20, "the detail page")
        assert browser.current_url.endswith(_href("kv", 1, _group(1)[0]))
        wait(browser, lambda d: "reads KV head 1" in d.find_element(By.ID, "detail-kv").text, 20, "the KV note")
        assert errors_on_page(browser) == [] and console_errors(browser) == []
    finally:
        server.shutdown()
        server.server_close()
