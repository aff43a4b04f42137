"""``workbench circuit`` (and ``patch --method dla``) end to end on a tiny GPT-2 folder."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workbench.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import tiny_hf

    root = tmp_path_factory.mktemp("circ")
    hf = tiny_hf("gpt2")
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
    hf.save_pretrained(root / "tiny-gpt2")
    pairs = root / "p.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9, 4 + i], "corrupt": [1, 5, 3, 9, 4 + i],
                                            "target": 4, "distractor": 6}) for i in range(2)))
    return root


def _run(tiny, out, *extra):
    return main(["circuit", str(tiny / "tiny-gpt2"), "--task", str(tiny / "p.jsonl"), "--out", str(out), "--quiet",
                 *extra])


def test_circuit_dla_and_patch_method_dla(tiny):
    out = tiny / "dla"
    assert _run(tiny, out, "--analysis", "dla") == 0
    heads = pd.read_parquet(out / "heads.parquet")
    assert len(heads) == 8 and heads["dla.value"].notna().all()
    t = load_file(str(out / "dla.safetensors"))
    assert torch.allclose(t["values"].sum(0), t["actual"], atol=1e-4)
    assert t["per_position/self/1"].shape == (4, 2, 5)
    comps = pd.read_parquet(out / "dla_components.parquet")
    assert set(comps.kind) == {"embed", "head", "mlp", "bias"} and len(comps) == len(t["values"]) * 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["analyses"]["circuit.dla"]["readout"] == "logit_diff"
    assert main(["patch", str(tiny / "tiny-gpt2"), "--task", str(tiny / "p.jsonl"), "--out", str(tiny / "pd"),
                 "--quiet", "--method", "dla,exact"]) == 0
    ph = pd.read_parquet(tiny / "pd" / "heads.parquet")
    assert set(ph["patch.method"]) == {"dla"} and ph["patch.effect_exact"].notna().all()


def test_circuit_path_qk_composition(tiny):
    assert _run(tiny, tiny / "path", "--analysis", "path", "--top-k", "2") == 0
    t = load_file(str(tiny / "path" / "path.safetensors"))
    assert t["effect"].shape == (8, 2, 3) and t["per_input"].shape == (8, 2, 3, 2)
    heads = pd.read_parquet(tiny / "path" / "heads.parquet")
    assert heads["path.receiver"].sum() == 2
    table = pd.read_parquet(tiny / "path" / "path.parquet")
    assert set(table.kind) <= {"q", "k", "v"} and table.effect.notna().all()

    assert _run(tiny, tiny / "qk", "--analysis", "qk", "--head", "self/1/2", "--input", "1", "--key", "0") == 0
    q = load_file(str(tiny / "qk" / "qk.safetensors"))
    meta = json.loads((tiny / "qk" / "meta.json").read_text())["analyses"]["circuit.qk"]
    scores = meta["scaling"] * q["q_parts"].sum(0) @ q["k_parts"].sum(0).T
    assert torch.allclose(scores, q["actual"], atol=1e-4) and len(meta["components"]) == q["q_parts"].shape[0]
    assert pd.read_parquet(tiny / "qk" / "heads.parquet")["qk.selected"].sum() == 1

    assert _run(tiny, tiny / "comp", "--analysis", "composition") == 0
    c = load_file(str(tiny / "comp" / "composition.safetensors"))["scores"]
    assert c.shape == (8, 8, 3) and torch.isnan(c[4:]).all() and not torch.isnan(c[:4, 4:]).any()
    h = pd.read_parquet(tiny / "comp" / "heads.parquet")
    assert h["composition.max_out"].notna().sum() == 4 and h["composition.max_in"].notna().sum() == 4


@pytest.mark.parametrize("extra, needle", [
    (["--analysis", "qk"], "--head"),
    (["--analysis", "qk", "--head", "self/9/0"], "no site"),
    (["--analysis", "path", "--receivers", "self/1"], "stream/layer/head"),
    (["--analysis", "path", "--top-k", "0"], "--top-k"),
])
def test_circuit_bad_input_is_one_line(tiny, capsys, extra, needle):
    assert _run(tiny, tiny / "bad", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: error:") and needle in err[0], err
    assert not (tiny / "bad").exists()
