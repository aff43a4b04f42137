"""Figure builders are plain functions: tested on arrays and tables, no browser."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.app.fig_grid import clicked_head, head_grid_figure
from workbench.app.fig_patching import (correlations, effect_heatmap, prune_curve_figure,
                                        scatter_figure)
from workbench.app.fig_pattern import (column_mean, display_token, pattern_figure, pool,
                                       row_entropy)
from workbench.app.run import Axis
from workbench.app.store import RunStore


@pytest.fixture(scope="module")
def store(runs_dir):
    return RunStore(runs_dir)


def _heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def test_grid_one_panel_per_stream_with_hover_and_click_data(store):
    heads = store.run("whisper").heads
    fig = head_grid_figure(heads, "entropy.mean_nats", selected=("cross", 2, 5))
    maps = _heatmaps(fig)
    assert [m.name for m in maps] == ["encoder", "decoder", "cross"]
    for m in maps:
        assert np.asarray(m.z).shape == (4, 6) and m.customdata[0][0] == m.name
    row = heads[(heads["stream"] == "cross") & (heads["layer"] == 2) & (heads["head"] == 5)].iloc[0]
    assert np.asarray(maps[2].z)[2, 5] == pytest.approx(row["entropy.mean_nats"])
    assert f"{row['entropy.mean_nats']:.4g}" in maps[2].text[2][5]
    assert "cross L2 H5" in maps[2].text[2][5]
    (rect,) = fig.layout.shapes
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (4.5, 5.5, 1.5, 2.5)
    click = {"points": [{"x": 5, "y": 2, "customdata": "cross", "curveNumber": 2}]}
    assert clicked_head(click) == ("cross", 2, 5)
    assert clicked_head(None) is None and clicked_head({"points": []}) is None


def test_grid_30_layers_categorical_and_compare(store):
    a, b = store.run("smol").heads, store.run("smol-b").heads
    fig = head_grid_figure(a, "taxonomy.class")
    z = np.asarray(_heatmaps(fig)[0].z, dtype=float)
    assert z.shape == (30, 9) and np.nanmax(z) < len(set(a["taxonomy.class"]))
    ticks = fig.layout.coloraxis.colorbar.ticktext
    assert sorted(ticks) == sorted(set(a["taxonomy.class"]))
    diff = head_grid_figure(a, "sinks.alpha1", compare=b)
    expected = (a.set_index(["layer", "head"])["sinks.alpha1"]
                - b.set_index(["layer", "head"])["sinks.alpha1"]).unstack().to_numpy()
    np.testing.assert_allclose(np.asarray(_heatmaps(diff)[0].z, float), expected)
    assert diff.layout.coloraxis.cmid == 0
    same = head_grid_figure(a, "taxonomy.class", compare=a)
    assert np.nansum(np.asarray(_heatmaps(same)[0].z, float)) == 0
    bools = head_grid_figure(a, "sinks.is_sink")
    assert set(np.unique(np.asarray(_heatmaps(bools)[0].z, float))) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="not a column"):
        head_grid_figure(a, "nope")
    with pytest.raises(ValueError, match="compared run"):
        head_grid_figure(a, "patch.effect", compare=b)


def test_pool_entropy_and_column_mean():
    a = np.arange(10, dtype=np.float32)[None, :].repeat(3, 0)
    pooled, f = pool(a, 4, axis=1)
    assert f == 3 and pooled.tolist()[0] == [2, 5, 8, 9]
    mean, _ = pool(a, 4, axis=1, how="mean")
    assert mean.tolist()[0] == [1, 4, 7, 9]
    same, f1 = pool(a, 10, axis=1)
    assert f1 == 1 and same is a
    p = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(row_entropy(p), [0.0, np.log(4)])
    np.testing.assert_allclose(column_mean(p), [0.625, 0.125, 0.125, 0.125])


def test_display_token():
    assert display_token(" cat") == "␣cat" and display_token("Ġcat") == "␣cat"
    assert display_token("\n") == "⏎" and display_token("") == "∅"


def test_pattern_figure_text_tokens_and_summaries(store):
    run = store.run("smol")
    q, k = run.axes("self", 1)
    p = store.pattern("smol", "self", 3, 1, 4)
    fig = pattern_figure(p, q, k, title="t")
    heat = _heatmaps(fig)[0]
    np.testing.assert_allclose(np.asarray(heat.z), p)
    assert list(fig.layout.yaxis2.ticktext)[:2] == ["When", "␣Mary"]
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    np.testing.assert_allclose(bars["row entropy (nats)"].x, row_entropy(p), rtol=1e-6)
    np.testing.assert_allclose(bars["mean attention received"].y, column_mean(p), rtol=1e-6)
    assert "␣Mary" in heat.text[1][0]
    with pytest.raises(ValueError, match="tokens but the pattern"):
        pattern_figure(p[:3, :3], q, k)
    with pytest.raises(ValueError, match="query, key"):
        pattern_figure(p[0], q, k)


def test_pattern_figure_whisper_1500_frames_is_pooled_and_small(store):
    run = store.run("whisper-long")
    q, k = run.axes("encoder", 0)
    p = store.pattern("whisper-long", "encoder", 0, 0, 1)
    fig = pattern_figure(p, q, k, mel=store.mel("whisper-long", 0), title="enc")
    payload = fig.to_json()
    heat = _heatmaps(fig)[0]
    assert np.asarray(heat.z).shape == (300, 300)  # 1500 frames max-pooled by 5
    assert heat.x[-1] == pytest.approx(1495 * 0.02) and "max-pooled ×5" in fig.layout.title.text
    assert np.asarray(heat.z).max() == pytest.approx(p.max(), rel=1e-6)
    mel = [h for h in _heatmaps(fig) if h.name == "log-mel"][0]
    assert np.asarray(mel.z).shape[0] == 80 and mel.x[-1] < 30.0
    assert len(payload) < 3_000_000, len(payload)         # load time: benchmarks/dashboard_load.py


def test_pattern_figure_cross_has_tokens_and_seconds(store):
    run = store.run("whisper")
    q, k = run.axes("cross", 0)
    fig = pattern_figure(store.pattern("whisper", "cross", 3, 0, 0), q, k,
                         mel=store.mel("whisper", 0))
    heat = _heatmaps(fig)[0]
    assert np.asarray(heat.z).shape == (13, 150) and heat.x[1] == pytest.approx(0.02)
    assert "<|startoftranscript|>" in fig.layout.yaxis2.ticktext[0]
    assert fig.layout.xaxis4.title.text == "time (s)"


def test_patching_figures(store):
    heads = store.run("smol").heads
    fig = scatter_figure(heads, "patch.effect", "patch.atp")
    r, rho = correlations(heads["patch.effect"].to_numpy(), heads["patch.atp"].to_numpy())
    assert r > 0.8 and rho > 0.5 and f"{r:.3f}" in fig.layout.title.text
    assert sum(len(t.x) for t in fig.data if t.mode == "markers") == 270
    assert effect_heatmap(heads, "patch.effect").layout.coloraxis.cmid == 0
    assert np.isnan(correlations(np.ones(5), np.arange(5.0))[0])
    curve = store.table("smol", "prune_curve")
    pf = prune_curve_figure(curve)
    lines = [t for t in pf.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["michel", "random"] and len(lines[0].x) == 10
    expected = curve[(curve.method == "michel") & (curve.fraction_removed == 0)]["metric"].mean()
    assert lines[0].y[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="lacks columns"):
        prune_curve_figure(curve.drop(columns=["seed"]))
    with pytest.raises(ValueError, match="no column"):
        scatter_figure(heads, "patch.effect", "nope")


def test_grid_handles_missing_heads_and_nan():
    heads = pd.DataFrame({"stream": ["self"] * 3, "layer": [0, 0, 1], "head": [0, 1, 1],
                          "m": [1.0, np.nan, 3.0]})
    z = np.asarray(head_grid_figure(heads, "m").data[0].z, float)
    assert z.shape == (2, 2) and np.isnan(z[1, 0]) and np.isnan(z[0, 1]) and z[1, 1] == 3.0


def test_axis_titles():
    assert Axis("seconds", step_s=0.02).title == "time (s)" and Axis("tokens").title == "token"


def test_pattern_preview_is_compact(store):
    from workbench.app.fig_pattern import pattern_preview

    run = store.run("whisper-long")
    q, k = run.axes("encoder", 0)
    fig = pattern_preview(store.pattern("whisper-long", "encoder", 0, 0, 0), q, k)
    assert len(fig.data) == 1 and np.asarray(fig.data[0].z).shape == (150, 150)
    q, k = store.run("smol").axes("self", 0)
    fig = pattern_preview(store.pattern("smol", "self", 0, 0, 0), q, k)
    assert list(fig.layout.xaxis.ticktext)[:2] == ["<|im_start|>", "The"]
