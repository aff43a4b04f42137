"""``method="dla"`` for head patching: the direct-path effect of a patch, linearised.

A patching sweep replaces z_h of the base run by z'_h (``patching.engine``: which base run
and which z' follow from ablation and direction). Restricted to the direct path (z_h's
change reaches the logits only through the residual stream, every later component frozen
at the base run) and with the final norm's scale frozen at the base run, the change of the
metric's logit combination is exact in closed form:

    effect(h) = sum_k w_k (z'_h - z_h)[pos_k] W_O[h] . g_k        (``dla._direction``: g_k)

No forward per head: one recorded base run plus one run for z'. For ``zero`` ablation in
the noising direction this is minus the head's DLA. Heads outside the stack the logits read
(Whisper's encoder) have no direct path: their effect is 0. The metric's logit combination
(``dla.readout``) is what is attributed, so for log-prob metrics this is the change of the
target logit, not of its log-probability.
"""
from __future__ import annotations

import time

import torch

from .._types import Head
from ..patching.engine import PatchConfig, Sweep
from ..patching.result import PatchResult
from ._capture import record
from ._parts import check
from .decompose import gather
from .dla import _direction, _unembed, readout


def dla_patch(model, clean, metric, *, corrupt=None, heads=None, ablation: str = "resample",
              direction: str = "noising", per_position: bool = False, reference=None, method: str = "dla",
              **_unused) -> PatchResult:
    """Direct-path effects of patching each head (module docstring), as a ``PatchResult``
    with ``method="dla"``. Arguments as ``patching.patch`` (its work-unit arguments
    ``shard_size``, ``update``, ``executor``, ``store`` are accepted and unused: one pass
    needs no units). Raises UserError for a metric not built from logits or a model
    without unembedding; ValueError as ``patch``."""
    t0 = time.perf_counter()
    ro = readout(metric)
    _unembed(model)
    check(model)
    sweep = Sweep(model, clean, metric, corrupt=corrupt, heads=heads, reference=reference,
                  config=PatchConfig("exact", ablation, direction, per_position))
    n = len(clean)
    base = sweep._base_batch()
    rec = record(model, base, model.stacks[-1], edits=sweep.edits)
    g, _ = _direction(model, rec, ro)                                       # [n, k, d_model]
    source = sweep._source(list(range(n)))
    row = {h: i for i, h in enumerate(sweep.heads)}
    per_input = torch.zeros(len(sweep.heads), n)
    per_pos: dict = {}
    for key in sweep.keys:
        hs = sweep.by_key[key]
        if key not in rec.z:                                                # no direct path to the logits
            if per_position:
                t = base.query_mask.get(key[0], torch.ones(n, 1)).shape[1]
                per_pos[key] = torch.zeros(len(hs), n, t)
            continue
        zb = rec.z[key]
        dz = gather(source(key, zb).to(zb.dtype) - zb, ro.pos).double()[:, :, hs]   # [n, k, h, d_head]
        w_o = model.W_O(*key).detach().double()[hs]
        contrib = torch.einsum("nkhd,hdm,nkm,nk->hnk", dz, w_o, g, ro.weight)         # [h, n, k]
        per_input[torch.tensor([row[Head(key[0], key[1], h)] for h in hs])] = contrib.sum(-1).float()
        if per_position:
            full = torch.zeros(len(hs), n, zb.shape[1], dtype=torch.float64)
            full.scatter_add_(2, ro.pos[None].expand(len(hs), -1, -1), contrib)
            per_pos[key] = full.float()
    base_metric = metric.evaluate(rec.output).float().cpu()
    return PatchResult(heads=sweep.heads, per_input=per_input, method="dla", ablation=ablation, direction=direction,
                       metric={**metric.describe(), "dla_readout": ro.name}, clean_metric=sweep.clean_metric,
                       base_metric=base_metric, corrupt_metric=sweep.corrupt_metric,
                       per_position=per_pos if per_position else None, seconds=time.perf_counter() - t0)
