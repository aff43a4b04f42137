"""QK attribution: why does head h attend from query i to key j?

The pre-softmax score of head h is s_ij = scaling * q_i . k_j. The residual its attention
reads is a sum of upstream components (``decompose``: embeddings, each earlier head, each
MLP, biases), x = sum_a c_a. With the attention-input norm linearised at the clean run
(``NormLin``: 1/sigma frozen) and rotary applied at the true positions i and j (a linear
map per position), the query and the key are sums over the same components,

    q_i = sum_a q_a(i),  q_a(i) = R_i (linear(c_a(i)) W_Q[h])        (+ the ``bias/in`` row:
    k_j = sum_b k_b(j),  k_b(j) = R_j (linear(c_b(j)) W_K[kv(h)])       beta W + b, rotated)

so s_ij = sum_{a, b} scaling * q_a(i) . k_b(j): a [query component, key component] matrix
that sums to the score exactly at the clean input (float64 round-off). METHODS.md; Anthropic's
"Tracing Attention Computation Through Feature Interactions" (2025) motivates it.
Marginals: ``query_side`` [component, i, j] = scaling * q_a(i) . k_j (component a's share
through the query, the key whole) and ``key_side`` = scaling * q_i . k_b(j). ``summary``
averages them over query positions for one key (e.g. the sink at 0, or a needle): which
upstream heads drive this head's attention there.

Post-norm BERT reads the residual itself; its in-layer norms are linearised by
``decompose``. Whisper's cross-attention: the query side is the decoder's components (the
layers below and this layer's self-attention, ``encoder_attn_layer_norm`` linearised); the
keys are computed from the encoder output, so the key side is the encoder's components
(``encoder/embed``, every encoder head, ``encoder/mlp/L``, ``encoder/bias/L``) through the
encoder's final norm linearised at the clean run, plus ``bias/in`` (its beta W_K + b_K).
Summing the key side's rows other than ``bias/in`` gives the encoder output's share as one
component.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .._types import Head
from ..errors import UserError
from ._capture import NormLin, record
from ._parts import attn_norm, check, head_site, qkv, reproduces, rotary, rotate
from .decompose import Component, components


@dataclass
class QKResult:
    """QK attribution of one head on one input.

    Attributes:
        head: the head; components: ``Component`` rows of the query side (the last is
            ``bias/in``); key_components: the key side's when they differ (cross-attention:
            the encoder's), else None (``k_components`` gives either).
        q_parts: float64 [component, query_pos, d_head]; k_parts: [key component, key_pos,
            d_head] (rotary applied); scaling: the factor on q.k.
        actual: float64 [query_pos, key_pos] scaling * q . k from the model's own q and k.
        tokens: token strings of the input (or None); causal: queries see only keys <= them.
    """

    head: Head
    components: list
    q_parts: torch.Tensor
    k_parts: torch.Tensor
    scaling: float
    actual: torch.Tensor
    tokens: list | None = None
    key_components: list | None = None
    causal: bool = True

    @property
    def k_components(self) -> list:
        """Key-side component rows (the query side's unless the keys come from another stack)."""
        return self.components if self.key_components is None else self.key_components

    def matrix(self, i: int, j: int) -> torch.Tensor:
        """[query component, key component] contributions to s_ij (sums to s_ij)."""
        return self.scaling * self.q_parts[:, i] @ self.k_parts[:, j].T

    def scores(self) -> torch.Tensor:
        """[query_pos, key_pos] the sum of all contributions (equals ``actual`` up to round-off)."""
        return self.scaling * self.q_parts.sum(0) @ self.k_parts.sum(0).T

    def query_side(self) -> torch.Tensor:
        """[component, query_pos, key_pos]: scaling * q_a(i) . k_j."""
        return self.scaling * torch.einsum("aid,jd->aij", self.q_parts, self.k_parts.sum(0))

    def key_side(self) -> torch.Tensor:
        """[component, query_pos, key_pos]: scaling * q_i . k_b(j)."""
        return self.scaling * torch.einsum("id,bjd->bij", self.q_parts.sum(0), self.k_parts)

    def table(self, i: int, j: int, top: int | None = None) -> pd.DataFrame:
        """Tidy contributions to s_ij: q_component, k_component, contribution (largest |.|
        first; ``top`` rows)."""
        m = self.matrix(i, j)
        order = torch.argsort(m.abs().flatten(), descending=True)[:top]
        ck = len(self.k_components)
        return pd.DataFrame({"query_pos": i, "key_pos": j,
                             "q_component": [self.components[int(k) // ck].name for k in order],
                             "k_component": [self.k_components[int(k) % ck].name for k in order],
                             "contribution": m.flatten()[order].numpy()})

    def summary(self, key_pos: int, queries=None) -> pd.DataFrame:
        """Per component: its mean share of s_{i, key_pos} over query positions ``queries``
        (default: every query that may see the key) through the query and through the key."""
        t = self.actual.shape[0]
        qs = torch.as_tensor(queries) if queries is not None else torch.arange(key_pos if self.causal else 0, t)
        qside = self.query_side()[:, qs, key_pos].mean(1).numpy()
        kside = self.key_side()[:, qs, key_pos].mean(1).numpy()
        if self.key_components is None:
            out = pd.DataFrame({"component": [c.name for c in self.components],
                                "kind": [c.kind for c in self.components], "via_query": qside, "via_key": kside})
        else:                                           # two component lists: each side's rows, NaN on the other
            cs = self.components + self.key_components
            nq = len(self.components)
            out = pd.DataFrame({"component": [c.name for c in cs], "kind": [c.kind for c in cs],
                                "side": ["query"] * nq + ["key"] * (len(cs) - nq),
                                "via_query": np.r_[qside, np.full(len(cs) - nq, np.nan)],
                                "via_key": np.r_[np.full(nq, np.nan), kside]})
        size = out[["via_query", "via_key"]].abs().max(axis=1)
        return out.loc[size.sort_values(ascending=False, kind="stable").index].reset_index(drop=True)


def qk_attribution(model, batch, head: Head, *, input: int = 0) -> QKResult:
    """Decompose head ``head``'s pre-softmax scores on input ``input`` of ``batch`` (module
    docstring). One recorded forward of that input (two for a cross-attention head: the
    encoder stack is recorded too).

    Raises:
        UserError: an unknown head or input, a family not covered, a model whose q or k the
            recomputation does not reproduce.
    """
    check(model)
    site = head_site(model, head)
    if not 0 <= input < len(batch):
        raise UserError(f"input {input} is out of range: the batch has {len(batch)} inputs")
    one = batch.select([input])
    stack = model.stack_of(head.stream, head.layer)[0]
    rec = record(model, one, stack)
    names, comps = components(rec, site, None)                            # [C, 1, T, d]
    norm = attn_norm(model, site)
    beta = None
    if norm is not None:
        lin = NormLin(norm, rec.norm_in[("attn", site.key)])
        comps, beta = lin.linear(comps), lin.beta
    w = qkv(model, site)
    kvh = head.head // (site.n_heads // site.n_kv_heads)
    q_parts = _project(comps[:, 0], beta, w["W_Q"][head.head], w["b_Q"][head.head])
    k_names, k_parts = names, None
    q, k, _, _, _, scaling = rec.qkv[site.key]
    if head.stream == "cross":                                            # keys from the encoder stack
        k_names, k_comps, k_beta = _encoder_side(model, one, stack)
        k_parts = _project(k_comps, k_beta, w["W_K"][kvh], w["b_K"][kvh])
    else:
        k_parts = _project(comps[:, 0], beta, w["W_K"][kvh], w["b_K"][kvh])
        rope = rotary(model, rec.attn_in[site.key][1])
        if rope is not None:
            q_parts, k_parts = (rotate(x, rope[0][0], rope[1][0]) for x in (q_parts, k_parts))   # cos/sin [T, dh]
    reproduces(q_parts.sum(0), q[0, head.head], f"{head.name}'s query", model)
    reproduces(k_parts.sum(0), k[0, kvh], f"{head.name}'s key", model)
    actual = scaling * q[0, head.head].double() @ k[0, kvh].double().T
    bias = Component("bias", stream="in")
    names, k_names = names + [bias], (None if k_names is names else k_names + [bias])
    tokens = (one.items[0].get("tokens") or {}).get(head.stream) if one.items else None
    causal = model.kind == "causal" or head.stream == "decoder"
    return QKResult(head, names, q_parts, k_parts, scaling, actual, tokens, k_names, causal)


def _project(comps: torch.Tensor, beta, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Components [C, T, d] (norm already linearised) -> [C + 1, T, d_head] through one head's
    projection w [d, d_head]; the last row is the bias b (+ the norm's beta @ w)."""
    p = comps @ w
    bias = b.expand(p.shape[1], -1)
    if beta is not None:
        bias = bias + beta @ w
    return torch.cat([p, bias[None]])


def _encoder_side(model, one, stack):
    """(names, components [C, S, d] of the encoder output with its final norm linearised,
    the norm's beta or None): what a cross-attention's keys are computed from."""
    others = [st for st in model.stacks if st is not stack]
    if len(others) != 1 or others[0].final_norm is None:
        raise UserError(f"{model.name}: cannot tell which stack's output the cross-attention keys read")
    rec = record(model, one, others[0])
    names, comps = components(rec, None, None)                             # residual entering the final norm
    lin = NormLin(others[0].final_norm, rec.norm_in["final"])
    names = [c if c.kind == "head" else replace(c, stream=others[0].streams[0]) for c in names]
    return names, lin.linear(comps)[:, 0], lin.beta
