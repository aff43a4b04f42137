"""Attention rollout and flow (Abnar & Zuidema 2020): exactness and real models."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.analyses import Context
from workbench.analyses import flow as flow_mod
from workbench.analyses import rollout as rollout_mod
from workbench.analyses.flow import flow
from workbench.analyses.rollout import layer_means, residual_matrices, rollout


def _random_a_hat(n_layers: int, t: int, seed: int, causal: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n_layers, t, t, generator=g, dtype=torch.float64) ** 3
    if causal:
        a = a * torch.tril(torch.ones(t, t, dtype=torch.float64))
    return residual_matrices(a)


def _brute_max_flow(a_hat: np.ndarray, n_layers: int, u: int, v: int) -> float:
    """Min cut by enumerating every node set S with source in S and sink not (max-flow min-cut)."""
    t = a_hat.shape[-1]
    nodes = [(m, i) for m in range(n_layers + 1) for i in range(t)]
    src, snk = (n_layers, u), (0, v)
    free = [n for n in nodes if n not in (src, snk)]
    best = float("inf")
    for bits in itertools.product((0, 1), repeat=len(free)):
        s = {src} | {n for n, b in zip(free, bits) if b}
        cut = sum(a_hat[m - 1, i, j] for (m, i) in s if m > 0 for j in range(t) if (m - 1, j) not in s)
        best = min(best, cut)
    return best


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flow_matches_brute_force_min_cut(seed, causal):
    n_layers, t = 2, 3
    a_hat = _random_a_hat(n_layers, t, seed, causal)
    a = a_hat.numpy()
    for solver in ("scipy", "networkx"):
        f = flow(a_hat, solver=solver)                       # [layer, T, T], rows normalised
        for l in range(1, n_layers + 1):
            for u in range(t):
                raw = np.array([_brute_max_flow(a, l, u, v) for v in range(t)])
                np.testing.assert_allclose(f[l - 1, u].numpy(), raw / raw.sum(), atol=2e-6)


def test_flow_equals_rollout_at_first_layer_and_for_identity():
    a_hat = _random_a_hat(3, 5, seed=3, causal=True)
    f, r = flow(a_hat), rollout(a_hat)
    torch.testing.assert_close(f[0], r[0], atol=1e-6, rtol=0)  # one path per token at layer 1
    assert not torch.allclose(f[2], r[2], atol=1e-3)           # they differ deeper, as the paper shows
    eye = residual_matrices(torch.eye(4).expand(3, 4, 4).clone())
    torch.testing.assert_close(flow(eye), rollout(eye), atol=1e-6, rtol=0)


def test_rollout_is_product_of_residual_matrices():
    a_hat = _random_a_hat(4, 6, seed=5, causal=False)
    r = rollout(a_hat)
    torch.testing.assert_close(r[3], a_hat[3] @ a_hat[2] @ a_hat[1] @ a_hat[0])
    torch.testing.assert_close(r.sum(-1), torch.ones(4, 6, dtype=torch.float64))


def test_flow_refuses_large_problems_without_flag():
    a_hat = _random_a_hat(30, 256, seed=0, causal=True)
    with pytest.raises(ValueError, match="allow_slow"):
        flow(a_hat, [255])
    with pytest.raises(ValueError, match="solver"):
        flow(a_hat[:1, :3, :3], solver="magic")


@pytest.fixture(scope="module")
def smol():
    return wb.load("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return wb.load("minilm-l6")


def test_rollout_and_flow_on_smollm2(smol):
    batch = smol.prepare(["The quick brown fox jumps over the lazy dog.", "Paris is the capital of"])
    res = flow_mod.ANALYSIS.run(Context(smol, batch, {}))
    tab = res.tables["flow"]
    assert set(tab["input"]) == {0, 1}
    n1 = int(batch.query_mask["self"][1].sum())
    assert len(tab[tab["input"] == 1]) == 30 * n1               # padding cropped
    per = tab.groupby(["input", "layer"])
    np.testing.assert_allclose(per["flow"].sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(per["rollout"].sum(), 1.0, atol=1e-6)
    first = tab[tab["layer"] == 0]
    np.testing.assert_allclose(first["flow"], first["rollout"], atol=1e-6)
    # The first token is the sink of SmolLM2: rollout concentrates there in the top layer.
    top = tab[(tab["layer"] == 29) & (tab["input"] == 0)]
    assert top["rollout"].idxmax() == top.index[0]
    assert list(res.table.columns) == ["stream", "layer", "head"]


def test_rollout_on_minilm_uses_cls_and_crops_padding(minilm):
    batch = minilm.prepare(["A short one.", "A somewhat longer sentence about attention heads."])
    res = rollout_mod.ANALYSIS.run(Context(minilm, batch, {}))
    imp = res.tensors["rollout"]["importance/self/0"]
    assert imp.shape == (6, int(batch.query_mask["self"][0].sum()))
    torch.testing.assert_close(imp.sum(-1), torch.ones(6))
    means, keep = layer_means(minilm, batch, "self", 0)
    assert means.shape[-1] == int(keep.sum()) < batch.query_mask["self"].shape[1]
    torch.testing.assert_close(means.sum(-1), torch.ones_like(means.sum(-1)), atol=1e-5, rtol=0)
    assert res.summary["self"]["query"] == "first"


def test_rollout_on_whisper_crops_to_audio_frames():
    from workbench.inputs import builtin_clips, load_audio

    model = wb.load("whisper-tiny.en")
    clip = builtin_clips()[1]
    prompt_ids = model.meta["prompt_ids"]
    batch = model.prepare_audio([load_audio(clip)], paths=[str(clip)], transcripts=[[400, 1110, 13]])
    res = rollout_mod.ANALYSIS.run(Context(model, batch, {}))
    n = batch.items[0]["n_frames"]
    assert res.tensors["rollout"]["importance/encoder/0"].shape == (4, n)
    assert res.tensors["rollout"]["importance/decoder/0"].shape == (4, len(prompt_ids) + 3)
    assert set(res.summary) == {"encoder", "decoder"}
    with pytest.raises(ValueError, match="allow_slow"):  # 145 frames x 4 layers x all rows: refused
        flow_mod.ANALYSIS.run(Context(model, batch, {"streams": ["encoder"]}))
