"""End to end on real runs made once per session by `workbench run smollm2-135m` and
`workbench run whisper-tiny.en` (skipped, saying why, when the CLI or model packages are
missing). Pages render, heads and slices match the run's metadata, and in Chromium a click
in the grid updates the detail."""
from __future__ import annotations

import pytest
from _dash_client import classes, find, render, texts

PAGES = ["/", "/grid", "/detail", "/flow", "/patching", "/export"]


@pytest.fixture(scope="module")
def real_client(real_runs_dir):
    from workbench.app import create_app

    return create_app(real_runs_dir).server.test_client()


@pytest.fixture(scope="module")
def real_store(real_runs_dir):
    from workbench.app.store import RunStore

    return RunStore(real_runs_dir)


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("run", ["smollm2", "whisper"])
def test_real_runs_render_every_page(real_client, path, run):
    page = render(real_client, path, f"?run={run}")
    assert "msg msg-error" not in classes(page), texts(page)[:500]


def test_real_smollm2_run_shape(real_store):
    run = real_store.run("smollm2")
    assert run.model == "smollm2-135m" and run.streams == ["self"]
    assert run.layers("self") == list(range(30)) and run.n_heads("self", 0) == 9
    index = min(real_store.pattern_inputs("smollm2"))
    q, k = run.axes("self", index)
    p = real_store.pattern("smollm2", "self", 29, index, 8)
    assert p.shape == (len(q.labels), len(k.labels))
    assert abs(float(p.sum(-1).mean()) - 1.0) < 1e-2


def test_real_whisper_run_shape_and_alignment(real_client, real_store):
    run = real_store.run("whisper")
    assert run.streams == ["encoder", "decoder", "cross"] and run.kind == "audio"
    index = min(real_store.pattern_inputs("whisper"))
    item = run.item(index)
    enc = real_store.pattern("whisper", "encoder", 0, index, 0)
    assert enc.shape == (item["n_frames"], item["n_frames"]) and item["n_frames"] < 1500
    cross = real_store.pattern("whisper", "cross", 3, index, 0)
    assert cross.shape == (len(run.tokens(index, "decoder")), item["n_frames"])
    assert real_store.mel("whisper", index).shape[0] == 80
    page = render(real_client, "/flow", f"?run=whisper&input={index}")
    words = [w["word"].strip(".,!?").lower() for w in find(page, "flow-words")["props"]["data"]]
    said = item.get("text", "").lower()
    assert words and sum(w in said for w in words) >= len(words) // 2
    r = real_client.get(f"/media/whisper/audio/{index}.wav")
    assert r.status_code == 200 and len(r.data) > 16000


def test_real_runs_in_the_browser(browser, real_live_server):
    from _browser import click_cell, errors_on_page, open_page, shot, text_of, wait

    base = real_live_server
    open_page(browser, base + "/grid?run=smollm2&metric=sinks.alpha1", "#grid-heatmap")
    shot(browser, "real-smollm2-grid")
    click_cell(browser, "#grid-heatmap", 8, 18)
    wait(browser, lambda d: "self · layer 18 · head 8" in text_of(d, "#grid-selected-title"),
         20, "the clicked head")
    wait(browser, lambda d: d.execute_script(
        "const g = document.querySelector('#grid-preview .js-plotly-plot');"
        "return !!(g && g.data && g.data.length);"), 20, "the pattern preview")
    shot(browser, "real-smollm2-grid-clicked")
    for name, path, graph in [
            ("real-smollm2-detail", "/detail?run=smollm2&layer=18&head=8", "#detail-graph"),
            ("real-whisper-grid", "/grid?run=whisper", "#grid-heatmap"),
            ("real-whisper-detail-cross", "/detail?run=whisper&stream=cross&layer=2&head=4",
             "#detail-graph"),
            ("real-whisper-detail-encoder", "/detail?run=whisper&stream=encoder&layer=1",
             "#detail-graph"),
            ("real-whisper-flow", "/flow?run=whisper", "#flow-align-graph"),
            ("real-smollm2-flow", "/flow?run=smollm2", "#flow-token-graph"),
            ("real-smollm2-export", "/export?run=smollm2", None)]:
        open_page(browser, base + path, *([graph] if graph else []))
        assert errors_on_page(browser) == [], name
        shot(browser, name)
