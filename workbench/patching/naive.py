"""The reference: one full forward per patched head (and per position), through ``Model.run``.

Each forward sets z of one head with a ``SetZ`` edit inside the attention function (the
edit the tracing core applies before the output projection), on top of the base run's
edits. This is how TransformerLens' patching utilities loop, and it defines correct for
the fast path.
"""
from __future__ import annotations

import torch

from .._types import Head
from ..capture import SetZ


def naive_effects(model, batch, edits, key: tuple, heads: list[int], z_src: torch.Tensor, z_base: torch.Tensor,
                  metric, index: torch.Tensor, base_metric: torch.Tensor, *, per_position: bool = False,
                  query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Effects of patching ``heads`` of site ``key``, one forward each.

    Args and returns (float32, on the CPU) as ``fast.fast_effects``; ``z_base`` [n, pos, head, d_head] is the base
    run's z (needed to patch a single position).
    """
    stream, layer = key
    n, t = z_base.shape[:2]
    qm = torch.ones(n, t, dtype=torch.bool) if query_mask is None else query_mask[:, -t:].bool().cpu()
    out = torch.zeros(len(heads), n, t) if per_position else torch.zeros(len(heads), n)
    for hi, h in enumerate(heads):
        head = Head(stream, layer, h)
        if not per_position:
            out[hi] = _one(model, batch, edits, head, z_src[:, :, h], metric, index, base_metric)
            continue
        for q in range(t):
            value = z_base[:, :, h].clone()
            value[:, q] = z_src[:, q, h]
            out[hi, :, q] = _one(model, batch, edits, head, value, metric, index, base_metric) * qm[:, q]
    return out


def _one(model, batch, edits, head, value, metric, index, base_metric) -> torch.Tensor:
    with torch.no_grad():
        trace = model.run(batch, edits=[*edits, SetZ(head, value)])
    return (metric.evaluate(trace.output, index).cpu() - base_metric.cpu()).float()
