"""Composition scores between heads, from the weights alone (Elhage et al. 2021).

"A Mathematical Framework for Transformer Circuits": a head h1 writes W_OV^{h1} into the
residual stream; a later head h2 reads it through its query (Q-composition), its key
(K-composition) or its value (V-composition). In our row-vector convention (x @ W):

    W_OV^h = W_V[h] W_O[h]      [d_model, d_model]   (head_out = x W_OV)
    W_QK^h = W_Q[h] W_K[h]^T    [d_model, d_model]   (score = x_q W_QK x_k^T)

    Q-composition(h1, h2) = ||W_OV^{h1} W_QK^{h2}||_F   / (||W_OV^{h1}||_F ||W_QK^{h2}||_F)
    K-composition(h1, h2) = ||W_OV^{h1} W_QK^{h2 T}||_F / (||W_OV^{h1}||_F ||W_QK^{h2}||_F)
    V-composition(h1, h2) = ||W_OV^{h1} W_OV^{h2}||_F   / (||W_OV^{h1}||_F ||W_OV^{h2}||_F)

(the paper's column-vector forms ||W_QK^T W_OV||, ||W_QK W_OV||, ||W_OV W_OV|| transposed;
TransformerLens computes the same). Scores lie in [0, 1]. The paper reads them against the
score of random matrices of the same shapes: ``baseline`` is the mean score of Gaussian
matrices with the shapes of one head pair (``n_random`` draws, fixed seed), about
1/sqrt(d_model).

Norms: the gain gamma of the norm in front of h2's attention (``fold_norm``, default on)
is folded into W_Q, W_K, W_V of h2 (and of h1 for its W_OV), as TransformerLens'
``fold_ln`` does; the centring and 1/sigma are ignored, as in the paper. Pairs: h1 in a
site before h2's in the same residual stream (strictly earlier layer, or Whisper's
decoder self-attention before the cross-attention of the same layer). Whisper's
cross-attention reads keys and values from the encoder: its K and V composition with
decoder heads is NaN. GQA: a query head's K and V are its KV head's.

Cost: products are taken on thin factors (W = Q R, ||X Q R|| = ||X R||): per sender site one
float32 GEMM [heads * d_head, d_model] x [d_model, 3 * later heads * d_head]; norms and
ratios in float64. All pairs of smollm2's 270 heads: about 5e11 flops.
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from .._types import Head
from ._capture import stack_sites
from ._parts import attn_norm, qkv

KINDS = ("q", "k", "v")


def _head_weights(model, site, fold_norm: bool) -> dict:
    """Per query head float64: W_Q, W_K, W_V [head, d_model, d_head], W_O [head, d_head, d_model]."""
    w = qkv(model, site)
    rep = site.n_heads // site.n_kv_heads
    out = {"W_Q": w["W_Q"], "W_K": w["W_K"].repeat_interleave(rep, 0), "W_V": w["W_V"].repeat_interleave(rep, 0),
           "W_O": model.W_O(*site.key).detach().double()}
    norm = attn_norm(model, site) if fold_norm else None
    if norm is not None and getattr(norm, "weight", None) is not None:
        g = norm.weight.detach().double()[None, :, None]
        for k in ("W_Q", "W_K", "W_V"):
            out[k] = out[k] * g
    return out


def _r(w: torch.Tensor) -> torch.Tensor:
    """R [head, d_head, d_head] with R^T R = w^T w for each w [head, d_model, d_head] (the R of
    a thin QR, from the Cholesky factor of the Gram matrix): ||X w^T|| = ||X R^T|| for any X."""
    return torch.linalg.cholesky(w.transpose(1, 2) @ w).transpose(1, 2)


def _factors(w: dict) -> dict:
    """Thin factors of one site's heads (W = Q R, ||Q R X|| = ||R X||):

    ``ov`` = R_V W_O [h, dh, d]: ||W_OV M|| = ||ov M||; for a receiver, ``qk`` = W_Q R_K^T,
    ``qk_t`` = W_K R_Q^T and ``v`` = W_V R_O^T [h, d, dh] with ||M W_QK|| = ||M qk||,
    ||M W_QK^T|| = ||M qk_t||, ||M W_OV|| = ||M v|| (R_O: of W_O^T); and the norms
    ``n_ov`` = ||W_OV||, ``n_qk`` = ||W_QK|| [h]."""
    r_v, r_q, r_k = _r(w["W_V"]), _r(w["W_Q"]), _r(w["W_K"])
    ov = r_v @ w["W_O"]
    return {"ov": ov, "qk": w["W_Q"] @ r_k.transpose(1, 2), "qk_t": w["W_K"] @ r_q.transpose(1, 2),
            "v": w["W_V"] @ _r(w["W_O"].transpose(1, 2)).transpose(1, 2),
            "n_ov": torch.linalg.matrix_norm(ov), "n_qk": torch.linalg.matrix_norm(r_q @ r_k.transpose(1, 2))}


def _right(dst: list[dict], dtype=torch.float32) -> torch.Tensor:
    """Receiver factors side by side: [d_model, 3, H2 * d_head] (q | k | v blocks, heads in order)."""
    return torch.stack([torch.cat([f[k] for f in dst]).permute(1, 0, 2).flatten(1) for k in ("qk", "qk_t", "v")],
                       1).to(dtype)


def _scores(src: dict, right: torch.Tensor, dst: list[dict]) -> torch.Tensor:
    """[h1, H2, 3] Q/K/V composition of each head of a sender site with each head of the
    receiver sites ``dst`` (``right = _right(dst)``): one GEMM [h1 * dh, d] x [d, 3 * H2 * dh]."""
    h1, dh, d = src["ov"].shape
    a = src["ov"].reshape(h1 * dh, d).to(right.dtype)
    m = (a @ right.reshape(d, -1)).view(h1, dh, 3, -1, dh)
    num = m.pow(2).sum((1, 4)).double().sqrt().permute(0, 2, 1)                    # [h1, H2, 3]
    n_qk = torch.cat([f["n_qk"] for f in dst])
    n_ov = torch.cat([f["n_ov"] for f in dst])
    den = src["n_ov"][:, None, None] * torch.stack([n_qk, n_qk, n_ov], -1)[None]
    return num / den


def random_baseline(d_model: int, d_head: int, n_random: int = 16, seed: int = 0) -> dict:
    """Mean Q/K/V composition score of pairs of heads with Gaussian W_Q, W_K, W_V, W_O of these
    shapes (``n_random`` independent pairs)."""
    g = torch.Generator().manual_seed(seed)

    def head():
        w = {k: torch.randn(n_random, d_model, d_head, generator=g, dtype=torch.float64)
             for k in ("W_Q", "W_K", "W_V")}
        w["W_O"] = torch.randn(n_random, d_head, d_model, generator=g, dtype=torch.float64)
        return _factors(w)

    a, b = head(), head()
    s = _scores(a, _right([b], torch.float64), [b]).diagonal(0, 0, 1)                  # [3, n_random]: pair i = (a_i, b_i)
    return dict(zip(KINDS, s.mean(1).tolist()))


def composition(model, *, fold_norm: bool = True, n_random: int = 16, seed: int = 0):
    """Q-, K- and V-composition of every pair of heads (module docstring). Weights only.

    Returns:
        (table, tensor, heads): ``table`` tidy, one row per (sender, receiver, kind):
        ``sender``, ``receiver`` (head names), ``sender_layer``, ``receiver_layer``,
        ``kind`` (q | k | v), ``score``, ``baseline``, ``excess`` (score - baseline);
        ``tensor`` float64 [sender, receiver, 3] over ``heads`` (all heads, sorted), NaN
        where the pair cannot compose.

    Raises:
        UserError: a family the circuit analyses do not cover.
    """
    heads = model.heads()
    index = {h: i for i, h in enumerate(heads)}
    tensor = torch.full((len(heads), len(heads), 3), float("nan"), dtype=torch.float64)
    rows = []
    for stack in model.stacks:
        sites = stack_sites(model, stack)
        if not sites:
            continue
        fac = {s.key: _factors(_head_weights(model, s, fold_norm)) for s in sites}
        d_model, d_head = fac[sites[0].key]["v"].shape[1:]
        base = random_baseline(d_model, d_head, n_random, seed)
        facs = [fac[x.key] for x in sites]
        right = _right(facs)                                              # [d, 3, all heads * d_head]
        start = [0]
        for x in sites:
            start.append(start[-1] + x.n_heads * d_head)
        for i, s1 in enumerate(sites[:-1]):                               # every later site is a receiver
            later = sites[i + 1:]
            sc = _scores(facs[i], right[:, :, start[i + 1]:], facs[i + 1:])
            i1 = torch.tensor([index[h] for h in s1.heads()])
            col = 0
            for s2 in later:
                part = sc[:, col:col + s2.n_heads].clone()
                col += s2.n_heads
                if s2.stream == "cross":                                  # keys/values come from the encoder
                    part[..., 1:] = float("nan")
                i2 = torch.tensor([index[h] for h in s2.heads()])
                tensor[i1[:, None], i2[None, :]] = part
                rows.append((s1, s2, part, base))
    table = _table(rows)
    return table, tensor, heads


def _table(rows) -> pd.DataFrame:
    cols = {k: [] for k in ("sender", "receiver", "sender_layer", "receiver_layer", "kind", "score", "baseline")}
    for s1, s2, sc, base in rows:
        n1, n2 = sc.shape[:2]
        for kk, kind in enumerate(KINDS):
            if math.isnan(float(sc[0, 0, kk])):
                continue
            vals = sc[..., kk].reshape(-1).tolist()
            cols["sender"] += [Head(s1.stream, s1.layer, a).name for a in range(n1) for _ in range(n2)]
            cols["receiver"] += [Head(s2.stream, s2.layer, b).name for _ in range(n1) for b in range(n2)]
            cols["sender_layer"] += [s1.layer] * (n1 * n2)
            cols["receiver_layer"] += [s2.layer] * (n1 * n2)
            cols["kind"] += [kind] * (n1 * n2)
            cols["score"] += vals
            cols["baseline"] += [base[kind]] * (n1 * n2)
    df = pd.DataFrame(cols)
    df["excess"] = df["score"] - df["baseline"]
    return df
