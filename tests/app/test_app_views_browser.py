"""Issue 14 part 4 in headless Chromium: the views researchers expect, on the real runs of
``conftest.REAL_RUNS`` (``workbench run`` smollm2-135m and whisper-tiny.en on bundled clips,
``workbench patch`` smollm2-135m IOI) and, for a 30 s clip's words, the synthetic
``whisper-long`` run. Screenshots land in test-artifacts/app/ (``views-*.png``)."""
from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from _browser import click_cell, console_errors, errors_on_page, open_page, shot, text_of, wait
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By

_FIG = """
const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');
const arr = v => ArrayBuffer.isView(v) ? Array.from(v) : Array.isArray(v) ? v.map(arr) : v;
return gd ? JSON.parse(JSON.stringify({layout: gd.layout, data: gd.data.map(d => ({name: d.name,
    text: arr(d.text), z: arr(d.z), customdata: arr(d.customdata)}))})) : null;
"""


def _query(drv) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(drv.current_url).query).items()}


def _array(v) -> np.ndarray:
    """A figure array as plotly sends it: a list, or {dtype, bdata (base64), shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v.get("shape", len(a))).split(",")])
    return np.array(v, dtype=np.float64)


def _fig(drv, graph: str) -> dict:
    return drv.execute_script(_FIG, graph)


def _title(drv, graph: str) -> str:
    fig = _fig(drv, graph)
    return (fig or {}).get("layout", {}).get("title", {}).get("text", "") if fig else ""


def _hover(drv, graph: str, x: float, y: float) -> None:
    """Move the pointer over data point (x, y) of ``graph`` without clicking."""
    px, py = drv.execute_script("""
        const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');
        gd.scrollIntoView({block: 'center'});
        const fl = gd._fullLayout, r = gd.getBoundingClientRect();
        return [r.left + fl.xaxis._offset + fl.xaxis.l2p(arguments[1]),
                r.top + fl.yaxis._offset + fl.yaxis.l2p(arguments[2])];""", graph, x, y)
    builder = ActionBuilder(drv)
    builder.pointer_action.move_to_location(int(px), int(py))
    builder.perform()
    ActionChains(drv).reset_actions()


def test_detail_views_on_a_real_smollm2_run(browser, real_live_server, real_runs_dir):
    console_errors(browser)
    base = real_live_server + "/detail?run=smollm2&layer=3&head=2&input=0"
    open_page(browser, base, "#detail-graph", "#detail-thumbs", "#detail-vw-graph", "#detail-tokens")
    assert errors_on_page(browser) == []
    meta = json.loads((real_runs_dir / "smollm2" / "meta.json").read_text())
    tokens = meta["inputs"]["items"][0]["tokens"]["self"]
    # thumbnails: one per head of the layer, the shown one marked
    thumbs = _fig(browser, "#detail-thumbs")
    assert [d["name"] for d in thumbs["data"]] == [f"head {h}" for h in range(9)]
    assert [a["text"] for a in thumbs["layout"]["annotations"]][2] == "<b>▶ H2</b>"
    # value-weighted beside the raw pattern: rows sum to 1
    vw = _fig(browser, "#detail-vw-graph")
    assert "value-weighted" in vw["layout"]["title"]["text"]
    # token view: every token labelled, in a box that scrolls sideways
    tv = _fig(browser, "#detail-tokens")
    assert len(tv["data"][0]["text"][0]) == len(tokens)
    box = browser.execute_script("const b = document.querySelector('#detail-tokens').parentElement;"
                                 "return [b.scrollWidth, b.clientWidth];")
    assert box[0] > box[1], "a 24-token input is wider than the card: it must scroll, not thin labels"
    shot(browser, "views-detail-smollm2")
    # hover a token: its row / column; the values are the pattern's row and column
    _hover(browser, "#detail-tokens", 3, 0)
    wait(browser, lambda d: "token 3 " in _title(d, "#detail-tokens"), 10, "the hovered token")
    cd = _fig(browser, "#detail-tokens")["data"][0]["customdata"]
    assert cd[0][4:] == [0.0] * (len(tokens) - 4)       # causal: token 3 attends to nothing later
    assert abs(sum(cd[0]) - 1.0) < 2e-3                 # its row is a distribution over keys
    click_cell(browser, "#detail-tokens", 5, 0)          # a click pins the token
    wait(browser, lambda d: "pinned" in _title(d, "#detail-tokens"), 10, "the pinned token")
    _hover(browser, "#detail-tokens", 1, 1)
    assert "token 5 " in _title(browser, "#detail-tokens")
    shot(browser, "views-token-view-pinned")
    # colour scales: log, and the range without the first token
    browser.find_element(By.CSS_SELECTOR, "#detail-scale input[value='log']").click()
    wait(browser, lambda d: "(log)" in str(_fig(d, "#detail-graph")["layout"]["coloraxis"]["colorbar"]),
         15, "the log colour scale")
    browser.find_element(By.CSS_SELECTOR, "#detail-colour input").click()
    wait(browser, lambda d: "without the first token" in _title(d, "#detail-graph"), 15, "skip-first")
    shot(browser, "views-detail-log-skip-first")
    # a click on a thumbnail opens that head
    click_cell(browser, "#detail-thumbs", 2, 2, "xaxis6", "yaxis6")                 # head 5
    wait(browser, lambda d: "self L3 H5" in _title(d, "#detail-graph"), 15, "head 5 from its thumbnail")
    wait(browser, lambda d: _query(d).get("head") == "5", 10, "the URL to follow")
    assert errors_on_page(browser) == [] and console_errors(browser) == []


def test_value_weighted_rows_match_the_saved_norms(browser, real_live_server, real_runs_dir):
    """The drawn value-weighted pattern equals pattern * ||v_j W_O|| renormalised, computed here
    from the saved tensors with numpy."""
    from safetensors.numpy import load_file

    open_page(browser, real_live_server + "/detail?run=smollm2&layer=7&head=4&input=1", "#detail-vw-graph")
    t = load_file(str(real_runs_dir / "smollm2" / "patterns.safetensors"))
    p = t["pattern/self/7/1"][4].astype(np.float64)
    w = p * t["value_norm/self/7/1"][4].astype(np.float64)[None, :]
    want = w / w.sum(-1, keepdims=True)
    z = _fig(browser, "#detail-vw-graph")["data"][0]["z"]
    np.testing.assert_allclose(_array(z).astype(np.float64), want, atol=1e-3)


def test_grid_top_heads_open_the_detail(browser, real_live_server):
    open_page(browser, real_live_server + "/grid?run=smollm2&metric=sinks.alpha1", "#grid-heatmap")
    links = browser.find_elements(By.CSS_SELECTOR, "#grid-top a")
    assert len(links) == 10
    first = links[0].text                                        # e.g. "self L5 H3"
    shot(browser, "views-grid-top-heads")
    links[0].click()
    wait(browser, lambda d: _title(d, "#detail-graph").startswith(first + " · "), 20, "the detail of the top head")
    assert errors_on_page(browser) == []


def test_patching_page_on_a_real_patch_run(browser, real_live_server, real_runs_dir):
    console_errors(browser)
    open_page(browser, real_live_server + "/patching?run=smollm2-ioi")
    wait(browser, lambda d: d.execute_script(
        "const g = document.getElementById('{\"index\":0,\"type\":\"patching-effect\"}');"
        "return !!(g && g.querySelector('.js-plotly-plot'));"), 20, "the effect heatmap")
    meta = json.loads((real_runs_dir / "smollm2-ioi" / "meta.json").read_text())
    card = text_of(browser, "#patching-task")
    patch = meta["analyses"]["patch"]
    for want in ("Task: ioi", "logit_diff", "pairs", f"{patch['clean_metric_mean']:.4g}",
                 f"{patch['corrupt_metric_mean']:.4g}", meta["inputs"]["items"][0]["text"],
                 meta["inputs"]["corrupt_items"][0]["text"]):
        assert want in card, want
    assert len(browser.find_elements(By.CSS_SELECTOR, "#patching-top-0 a")) == 10
    shot(browser, "views-patching-ioi")
    px, py = browser.execute_script("""
        const g = document.getElementById('{"index":0,"type":"patching-effect"}').querySelector('.js-plotly-plot');
        g.scrollIntoView({block: 'center'});
        const fl = g._fullLayout, r = g.getBoundingClientRect();
        return [r.left + fl.xaxis._offset + fl.xaxis.l2p(4), r.top + fl.yaxis._offset + fl.yaxis.l2p(24)];""")
    builder = ActionBuilder(browser)
    builder.pointer_action.move_to_location(int(px), int(py))
    builder.pointer_action.click()
    builder.perform()
    wait(browser, lambda d: urlparse(d.current_url).path == "/detail", 20, "the detail page")
    wait(browser, lambda d: "self L24 H4" in _title(d, "#detail-graph"), 20, "head L24 H4")
    # the corrupt prompt's pattern of the same head
    browser.find_element(By.CSS_SELECTOR, "#detail-prompt input[value='corrupt']").click()
    corrupt = meta["inputs"]["corrupt_items"][0]["text"]
    wait(browser, lambda d: corrupt[:40] in _title(d, "#detail-graph"), 20, "the corrupt prompt")
    assert errors_on_page(browser) == [] and console_errors(browser) == []
    shot(browser, "views-patching-detail-corrupt")


def test_whisper_views(browser, real_live_server, live_server):
    open_page(browser, real_live_server + "/detail?run=whisper&stream=cross&layer=2&head=4",
              "#detail-graph", "#detail-thumbs", "#detail-vw-graph")
    assert errors_on_page(browser) == []
    assert len(_fig(browser, "#detail-thumbs")["data"]) == 6
    shot(browser, "views-whisper-cross-detail")
    # a 30 s clip with 67 words: no two word labels overlap on screen; own time axis on top
    open_page(browser, live_server + "/flow?run=whisper-long", "#flow-align-graph")
    boxes = browser.execute_script("""
        return Array.from(document.querySelectorAll('#flow-align-graph .annotation-text')).map(e => {
            const r = e.getBoundingClientRect(); return [e.textContent, r.left, r.right, r.top, r.bottom]; });""")
    words = [b for b in boxes if b[0] not in ("",)]
    assert len(words) >= 60
    for i, a in enumerate(words):
        for b in words[i + 1:]:
            apart = a[2] <= b[1] + 0.5 or b[2] <= a[1] + 0.5 or a[4] <= b[3] + 0.5 or b[4] <= a[3] + 0.5
            assert apart, f"word labels {a[0]!r} and {b[0]!r} overlap"
    layout = _fig(browser, "#flow-align-graph")["layout"]
    assert layout["xaxis"]["showticklabels"] and layout["xaxis"]["title"]["text"] == "time (s)"
    shot(browser, "views-whisper-30s-words")
