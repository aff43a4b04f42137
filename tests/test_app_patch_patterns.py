"""A ``workbench patch`` run keeps the attention patterns of its first clean and corrupt prompts
(``workbench/_patch_patterns.py``) so the dashboard's Head detail page works on it: checked
on the tiny GPT-2 patch run of ``real_runs`` (written by the CLI) against HF eager attention
(``output_attentions=True``) on the same token ids."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from real_runs import real_runs
from safetensors.numpy import load_file
from tiny import tiny_hf

import workbench as wb
from workbench import _patch_patterns
from workbench._budget import pattern_bytes
from workbench.tasks._task import Task


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return real_runs(tmp_path_factory)


def test_patch_run_keeps_clean_and_corrupt_patterns(runs):
    folder = runs["patch"]
    meta = json.loads((folder / "meta.json").read_text())
    corrupt = meta["inputs"]["corrupt_items"]
    assert [c["index"] for c in corrupt] == [0, 1]
    clean_t = load_file(str(folder / "patterns.safetensors"))
    corrupt_t = load_file(str(folder / "patterns_corrupt.safetensors"))
    hf = tiny_hf("gpt2", attn="eager")
    with torch.no_grad():
        for ids, saved in (([1, 2, 3, 9], clean_t), ([1, 5, 3, 9], corrupt_t)):   # the pairs in real_runs
            want = hf(torch.tensor([ids]), output_attentions=True).attentions
            for layer in range(2):
                got = saved[f"pattern/self/{layer}/0"]
                assert got.shape == (4, 4, 4)
                np.testing.assert_allclose(got.astype(np.float32), want[layer][0].numpy(), atol=2e-3)
                assert saved[f"value_norm/self/{layer}/0"].shape == (4, 4)
    assert "pattern/self/0/1" in corrupt_t and "pattern/self/0/2" not in corrupt_t    # 2 pairs kept


def test_patch_patterns_respect_a_size_limit(monkeypatch):
    model = wb.wrap(tiny_hf("llama"))
    batch = model.prepare(token_ids=[[5, 6, 7, 8, 9], [5, 6, 10, 8]])
    task = Task("t", batch, batch, metric=None)
    meta: dict = {"inputs": {}}
    assert set(_patch_patterns.prompt_patterns(model, task, meta)) == {"patterns", "patterns_corrupt"}
    assert "patterns_note" not in meta["inputs"]
    monkeypatch.setattr(_patch_patterns, "MAX_BYTES", pattern_bytes(model, batch, 1))   # room for one pair
    out = _patch_patterns.prompt_patterns(model, task, meta)
    assert {int(k.rsplit("/", 1)[1]) for k in out["patterns"]} == {0} and len(meta["inputs"]["corrupt_items"]) == 1
    assert "1 pair(s)" in meta["inputs"]["patterns_note"]
    monkeypatch.setattr(_patch_patterns, "MAX_BYTES", 1)
    assert _patch_patterns.prompt_patterns(model, task, meta) == {}
