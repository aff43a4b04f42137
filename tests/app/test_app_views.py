"""Issue 14 part 4 without a browser: figure builders and page bodies of the new views, checked
against numpy / pandas computations written here, and the Patching page and Head detail on
the CLI-written tiny GPT-2 patch run of ``tests/real_runs.py``."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _dash_client import callback, classes, find, render, texts
from real_runs import real_runs

from workbench.app._color import colour, value_range
from workbench.app._detail_panels import value_weighted
from workbench.app._top_heads import ranked
from workbench.app.alignment import Word
from workbench.app.fig_flow import word_lanes
from workbench.app.fig_thumbs import clicked_thumb, layer_thumbnails
from workbench.app.fig_tokens import token_view_figure


def test_log_colour_and_range_without_the_first_token():
    p = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.7, 0.2, 0.1]])
    assert value_range(p) == 1.0 and value_range(p, skip_first=True) == pytest.approx(0.2)
    z, axis = colour(p, 1.0, log=True)
    assert np.allclose(z, np.log10(np.maximum(p, 1e-4)))
    assert axis["cmin"] == -4 and axis["cmax"] == 0 and axis["colorbar"]["ticktext"][-1] == "1"


def test_value_weighted_rows():
    p = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    w = value_weighted(p, np.array([1.0, 3.0], dtype=np.float32))
    assert np.allclose(w, [[1.0, 0.0], [0.25, 0.75]])        # 0.5*1 : 0.5*3, renormalised


def test_top_heads_ranking():
    heads = pd.DataFrame({"stream": "self", "layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                          "entropy.mean_nats": [2.0, 0.5, np.nan, 1.0], "patch.effect": [0.1, -0.9, 0.3, np.nan]})
    assert ranked(heads, "entropy.mean_nats")[["layer", "head"]].values.tolist() == [[0, 1], [1, 1], [0, 0]]
    assert ranked(heads, "patch.effect")[["layer", "head"]].values.tolist() == [[0, 1], [1, 0], [0, 0]]
    # DLA is signed even where a run's values all have one sign: by |value|, not highest value first
    dla = heads.assign(**{"dla.value": [-0.1, -0.9, -0.3, np.nan]})
    assert ranked(dla, "dla.value")[["layer", "head"]].values.tolist() == [[0, 1], [1, 0], [0, 0]]


def test_thumbnails_and_token_view_figures():
    rng = np.random.default_rng(0)
    pats = rng.dirichlet(np.ones(5), size=(3, 5)).astype(np.float32)        # [head, query, key]
    fig = layer_thumbnails(pats, selected=1)
    assert len(fig.data) == 3 and clicked_thumb({"points": [{"customdata": 2}]}) == 2
    assert clicked_thumb({"points": []}) is None
    tv = token_view_figure(pats[0], list("abcde"), selected=1)
    assert np.allclose(tv.data[0].customdata, [pats[0][1], pats[0][:, 1]], atol=1e-4)
    assert tv.layout.meta["selected"] == 1 and len(tv.layout.meta["pattern"]) == 5
    with pytest.raises(ValueError, match="same 4 tokens"):
        token_view_figure(pats[0], list("abcd"))


def test_word_lanes_keep_labels_apart():
    words = [Word(f"w{i:02d}xx", 0.4 * i, 0.4 * i + 0.35) for i in range(70)]
    lanes = word_lanes(words, 30.0)
    assert len(set(lanes)) > 1
    px = 1100 / 30.0
    for lane in set(lanes):                    # estimated label extents on one lane never meet
        spans = [((w.start_s + w.end_s) / 2 * px - 2.5 * 7.5, (w.start_s + w.end_s) / 2 * px + 2.5 * 7.5)
                 for w, lw in zip(words, lanes) if lw == lane]
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))


def test_metric_tooltips_and_not_applicable(client):
    page = render(client, "/detail", "?run=smol&layer=2&head=1")
    table = find(page, "detail-metrics-table")
    heads = [r["props"]["children"][0]["props"] for r in table["props"]["children"][0]["props"]["children"]]
    tips = {h["children"]: h.get("title", "") for h in heads}
    assert "nats" in tips["entropy: mean nats"] and "Zhai et al. 2023" in tips["entropy: mean nats"]
    assert all(tips.values())


def test_sink_heads_get_a_colour_hint(client, runs_dir):
    from safetensors.numpy import load_file

    pats = load_file(str(runs_dir / "smol" / "patterns.safetensors"))["pattern/self/0/0"].astype(float)
    first = pats[:, :, 0].mean(1)                     # mean attention on the first key, per head
    sink, other = int(np.argmax(first)), int(np.argmin(first))
    assert first[sink] > 0.5 > first[other]
    hint = "of its attention on the first token"
    assert hint in texts(find(render(client, "/detail", f"?run=smol&layer=0&head={sink}&input=0"), "detail-message"))
    assert hint not in texts(find(render(client, "/detail", f"?run=smol&layer=0&head={other}&input=0"),
                                  "detail-message"))


def test_large_sites_skip_the_thumbnails(client, monkeypatch):
    from workbench.app import _detail_panels

    page = render(client, "/detail", "?run=whisper-long&stream=encoder&layer=0&head=0")
    assert len(find(page, "detail-thumbs")["props"]["figure"]["data"]) == 6         # 6 x 1500 x 1500: drawn
    monkeypatch.setattr(_detail_panels, "MAX_THUMB_VALUES", 1_000_000)
    page = render(client, "/detail", "?run=whisper-long&stream=encoder&layer=0&head=0")
    assert find(page, "detail-thumbs-card")["props"]["style"] == {"display": "none"}
    assert "6 x 1500 x 1500" in texts(find(page, "detail-message"))
    assert find(page, "detail-graph")["props"]["figure"]["data"]                    # the head itself still is


def test_metrics_that_do_not_apply_read_n_a():
    from workbench.app.components import metrics_table

    row = {"stream": "cross", "layer": 0, "head": 1, "retrieval.score": float("nan"), "taxonomy.class": None,
           "x.flag": pd.NA, "entropy.mean_nats": 1.23456}
    cells = [r.children[1].children for r in metrics_table(row, "t").children[0].children]
    assert cells == ["n/a", "n/a", "n/a", "1.235"]


@pytest.fixture(scope="module")
def patch_client(tmp_path_factory):
    from workbench.app import create_app

    runs = real_runs(tmp_path_factory)
    return create_app(runs["patch"].parent).server.test_client(), runs["patch"]


def test_patching_page_names_the_task(patch_client):
    client, folder = patch_client
    meta = json.loads((folder / "meta.json").read_text())
    page = render(client, "/patching", "?run=patch")
    assert "msg msg-error" not in classes(page)
    card = texts(find(page, "patching-task"))
    patch = meta["analyses"]["patch"]
    assert f"{patch['clean_metric_mean']:.4g}" in card and f"{patch['corrupt_metric_mean']:.4g}" in card
    assert "pairs" in card and find(page, "patching-open-corrupt-1") is not None
    assert find(page, "patching-top-0") is not None


def test_detail_on_a_patch_runs_corrupt_prompts(patch_client):
    client, _ = patch_client
    page = render(client, "/detail", "?run=patch&layer=1&head=2&prompt=corrupt")
    assert "msg msg-error" not in classes(page), texts(page)[:400]
    assert find(page, "detail-prompt")["props"]["value"] == "corrupt"
    shown = {"run": "patch"}
    _, out = callback(client, "detail-graph.figure", ["self", 1, 2, 1, "log", ["skip-first"], "corrupt"],
                      ["patch", shown])
    assert "log scale" in out["detail-graph.figure"]["layout"]["title"]["text"]
    assert out["shell-view.data"]["prompt"] == "corrupt"
