"""workbench.open_run / list_runs on folders the real writers wrote (run, patch, prune, circuit),
checked against reading the files directly (json, pandas, safetensors.torch.load_file)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import workbench as wb
from real_runs import real_runs
from workbench.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return real_runs(tmp_path_factory)


def test_every_kind_opens_with_its_table_and_meta(runs):
    kinds = {}
    for name, folder in runs.items():
        r = wb.open_run(folder)
        kinds[name] = r.kind
        direct = pd.read_parquet(folder / "heads.parquet").sort_values(["stream", "layer", "head"])
        pd.testing.assert_frame_equal(r.heads, direct.reset_index(drop=True))
        assert r.meta == json.loads((folder / "meta.json").read_text())
        assert r.model == r.meta["model"]["name"] and set(r.metrics) == set(direct.columns) - {"stream", "layer", "head"}
    assert kinds["run"] == "run" and kinds["patch"] == "patch" and kinds["prune"] == "prune"
    if "circuit" in runs:
        assert kinds["circuit"] == "circuit"


def test_one_head_of_a_pattern_is_a_slice_of_the_saved_tensor(runs, monkeypatch):
    full = load_file(str(runs["run"] / "patterns.safetensors"))
    r = wb.open_run(runs["run"])
    want = full["pattern/self/2/1"]
    np.testing.assert_array_equal(r.pattern("self", 2, input=1, head=3), want[3].numpy())
    np.testing.assert_array_equal(r.pattern("self", 2, input=1), want.numpy())
    pt = wb.open_run(runs["run"], framework="pt").pattern("self", 2, input=1, head=3)
    assert isinstance(pt, torch.Tensor) and torch.equal(pt, want[3])
    # lazily: reading one head never loads a whole tensor
    import safetensors

    real = safetensors.safe_open
    loads = []

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, key):
            loads.append(key)
            return self.f.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    lazy = wb.open_run(runs["run"])
    t = lazy.tensors["patterns"]["pattern/self/2/1"]
    assert t.shape == tuple(want.shape) and t.dtype == "F16"
    np.testing.assert_array_equal(lazy.pattern("self", 2, input=1, head=0), want[0].numpy())
    assert loads == []


def test_patch_tensors_and_prune_tables(runs):
    p = wb.open_run(runs["patch"])
    direct = load_file(str(runs["patch"] / "patch.safetensors"))
    assert set(p.tensors["patch"]) == set(direct)
    np.testing.assert_array_equal(p.tensors["patch"]["effect"].load(), direct["effect"].numpy())
    np.testing.assert_array_equal(p.tensors["patch"]["effect_pos/self/1"][2], direct["effect_pos/self/1"][2].numpy())
    pr = wb.open_run(runs["prune"])
    assert "prune_curve" in pr.tables
    pd.testing.assert_frame_equal(pr.table("prune_curve"), pd.read_parquet(runs["prune"] / "prune_curve.parquet"))
    assert pr.head("self", 1, 2)["importance.michel"] == pytest.approx(
        float(pr.heads.query("layer == 1 and head == 2")["importance.michel"].iloc[0]))


def test_bad_input_is_one_line(runs, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(runs["patch"], newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps({**meta, "schema_version": 2}))
    cases = [(lambda: wb.open_run(tmp_path), "is not a run folder"),
             (lambda: wb.open_run(newer), "newer than the 1 this workbench reads"),
             (lambda: wb.open_run(runs["run"], framework="jax"), "framework must be"),
             (lambda: wb.open_run(runs["run"]).head("self", 99, 0), "has no head self/99/0"),
             (lambda: wb.open_run(runs["prune"]).pattern("self", 0), "saved no patterns"),   # patch runs keep some
             (lambda: wb.open_run(runs["run"]).pattern("self", 0, input=7), "saved inputs are [0, 1]"),
             (lambda: wb.open_run(runs["run"]).table("nope"), "has no table 'nope'"),
             (lambda: wb.list_runs(tmp_path / "missing"), "is not a folder")]
    for call, needle in cases:
        with pytest.raises(UserError) as e:
            call()
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_list_runs_lists_every_folder_and_says_why_one_is_refused(runs, tmp_path):
    root = tmp_path / "all"
    root.mkdir()
    for name in ("run", "patch", "prune"):
        shutil.copytree(runs[name], root / name)
    (root / "broken").mkdir()
    (root / "broken" / "meta.json").write_text("{not json")
    (root / "not-a-run").mkdir()
    table = wb.list_runs(root)
    assert sorted(table["name"]) == ["broken", "patch", "prune", "run"]
    rows = table.set_index("name")
    assert rows.loc["patch", "kind"] == "patch" and rows.loc["run", "heads"] == 72
    assert rows.loc["run", "model"] == "minilm-l6" and rows.loc["broken", "error"].startswith(str(root / "broken"))
    assert pd.isna(rows.loc["run", "error"])


def test_open_run_is_lazy_and_torch_free():
    code = "import sys, workbench; workbench.open_run, workbench.list_runs; assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
