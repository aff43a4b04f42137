"""Issue 9 section 5: unsigned magnitudes (AtP*, Michel importance) are never drawn on the
signed effect scale; signed quantities get a diverging scale centred on 0; the exact vs
AtP* scatter compares |exact| with AtP*.

The head table mirrors what ``workbench patch --method exact,atp-star`` and ``workbench
prune`` write (column names from ``PatchResult.table`` and ``analyses/importance.py``); the
expected values are computed here by hand (abs, signs), not by the code under test.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _dash_client import find, render

from workbench.app import create_app
from workbench.app.fig_grid import head_grid_figure
from workbench.app.fig_patching import effect_heatmap, scatter_figure
from workbench.app.metrics import column_scale


def _heads(seed: int = 0, method: str = "exact") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(4):
        for head in range(5):
            exact = float(rng.normal(0, 2))
            rows.append({"stream": "self", "layer": layer, "head": head,
                         "entropy.mean_nats": float(rng.uniform(0.1, 2)),
                         "patch.effect": exact, "patch.rank": 0, "patch.method": method,
                         "patch.effect_atp_star": abs(exact) * float(rng.uniform(0.8, 1.2)),
                         "importance.michel": float(rng.uniform(0, 1)),
                         "prune.patch_effect": float(rng.normal(0, 1))})
    heads = pd.DataFrame(rows)
    heads.loc[(heads["layer"] == 2) & (heads["head"] == 3), "patch.effect"] = -3.98
    heads.loc[(heads["layer"] == 2) & (heads["head"] == 3), "patch.effect_atp_star"] = 4.44
    return heads


META = {"analyses": {"patch": {"method": "exact", "also": [{"method": "atp*"}]}}}


def _axis(fig) -> dict:
    return fig.layout.coloraxis.to_plotly_json()


def test_columns_are_classified_from_the_run_that_wrote_them():
    heads = _heads()
    assert column_scale("patch.effect", heads, META) == "signed"
    assert column_scale("patch.effect_atp_star", heads, META) == "magnitude"
    assert column_scale("importance.michel", heads, META) == "magnitude"
    assert column_scale("importance.michel_raw", heads.assign(**{"importance.michel_raw": 1.0})) \
        == "magnitude"
    assert column_scale("prune.patch_effect", heads, META) == "signed"
    assert column_scale("entropy.mean_nats", heads, META) == "plain"
    star = {"analyses": {"patch": {"method": "atp*"}}}    # --method atp-star: patch.effect is AtP*
    assert column_scale("patch.effect", heads, star) == "magnitude"
    assert column_scale("patch.effect_norm", heads, star) == "magnitude"
    assert column_scale("patch.effect_atp", heads.assign(**{"patch.effect_atp": 0.1}), star) \
        == "signed"
    assert column_scale("patch.effect", heads.assign(**{"patch.method": "atp*"})) == "magnitude"


def test_magnitudes_get_a_sequential_scale_and_say_so():
    heads = _heads()
    for col in ("patch.effect_atp_star", "importance.michel"):
        fig = effect_heatmap(heads, col, META)
        axis = _axis(fig)
        assert "cmid" not in axis and axis["cmin"] == 0, col
        colours = [c[1] for c in axis["colorscale"]]
        assert not any("103,0,31" in c or "5,48,97" in c for c in colours), col   # not RdBu
        assert "magnitude" in fig.layout.title.text and "unsigned" in str(axis["colorbar"])
    exact = _axis(effect_heatmap(heads, "patch.effect", META))
    assert exact["cmid"] == 0 and "signed" in str(exact["colorbar"])


def test_head_23_3_case_exact_blue_beside_atp_star_magnitude():
    """The issue's case: exact -3.98 and AtP* +4.44 for one head. The exact effect is on the
    diverging scale (negative side), AtP* on the magnitude scale, never the red side of the
    effect scale."""
    heads = _heads()
    star = effect_heatmap(heads, "patch.effect_atp_star", META)
    exact = effect_heatmap(heads, "patch.effect", META)
    assert _axis(star).get("cmid") is None and _axis(exact)["cmid"] == 0
    assert np.asarray(exact.data[0].z, float)[2, 3] == pytest.approx(-3.98)
    assert np.asarray(star.data[0].z, float)[2, 3] == pytest.approx(4.44)


def test_signed_quantities_on_the_head_grid_are_diverging_around_zero():
    heads = _heads()
    for col in ("patch.effect", "prune.patch_effect"):
        axis = _axis(head_grid_figure(heads, col, meta=META))
        assert axis["cmid"] == 0 and axis["colorscale"][0][1] != axis["colorscale"][-1][1], col
    mixed = heads.assign(**{"other.log_ratio": np.linspace(-1, 2, len(heads))})
    assert _axis(head_grid_figure(mixed, "other.log_ratio"))["cmid"] == 0
    plain = _axis(head_grid_figure(heads, "entropy.mean_nats", meta=META))
    assert "cmid" not in plain
    magnitude = _axis(head_grid_figure(heads, "importance.michel", meta=META))
    assert "cmid" not in magnitude and magnitude["cmin"] == 0


def test_scatter_compares_abs_exact_with_atp_star():
    heads = _heads()
    fig = scatter_figure(heads, "patch.effect", "patch.effect_atp_star", META)
    pts = fig.data[0]
    assert np.allclose(pts.x, np.abs(heads["patch.effect"]))
    assert np.allclose(pts.y, heads["patch.effect_atp_star"])
    assert fig.layout.xaxis.title.text.startswith("|") and "magnitude" in fig.layout.yaxis.title.text
    r = np.corrcoef(np.abs(heads["patch.effect"]), heads["patch.effect_atp_star"])[0, 1]
    assert f"Pearson r = {r:.3f}" in fig.layout.title.text
    signed = scatter_figure(heads.assign(**{"patch.effect_atp": heads["patch.effect"] * 1.1}),
                            "patch.effect", "patch.effect_atp", META)
    assert np.allclose(signed.data[0].x, heads["patch.effect"])   # signed vs signed: as is


def test_patching_and_grid_pages_use_the_run_meta(tmp_path):
    from _synth_runs import make_text_run

    run = make_text_run(tmp_path, "patched", n_layers=4, extras=False)
    _heads().to_parquet(run / "heads.parquet", index=False)
    meta = json.loads((run / "meta.json").read_text())
    meta["analyses"] = META["analyses"]
    (run / "meta.json").write_text(json.dumps(meta))
    client = create_app(tmp_path).server.test_client()
    page = render(client, "/patching", "?run=patched")
    graphs = {}
    for i in range(6):
        g = find(page, {"type": "patching-effect", "index": i})
        if g is not None:
            fig = g["props"]["figure"]
            graphs[fig["layout"]["title"]["text"]] = fig["layout"]["coloraxis"]
    star = next(a for t, a in graphs.items() if "atp star" in t)
    assert "cmid" not in star and next(a for t, a in graphs.items()
                                       if t.startswith("patch: effect (")).get("cmid") == 0
    scatter = find(page, "patching-scatter")["props"]["figure"]
    assert scatter["layout"]["xaxis"]["title"]["text"] == "|patch: effect|"
    grid = render(client, "/grid", "?run=patched&metric=patch.effect")
    assert find(grid, "grid-heatmap")["props"]["figure"]["layout"]["coloraxis"]["cmid"] == 0


def test_real_patch_run_exact_beside_atp_star(tmp_path):
    """A real ``workbench patch --method exact,atp-star`` (tiny GPT-2): AtP* comes out >= 0
    and is classified as a magnitude beside the signed exact effect, from the run's own
    meta.json; the page draws them that way."""
    from tiny import tiny_hf

    from workbench.cli import main

    tiny_hf("gpt2").save_pretrained(tmp_path / "tiny-gpt2")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9, 7], "corrupt": [1, 5, 3, 9, 7],
                                           "target": 4, "distractor": 6}) for _ in range(2)))
    runs = tmp_path / "runs"
    assert main(["patch", str(tmp_path / "tiny-gpt2"), "--task", str(pairs), "--quiet",
                 "--method", "exact,atp-star", "--out", str(runs / "both")]) == 0
    meta = json.loads((runs / "both" / "meta.json").read_text())
    heads = pd.read_parquet(runs / "both" / "heads.parquet")
    assert meta["analyses"]["patch"]["method"] == "exact"
    assert (heads["patch.effect_atp_star"] >= 0).all() and (heads["patch.effect"] < 0).any()
    assert column_scale("patch.effect", heads, meta) == "signed"
    assert column_scale("patch.effect_atp_star", heads, meta) == "magnitude"
    client = create_app(runs).server.test_client()
    page = render(client, "/patching", "?run=both")
    scatter = find(page, "patching-scatter")["props"]["figure"]
    assert scatter["layout"]["xaxis"]["title"]["text"] == "|patch: effect|"


def test_per_position_magnitudes_are_sequential():
    from workbench.app.fig_patching import position_figure

    effects = np.abs(np.random.default_rng(0).normal(size=(3, 5)))
    mag = position_figure(effects, ["a", "b", "c"], list("vwxyz"), magnitude=True).data[0]
    assert mag.zmin == 0 and mag.zmid is None and "magnitude" in mag.colorbar.title.text
    signed = position_figure(effects - 0.5, ["a", "b", "c"], list("vwxyz")).data[0]
    assert signed.zmid == 0 and signed.zmin == -signed.zmax
