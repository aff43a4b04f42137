"""Patching page: per-(head, position) effects of a real `workbench patch --per-position` run."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pos_run(tmp_path_factory):
    from tiny import tiny_hf

    from workbench.cli import main

    root = tmp_path_factory.mktemp("pos-runs")
    tiny_hf("gpt2").save_pretrained(root / "tiny-gpt2")
    pairs = root / "p.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9, 7], "corrupt": [1, 5, 3, 9, 7], "target": 4,
                                            "distractor": 6}) for _ in range(2)))
    runs = root / "runs"
    assert main(["patch", str(root / "tiny-gpt2"), "--task", str(pairs), "--out", str(runs / "pos"), "--quiet",
                 "--per-position"]) == 0
    assert main(["patch", str(root / "tiny-gpt2"), "--task", str(pairs), "--out", str(runs / "plain"),
                 "--quiet"]) == 0
    return runs


def test_position_view_shows_saved_effects_of_the_top_heads(pos_run):
    from safetensors.numpy import load_file

    from workbench.app.pages import patching
    from workbench.app.store import RunStore

    store = RunStore(pos_run)
    run = store.run("pos")
    fig, why = patching.position_view(store, run, 1, k=3)
    assert why is None
    heat = fig.data[0]
    names = list(fig.layout.yaxis.ticktext)
    assert len(names) == 3 and len(fig.layout.xaxis.ticktext) == 5          # 3 heads x 5 positions
    effect = run.heads.set_index(["stream", "layer", "head"])["patch.effect"].abs()
    shown = [effect[(n.split("/")[0], int(n.split("/")[1]), int(n.split("/")[2]))] for n in names]
    assert shown == sorted(effect, reverse=True)[:3]                       # largest |effect| first
    saved = load_file(str(pos_run / "pos" / "patch.safetensors"))
    for row, name in zip(np.asarray(heat.z), names):
        stream, layer, head = name.split("/")
        np.testing.assert_allclose(row, saved[f"effect_pos/{stream}/{layer}"][int(head), 1], rtol=0, atol=0)
    assert np.all(np.asarray(heat.z)[:, 0] == 0)            # position 0 is the same token in clean and corrupt


def test_patching_page_has_the_position_card_only_with_per_position_runs(pos_run):
    from workbench.app.metrics import heatmap_columns
    from workbench.app.pages import patching
    from workbench.app.store import RunStore

    store = RunStore(pos_run)
    body, _ = patching._body(store, store.run("pos"))
    assert "patching-pos-graph" in str(body) and "patching-pos-input" in str(body)
    body, _ = patching._body(store, store.run("plain"))
    assert "patching-pos-graph" not in str(body) and "--per-position" in str(body)
    cols = heatmap_columns(store.run("plain").heads)
    assert "patch.effect" in cols and not any(".rank" in c for c in cols)


def test_report_of_a_patch_run_names_the_method_and_skips_rank_columns(pos_run):
    from workbench.app.report import importance_report
    from workbench.app.store import RunStore

    text = importance_report(RunStore(pos_run).run("plain"))
    assert "- patching: exact, resample ablation, noising; metric logit_diff" in text
    assert "## Top 15 heads by patch: effect" in text
    assert "patch: rank" not in text and "- inputs: text / " in text and "/ ?" not in text
