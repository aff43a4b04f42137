"""Composition scores against full d_model x d_model matrices built by hand from HF weights."""
from __future__ import annotations

import math

import pytest
import torch

from tiny import tiny_hf
from workbench._types import Head
from workbench.circuits.composition import composition, random_baseline
from workbench.model import wrap

DH = 8


def _fro(x):
    return float(torch.linalg.matrix_norm(x))


def _scores_by_hand(ov1, qk2, ov2):
    return [_fro(ov1 @ qk2) / _fro(ov1) / _fro(qk2), _fro(ov1 @ qk2.T) / _fro(ov1) / _fro(qk2),
            _fro(ov1 @ ov2) / _fro(ov1) / _fro(ov2)]


def _llama_mats(layer, h, fold):
    """W_OV = diag(g) W_V W_O and W_QK = diag(g) W_Q W_K^T diag(g) of one head (GQA: KV head h // 2)."""
    a = layer.self_attn
    g = torch.diag(layer.input_layernorm.weight.double()) if fold else torch.eye(32, dtype=torch.float64)
    kv = h // 2
    w_q = g @ a.q_proj.weight[h * DH:(h + 1) * DH].double().T
    w_k = g @ a.k_proj.weight[kv * DH:(kv + 1) * DH].double().T
    w_v = g @ a.v_proj.weight[kv * DH:(kv + 1) * DH].double().T
    w_o = a.o_proj.weight[:, h * DH:(h + 1) * DH].double().T
    return w_v @ w_o, w_q @ w_k.T


@pytest.mark.parametrize("fold", [True, False])
def test_composition_matches_hand_computation_tiny_llama(fold):
    hf = tiny_hf("llama")
    with torch.no_grad():                                          # make the norm gains matter
        for layer in hf.model.layers:
            layer.input_layernorm.weight.copy_(torch.linspace(0.5, 2.0, 32))
    m = wrap(hf)
    table, tensor, heads = composition(m, fold_norm=fold)
    assert len(table) == 4 * 4 * 3                                 # one layer pair, 3 kinds
    with torch.no_grad():
        for h1, h2 in [(0, 3), (2, 1), (3, 3)]:
            ov1, _ = _llama_mats(hf.model.layers[0], h1, fold)
            ov2, qk2 = _llama_mats(hf.model.layers[1], h2, fold)
            want = _scores_by_hand(ov1, qk2, ov2)
            got = tensor[heads.index(Head("self", 0, h1)), heads.index(Head("self", 1, h2))]
            assert got.tolist() == pytest.approx(want, abs=1e-6)
            row = table[(table.sender == f"self/0/{h1}") & (table.receiver == f"self/1/{h2}")]
            assert row.set_index("kind")["score"].tolist() == pytest.approx(want, abs=1e-6)
    # no pair within a layer or backwards
    assert torch.isnan(tensor[heads.index(Head("self", 1, 0)), heads.index(Head("self", 0, 0))]).all()
    assert torch.isnan(tensor[heads.index(Head("self", 0, 0)), heads.index(Head("self", 0, 1))]).all()


def test_composition_gpt2_fused_qkv_and_whisper_cross():
    hf = tiny_hf("gpt2")
    m = wrap(hf)
    _, tensor, heads = composition(m, fold_norm=False)
    a0, a1 = hf.transformer.h[0].attn, hf.transformer.h[1].attn
    with torch.no_grad():
        w0, w1 = a0.c_attn.weight.double(), a1.c_attn.weight.double()               # Conv1D [in, q|k|v]
        h1, h2 = 1, 2
        ov1 = w0[:, 64 + h1 * DH:64 + (h1 + 1) * DH] @ a0.c_proj.weight[h1 * DH:(h1 + 1) * DH].double()
        qk2 = w1[:, h2 * DH:(h2 + 1) * DH] @ w1[:, 32 + h2 * DH:32 + (h2 + 1) * DH].T
        ov2 = w1[:, 64 + h2 * DH:64 + (h2 + 1) * DH] @ a1.c_proj.weight[h2 * DH:(h2 + 1) * DH].double()
    got = tensor[heads.index(Head("self", 0, h1)), heads.index(Head("self", 1, h2))]
    assert got.tolist() == pytest.approx(_scores_by_hand(ov1, qk2, ov2), abs=1e-6)

    w = wrap(tiny_hf("whisper"))
    table, tensor, heads = composition(w)
    cross = tensor[heads.index(Head("decoder", 0, 0)), heads.index(Head("cross", 0, 1))]
    assert not math.isnan(float(cross[0])) and torch.isnan(cross[1:]).all()       # q only: k, v read the encoder
    assert torch.isnan(tensor[heads.index(Head("encoder", 0, 0)), heads.index(Head("decoder", 1, 0))]).all()
    assert set(table.kind[table.receiver.str.startswith("cross")]) == {"q"}


def test_random_baseline_is_about_one_over_sqrt_d_model():
    """For rotation-invariant random W, E||A B||_F^2 = ||A||^2 ||B||^2 / d_model."""
    for d, dh in ((64, 8), (256, 32)):
        b = random_baseline(d, dh, n_random=32)
        for kind in "qkv":
            assert b[kind] == pytest.approx(d ** -0.5, rel=0.1)
