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
``decompose``. Whisper's cross-attention keys come from the encoder and are refused here.
"""
from __future__ import annotations

from dataclasses import dataclass

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
        head: the head; components: ``Component`` rows (the last is ``bias/in``).
        q_parts: float64 [component, query_pos, d_head]; k_parts: [component, key_pos, d_head]
            (rotary applied); scaling: the factor on q.k.
        actual: float64 [query_pos, key_pos] scaling * q . k from the model's own q and k.
        tokens: token strings of the input (or None).
    """

    head: Head
    components: list
    q_parts: torch.Tensor
    k_parts: torch.Tensor
    scaling: float
    actual: torch.Tensor
    tokens: list | None = None

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
        c = len(self.components)
        return pd.DataFrame({"query_pos": i, "key_pos": j,
                             "q_component": [self.components[int(k) // c].name for k in order],
                             "k_component": [self.components[int(k) % c].name for k in order],
                             "contribution": m.flatten()[order].numpy()})

    def summary(self, key_pos: int, queries=None) -> pd.DataFrame:
        """Per component: its mean share of s_{i, key_pos} over query positions ``queries``
        (default: every query that may see the key) through the query and through the key."""
        qs = torch.arange(key_pos, self.actual.shape[0]) if queries is None else torch.as_tensor(queries)
        qside = self.query_side()[:, qs, key_pos].mean(1)
        kside = self.key_side()[:, qs, key_pos].mean(1)
        return pd.DataFrame({"component": [c.name for c in self.components], "kind": [c.kind for c in self.components],
                             "via_query": qside.numpy(), "via_key": kside.numpy()}) \
            .sort_values("via_query", key=abs, ascending=False).reset_index(drop=True)


def qk_attribution(model, batch, head: Head, *, input: int = 0) -> QKResult:
    """Decompose head ``head``'s pre-softmax scores on input ``input`` of ``batch`` (module
    docstring). One recorded forward of that input.

    Raises:
        UserError: a cross-attention head, an unknown head or input, a family not covered.
    """
    check(model)
    site = head_site(model, head)
    if head.stream == "cross":
        raise UserError("QK attribution of a cross-attention head needs the encoder's components on the key side; "
                        "give a self-attention head")
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
    comps = comps[:, 0]                                                    # [C, T, d]
    w = qkv(model, site)
    kvh = head.head // (site.n_heads // site.n_kv_heads)
    parts = {}
    for kind, h in (("Q", head.head), ("K", kvh)):
        p = comps @ w[f"W_{kind}"][h]                                      # [C, T, dh]
        bias = w[f"b_{kind}"][h].expand(p.shape[1], -1)
        if beta is not None:
            bias = bias + beta @ w[f"W_{kind}"][h]
        parts[kind] = torch.cat([p, bias[None]])
    rope = rotary(model, rec.attn_in[site.key][1])
    if rope is not None:
        parts = {k: rotate(v, rope[0][0], rope[1][0]) for k, v in parts.items()}      # cos/sin [T, dh]
    q, k, _, _, _, scaling = rec.qkv[site.key]
    reproduces(parts["Q"].sum(0), q[0, head.head], f"{head.name}'s query", model)
    reproduces(parts["K"].sum(0), k[0, kvh], f"{head.name}'s key", model)
    actual = scaling * q[0, head.head].double() @ k[0, kvh].double().T
    names = names + [Component("bias", stream="in")]
    tokens = (one.items[0].get("tokens") or {}).get(head.stream) if one.items else None
    return QKResult(head, names, parts["Q"], parts["K"], scaling, actual, tokens)
