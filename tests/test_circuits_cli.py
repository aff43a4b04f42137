"""``workbench circuit`` (and ``patch --method dla``) end to end on a tiny GPT-2 folder."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workbench.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import scale_weights, tiny_hf

    root = tmp_path_factory.mktemp("circ")
    hf = tiny_hf("gpt2")
    scale_weights(hf, 10.0)
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

    assert _run(tiny, tiny / "pmean", "--analysis", "path", "--receivers", "self/1/1", "--ablation", "mean") == 0
    t = load_file(str(tiny / "pmean" / "path.safetensors"))["effect"]
    assert t.shape == (8, 1, 3) and not torch.isnan(t[:4]).any() and float(t[:4].abs().max()) > 0
    assert json.loads((tiny / "pmean" / "meta.json").read_text())["analyses"]["circuit.path"]["ablation"] == "mean"

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


def test_circuits_page_figures_from_the_run_folders(tiny):
    """The dashboard's figure builders read the run folders the CLI wrote (no torch in them)."""
    from workbench.app.pages.circuits import analyses, figure
    from workbench.app.store import RunStore

    for name, extra in (("dla", ["--analysis", "dla"]), ("comp", ["--analysis", "composition"]),
                        ("qk", ["--analysis", "qk", "--head", "self/1/2"]),
                        ("path", ["--analysis", "path", "--receivers", "self/1/0,self/1/3"])):
        if not (tiny / name).exists():
            assert _run(tiny, tiny / name, *extra) == 0
    store = RunStore(tiny)
    fig, why = figure(store, store.run("dla"), "dla")
    assert why is None and len(fig.data[0].y) == min(25, len(pd.read_parquet(tiny / "dla" / "dla_components.parquet")
                                                          .component.unique()))
    path = pd.read_parquet(tiny / "path" / "path.parquet")
    fig, _ = figure(store, store.run("path"), "path", "k")
    z = np.array(fig.data[0].z, dtype=float)
    want = path[path.kind == "k"].pivot_table(index="sender", columns="receiver", values="effect")
    assert z.shape == want.shape and np.allclose(np.nansum(z), want.values.sum())
    fig, _ = figure(store, store.run("comp"), "composition", "v")
    assert np.array(fig.data[0].z, dtype=float).shape == (4, 4)
    fig, _ = figure(store, store.run("qk"), "qk")
    assert {d.name for d in fig.data} == {"via query", "via key"}
    assert analyses(store.run("qk")) == ["qk"]
