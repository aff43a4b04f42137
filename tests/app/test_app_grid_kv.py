"""The Head grid on a ``workbench patch --node k`` run (issue 11): its rows are KV heads, so the grid
reads as the Patching page does (column axis "KV head", hover and top list naming each KV head with
the query heads that read it) and a click on a cell opens the first of those query heads in Head
detail, not the query head with the KV index. Runs written by the CLI (``_kv_runs``: 6 query and 2
KV heads per layer); expected names, links, values and patterns are read here from the grouping
and the run folder's saved tables (pandas, safetensors)."""
from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
from _dash_client import callback, classes, find, render, texts
from _kv_runs import LAYERS, N_KV, R, detail_href, group
from safetensors.numpy import load_file


@pytest.fixture(scope="module")
def grid_client(kv_runs_dir):
    from workbench.app import create_app

    return create_app(kv_runs_dir).server.test_client()


def _name(layer: int, kv: int) -> str:
    return f"self L{layer} KV{kv} (H{kv * R}–H{kv * R + R - 1})"


def _array(v) -> np.ndarray:
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v.get("shape", len(a))).split(",")])
    return np.array(v, dtype=np.float64)


def _click(client, customdata, layer: int, head: int, run: str):
    click = {"points": [{"customdata": customdata, "x": head, "y": layer, "curveNumber": 0}]}
    return callback(client, "grid-head.data", [click], [run])


def test_grid_of_a_kv_run_labels_kv_heads(grid_client, kv_runs_dir):
    heads = pd.read_parquet(kv_runs_dir / "kv" / "heads.parquet")
    page = render(grid_client, "/grid", "?run=kv&metric=patch.effect")
    assert "msg msg-error" not in classes(page), texts(page)[:400]
    assert "per key/value head" in texts(find(page, "grid-kv-note"))
    fig = find(page, "grid-heatmap")["props"]["figure"]
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("KV head")
    trace = fig["data"][0]
    assert list(trace["x"]) == list(range(N_KV))
    want = heads.pivot(index="layer", columns="head", values="patch.effect").to_numpy()
    np.testing.assert_allclose(_array(trace["z"]).astype(float), want, rtol=1e-6)
    for layer in range(LAYERS):
        for kv in range(N_KV):
            assert trace["text"][layer][kv].startswith(f"<b>{_name(layer, kv)}</b>")
            assert trace["customdata"][layer][kv] == detail_href("kv", layer, group(kv)[0])
    top = find(page, "grid-top")
    assert texts(top).startswith(f"Top {LAYERS * N_KV} KV heads")
    links = [li["props"]["children"][0]["props"] for li in top["props"]["children"][1]["props"]["children"]]
    order = heads.reindex(heads["patch.effect"].abs().sort_values(ascending=False, kind="stable").index)
    assert [(x["children"], x["href"]) for x in links] == [
        (_name(l, k), detail_href("kv", l, group(k)[0])) for l, k in zip(order["layer"], order["head"])]
    # another metric through the page's redraw keeps the KV labels
    status, out = callback(grid_client, "grid-heatmap.figure", ["patch.effect_atp", None, None],
                           ["kv", {"run": "kv", "metric": "patch.effect"}])
    assert status == 200
    fig = out["grid-heatmap.figure"]
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("KV head")
    assert fig["data"][0]["text"][1][1].startswith(f"<b>{_name(1, 1)}</b>")
    np.testing.assert_allclose(_array(fig["data"][0]["z"]).astype(float),
                               heads.pivot(index="layer", columns="head", values="patch.effect_atp").to_numpy(),
                               rtol=1e-6)


def test_a_click_on_a_kv_cell_opens_its_first_query_head(grid_client):
    page = render(grid_client, "/grid", "?run=kv&metric=patch.effect")
    cell = find(page, "grid-heatmap")["props"]["figure"]["data"][0]["customdata"][1][1]
    status, out = _click(grid_client, cell, 1, 1, "kv")
    assert status == 200
    assert out["grid-go.href"] == detail_href("kv", 1, group(1)[0])     # H3, not H1
    assert "grid-head.data" not in out                                  # nothing selected as a query head
    # the target is rebuilt from the run, never taken from the click
    status, out = _click(grid_client, "//evil.example/x?stream=self", 1, 0, "kv")
    assert status == 200 and out["grid-go.href"] == detail_href("kv", 1, 0)


def test_z_runs_still_select_on_click(grid_client):
    page = render(grid_client, "/grid", "?run=z&metric=patch.effect")
    fig = find(page, "grid-heatmap")["props"]["figure"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "head" and find(page, "grid-kv-note")["props"].get(
        "children") is None
    status, out = _click(grid_client, fig["data"][0]["customdata"][1][5], 1, 5, "z")
    assert status == 200 and out["grid-head.data"] == ["self", 1, 5] and "grid-go.href" not in out


def test_selected_kv_head_panel_names_its_group_and_previews_its_first_query_head(grid_client, kv_runs_dir):
    heads = pd.read_parquet(kv_runs_dir / "kv" / "heads.parquet")
    patterns = load_file(str(kv_runs_dir / "kv" / "patterns.safetensors"))["pattern/self/1/0"]   # [head, q, k]
    page = render(grid_client, "/grid", "?run=kv&metric=patch.effect&stream=self&layer=1&head=1")
    panel = find(page, "grid-selected")
    assert find(panel, "grid-selected-title")["props"]["children"] == _name(1, 1)
    link = find(panel, "grid-detail-link")["props"]
    assert link["href"] == detail_href("kv", 1, 3) and "H3" in link["children"]
    preview = _array(find(panel, "grid-preview")["props"]["figure"]["data"][0]["customdata"]).astype(float)
    np.testing.assert_allclose(preview, patterns[3].astype(float), atol=1e-3)
    assert not np.allclose(preview, patterns[1].astype(float), atol=1e-3)
    from workbench.app.metrics import format_value

    effect = heads[(heads["layer"] == 1) & (heads["head"] == 1)]["patch.effect"].item()
    assert format_value(effect) in texts(find(panel, "grid-metrics"))


def test_kv_and_head_rows_are_not_compared(grid_client):
    for run, other in (("kv", "z"), ("z", "kv")):
        page = render(grid_client, "/grid", f"?run={run}&metric=patch.effect&compare={other}")
        msg = texts(find(page, "grid-message"))
        assert "cannot compare" in msg and "KV heads" in msg, msg
        assert "minus" not in find(page, "grid-heatmap")["props"]["figure"]["layout"]["title"]["text"]


@pytest.fixture(scope="module")
def kv_server(kv_runs_dir):
    from conftest import _serve

    yield from _serve(kv_runs_dir)


def test_a_click_on_a_kv_cell_in_the_browser(browser, kv_server):
    from _browser import click_cell, console_errors, errors_on_page, open_page, shot, wait
    from selenium.webdriver.common.by import By

    console_errors(browser)
    open_page(browser, kv_server + "/grid?run=kv&metric=patch.effect", "#grid-heatmap")
    shot(browser, "grid-kv")
    click_cell(browser, "#grid-heatmap", 1, 1)                        # KV head 1 of layer 1
    wait(browser, lambda d: "/detail" in d.current_url, 20, "the detail page")
    assert browser.current_url.endswith(detail_href("kv", 1, group(1)[0]))
    wait(browser, lambda d: "reads KV head 1" in d.find_element(By.ID, "detail-kv").text, 20, "the KV note")
    assert errors_on_page(browser) == [] and console_errors(browser) == []
