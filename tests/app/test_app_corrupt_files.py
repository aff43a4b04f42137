"""Issue 9 section 4: a corrupt file hides only the panel that needs it, and the Runs page
says which part of a run is broken instead of "ok"."""
from __future__ import annotations

import pytest
from _dash_client import callback, classes, find, render, texts
from _synth_runs import make_audio_run, make_text_run

from workbench.app import create_app


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """trunc-patterns: patterns.safetensors cut in half; bad-flow: flow.parquet garbage;
    bad-patch: patch.safetensors garbage; trunc-audio: a Whisper run, patterns cut;
    bad-inputs: a Whisper run whose inputs.safetensors (mel, audio) is cut."""
    root = tmp_path_factory.mktemp("damaged")
    make_text_run(root, "good", n_layers=3)
    _truncate(make_text_run(root, "trunc-patterns", n_layers=3) / "patterns.safetensors")
    (make_text_run(root, "bad-flow", n_layers=3) / "flow.parquet").write_bytes(b"PAR1 not a table")
    bad_patch = make_text_run(root, "bad-patch", n_layers=3)
    (bad_patch / "patch.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    _truncate(make_audio_run(root, "trunc-audio", durations=(1.0,), n_layers=3)
              / "patterns.safetensors")
    _truncate(make_audio_run(root, "bad-inputs", durations=(1.0,), n_layers=3)
              / "inputs.safetensors", 0.3)
    return create_app(root).server.test_client()


def _error_texts(tree) -> str:
    return texts(tree) if "msg msg-error" in classes(tree) else ""


def test_runs_page_names_the_broken_file(damaged):
    rows = {r["name"]: r for r in find(render(damaged, "/"), "runs-table")["props"]["data"]}
    assert rows["good"]["status"] == "ok"
    assert rows["trunc-patterns"]["status"].startswith("patterns.safetensors unreadable: ")
    assert "flow.parquet unreadable" in rows["bad-flow"]["status"]
    assert "patch.safetensors unreadable" in rows["bad-patch"]["status"]
    assert "inputs.safetensors unreadable" in rows["bad-inputs"]["status"]
    assert all(rows[n]["openable"] for n in rows)          # each still opens
    actions = callback(damaged, "runs-actions.children", [[list(rows).index("bad-flow")]],
                       [list(rows.values())])[1]["runs-actions.children"]
    assert "/grid?run=bad-flow" in str(actions)


def test_truncated_patterns_keep_the_head_metrics(damaged):
    page = render(damaged, "/detail", "?run=trunc-patterns&layer=1&head=2")
    table = find(page, "detail-metrics-table")
    assert table is not None and "entropy: mean nats" in texts(table)
    assert "patterns.safetensors is unreadable" in _error_texts(page)
    assert find(page, "detail-layer")["props"]["value"] == 1      # the selectors still work
    status, out = callback(damaged, "detail-graph.figure", ["self", 1, 3, 0, "linear", [], "clean"],
                           ["trunc-patterns", {"run": "trunc-patterns"}])
    assert status == 200 and "patterns.safetensors is unreadable" in str(out)
    assert "entropy: mean nats" in str(out["detail-metrics.children"])


def test_truncated_patterns_on_grid_hide_only_the_preview(damaged):
    page = render(damaged, "/grid", "?run=trunc-patterns&stream=self&layer=1&head=2")
    assert find(page, "grid-heatmap")["props"]["figure"]["data"]
    assert find(page, "grid-metrics") is not None and find(page, "grid-preview") is None
    assert "patterns.safetensors is unreadable" in _error_texts(find(page, "grid-selected"))


def test_flow_page_keeps_what_does_not_need_the_broken_file(damaged):
    page = render(damaged, "/flow", "?run=trunc-patterns")       # flow.parquet is fine
    assert find(page, "flow-token-graph")["props"]["figure"]["data"]
    page = render(damaged, "/flow", "?run=bad-flow")             # rollout from the patterns
    assert find(page, "flow-token-graph")["props"]["figure"]["data"]
    assert "flow.parquet is unreadable" in texts(find(page, "flow-note"))
    page = render(damaged, "/flow", "?run=trunc-audio")
    assert "patterns.safetensors is unreadable" in _error_texts(page)
    page = render(damaged, "/flow", "?run=bad-inputs")           # spectrogram gone, heads stay
    assert find(page, "flow-align-graph")["props"]["figure"]["data"]


def test_detail_audio_without_spectrogram_still_draws_the_pattern(damaged):
    page = render(damaged, "/detail", "?run=bad-inputs&stream=encoder")
    assert find(page, "detail-graph")["props"]["figure"]["data"]
    assert "inputs.safetensors is unreadable" in _error_texts(page)


def test_patching_page_keeps_heatmaps_when_patch_tensors_are_corrupt(damaged):
    page = render(damaged, "/patching", "?run=bad-patch")
    assert find(page, {"type": "patching-effect", "index": 0})["props"]["figure"]["data"]
    assert find(page, "patching-prune") is not None
    assert "patch.safetensors is unreadable" in _error_texts(page)
