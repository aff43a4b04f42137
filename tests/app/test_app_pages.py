"""Every page renders for every run (good, broken, hostile names) and its callbacks work,
driven through Flask's test client exactly as the browser's Dash renderer calls them."""
from __future__ import annotations

import pytest
from _dash_client import callback, classes, find, render, texts

PAGES = ["/", "/grid", "/detail", "/flow", "/patching", "/export"]
GOOD = ["smol", "smol-b", "whisper", "whisper-long"]
BROKEN = ["partial", "badjson", "badparquet", "future", "notarun", "nope", "..", "../etc",
          "%2e%2e%2fetc", "smol/../../etc", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd"]


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("run", GOOD)
def test_pages_render_good_runs_without_error_messages(client, path, run):
    page = render(client, path, f"?run={run}")
    assert "msg msg-error" not in classes(page), texts(page)[:400]


@pytest.mark.parametrize("path", PAGES[1:])
@pytest.mark.parametrize("run", BROKEN)
def test_broken_or_hostile_runs_show_a_message(client, path, run):
    page = render(client, path, f"?run={run}")
    assert "msg msg-error" in classes(page)
    text = texts(page)
    assert "Traceback" not in text and "root:" not in text  # no /etc/passwd contents


def test_corrupt_tensors_show_a_message_and_other_runs_keep_working(client):
    page = render(client, "/detail", "?run=badtensors")
    assert "patterns.safetensors is unreadable" in texts(page)
    assert "msg msg-error" not in classes(render(client, "/detail", "?run=smol"))


def test_runs_page_lists_every_run_with_status(client):
    page = render(client, "/")
    rows = {r["name"]: r for r in find(page, "runs-table")["props"]["data"]}
    assert rows["smol"]["model"] == "smollm2-135m" and rows["smol"]["status"] == "ok"
    assert rows["whisper"]["kind"] == "audio" and rows["smol"]["inputs"] == 3
    assert "schema_version 99" in rows["future"]["status"]
    assert "no heads.parquet" in rows["partial"]["status"]


def test_runs_page_actions(client):
    data = find(render(client, "/"), "runs-table")["props"]["data"]
    idx = {r["name"]: i for i, r in enumerate(data)}
    _, out = callback(client, "runs-actions.children", [[idx["smol"]]], [data])
    assert "/grid?run=smol" in str(out)
    _, out = callback(client, "runs-actions.children", [[idx["smol"], idx["smol-b"]]], [data])
    assert "/grid?run=smol&compare=smol-b" in str(out)
    _, out = callback(client, "runs-actions.children", [[idx["smol"], idx["whisper"]]], [data])
    assert "different models" in str(out)
    _, out = callback(client, "runs-actions.children", [[idx["badjson"]]], [data])
    assert "not valid json" in str(out)


def test_grid_view_comes_from_the_url(client):
    page = render(client, "/grid", "?run=smol&metric=sinks.alpha1&stream=self&layer=4&head=2"
                                   "&compare=smol-b")
    assert find(page, "grid-metric")["props"]["value"] == "sinks.alpha1"
    assert find(page, "grid-compare")["props"]["value"] == "smol-b"
    assert find(page, "grid-head")["props"]["data"] == ["self", 4, 2]
    assert "self · layer 4 · head 2" in texts(find(page, "grid-selected"))
    fig = find(page, "grid-heatmap")["props"]["figure"]
    assert "minus smol-b" in fig["layout"]["title"]["text"]
    assert find(page, "grid-preview") is not None


def test_grid_bad_url_values_fall_back(client):
    page = render(client, "/grid", "?run=smol&metric=nope&stream=zzz&layer=x&head=99&run=smol")
    assert find(page, "grid-metric")["props"]["value"] == "entropy.mean_nats"
    assert find(page, "grid-head")["props"]["data"] == ["self", 0, 0]
    page = render(client, "/grid", "?run=smol&compare=whisper")
    assert "cannot compare" in texts(find(page, "grid-message"))


def test_grid_click_selects_and_redraws(client):
    click = {"points": [{"x": 5, "y": 2, "customdata": "cross", "curveNumber": 2}]}
    status, out = callback(client, "grid-head.data", [click], ["whisper"])
    assert status == 200 and out["grid-head.data"] == ["cross", 2, 5]
    shown = {"run": "whisper", "metric": "entropy.mean_nats", "compare": None, "head": None}
    _, out = callback(client, "grid-selected.children", [["cross", 2, 5]], ["whisper", shown])
    assert "cross · layer 2 · head 5" in texts(out["grid-selected.children"])
    _, out = callback(client, "grid-heatmap.figure",
                      ["entropy.mean_nats", None, ["cross", 2, 5]], ["whisper", shown])
    assert out["shell-view.data"] == {"run": "whisper", "metric": "entropy.mean_nats",
                                      "compare": None, "stream": "cross", "layer": 2, "head": 5}
    assert out["grid-heatmap.figure"]["layout"]["shapes"][0]["x0"] == 4.5


def test_callbacks_skip_when_the_page_already_shows_the_view(client):
    shown = {"run": "smol", "metric": "entropy.mean_nats", "compare": None, "head": None}
    status, _ = callback(client, "grid-heatmap.figure", ["entropy.mean_nats", None, None],
                         ["smol", shown])
    assert status == 204
    status, _ = callback(client, "grid-body.children", ["smol"], [shown])
    assert status == 204


def test_grid_run_change_rebuilds_body(client):
    _, out = callback(client, "grid-body.children", ["whisper"], [{"run": "smol"}])
    assert find(out["grid-body.children"], "grid-heatmap") is not None
    assert out["grid-view.data"]["run"] == "whisper"
    _, out = callback(client, "grid-body.children", ["badjson"], [{"run": "smol"}])
    assert "not valid json" in texts(out["grid-body.children"])


def test_detail_page_text_and_audio(client):
    page = render(client, "/detail", "?run=smol&stream=self&layer=7&head=3&input=2")
    fig = find(page, "detail-graph")["props"]["figure"]
    assert fig["layout"]["title"]["text"].startswith("self L7 H3 · 2: 1, 2")
    assert find(page, "detail-audio")["props"]["hidden"] is True
    assert "retrieval: score" in texts(find(page, "detail-metrics"))
    page = render(client, "/detail", "?run=whisper&stream=encoder&layer=1&head=4&input=1")
    assert find(page, "detail-audio")["props"]["src"] == "/media/whisper/audio/1.wav"
    fig = find(page, "detail-graph")["props"]["figure"]
    assert fig["layout"]["xaxis4"]["title"]["text"] == "time (s)"


def test_detail_callbacks(client):
    shown = {"run": "whisper", "stream": "encoder", "layer": 0, "head": 0, "input": 0}
    _, out = callback(client, "detail-graph.figure", ["cross", 3, 5, 1, "linear", [], "clean"], ["whisper", shown])
    assert out["detail-graph.figure"]["layout"]["title"]["text"].startswith("cross L3 H5 · 1")
    assert out["shell-view.data"] == {"run": "whisper", "stream": "cross", "layer": 3,
                                      "head": 5, "input": 1, "prompt": None}
    _, out = callback(client, "detail-layer.options", ["decoder", 9], [9, "whisper", shown])
    assert out["detail-layer.value"] == 0 and out["detail-head.value"] == 0
    assert len(out["detail-head.options"]) == 6
    _, out = callback(client, "detail-graph.figure", ["self", 0, 0, 0, "linear", [], "clean"], ["badtensors", shown])
    assert "unreadable" in texts(out["detail-message.children"])


def test_flow_page_text_and_audio(client):
    page = render(client, "/flow", "?run=smol&input=1")
    assert "flow.parquet" in texts(find(page, "flow-note"))
    assert find(page, "flow-quantity")["props"]["options"][0]["value"] == "rollout"
    page = render(client, "/flow", "?run=smol-b")
    assert "computed in the dashboard" in texts(find(page, "flow-note"))
    page = render(client, "/flow", "?run=whisper")
    words = find(page, "flow-words")["props"]["data"]
    assert [w["word"] for w in words][:3] == ["The", "quick", "brown"]
    # a whisper-tiny.en run without the alignment analysis: OpenAI's published heads by default
    assert find(page, "flow-heads")["props"]["value"] == ["1/0", "2/0", "2/5", "3/0", "3/1", "3/2", "3/3", "3/4"]
    shown = {"run": "whisper", "input": 0, "heads": []}
    _, out = callback(client, "flow-align-graph.figure", [1, ["3/0"]], ["whisper", shown])
    assert "L3H0" in out["flow-align-graph.figure"]["layout"]["title"]["text"]
    _, out = callback(client, "flow-align-graph.figure", [1, ["x/y"]], ["whisper", shown])
    assert out["flow-words.data"] == []
    _, out = callback(client, "flow-token-graph.figure", [2, "flow"], ["smol", {"run": "smol"}])
    assert "flow per layer" in out["flow-token-graph.figure"]["layout"]["title"]["text"]


def test_patching_page(client):
    page = render(client, "/patching", "?run=smol")
    assert find(page, "patching-x")["props"]["value"] == "patch.effect"
    assert find(page, "patching-y")["props"]["value"] == "patch.atp"
    assert find(page, "patching-prune") is not None and find(page, {"type": "patching-effect", "index": 2})
    _, out = callback(client, "patching-scatter.figure", ["importance.michel", "patch.atp"],
                      ["smol"])
    assert "importance: michel" in out["patching-scatter.figure"]["layout"]["xaxis"]["title"][
        "text"]
    page = render(client, "/patching", "?run=whisper")
    assert "`workbench patch`" in texts(page) and "prune_curve.parquet" in texts(page)


def test_export_page_links(client):
    page = render(client, "/export", "?run=smol")
    assert find(page, "export-heads-csv")["props"]["href"] == "/download/smol/heads.csv"
    assert find(page, "export-prune_curve-parquet") is not None
    assert len(find(page, "export-preview")["props"]["data"]) == 270
    assert "Head-importance report" in texts(find(page, "export-report-preview"))


def test_unknown_page_is_a_404_page_not_an_error(client):
    page = render(client, "/nowhere")
    assert "404" in texts(page)


def test_run_dropdown_cleared_is_ignored(client):
    for first in ("grid-body.children", "detail-body.children", "flow-body.children",
                  "patching-body.children", "export-body.children"):
        status, _ = callback(client, first, [None], [{"run": "partial"}])
        assert status == 204, first


def test_export_preview_handles_odd_cells():
    import numpy as np
    import pandas as pd

    from workbench.app.pages.export import _records

    heads = pd.DataFrame({"stream": ["self"], "layer": [0], "head": [0], "a.list": [[1, 2]],
                          "a.arr": [np.arange(2)], "a.nan": [np.nan]})
    assert _records(heads) == [{"stream": "self", "layer": 0, "head": 0, "a.list": "[1, 2]",
                                "a.arr": "[0 1]", "a.nan": None}]
