"""Fast exact head patching: resume the clean run at the patched layer, many variants per batch.

For site (stream, layer) and heads h, variant (h, i) of input i replaces z_h by z'_h. Only
that layer's attention output changes: o_proj(concat z') = o_proj(concat z) +
(z'_h - z_h) W_O[h], a rank-d_head update. So layers below are not recomputed
(``Resumable``): the variants of all heads (and inputs, and positions) run as batches
through the remaining layers, a variant joining the batch at its own layer when several
sites are given (``Resumable.run_rows``); in causal decoder-only models positions before
the first position where any variant of a batch differs are not recomputed. Batches hold
about ``max_tokens`` variant-positions: on 2 CPU cores a smollm2 layer runs fastest per
row at ~500-1000 tokens (measured 185 GFLOPS at 36 x 13 tokens, 116 at 2304 x 13).

Two ways to apply the patch at the patched layer (``update``):

- ``"z"`` (default): the output projection runs on concat z' (z'_h substituted into its
  input). The replay is then bit-for-bit the computation of the naive loop (CPU kernels
  here are batch-invariant), so fast and naive agree to float32 round-off (tested <= 1e-5).
  Where the backend switch picks Triton (CUDA tensors, ``workbench.cuda``), the projection of
  the spliced input runs in ``workbench.cuda.head_patch``'s kernel instead, which never builds
  the [variants, pos, head * d_head] input (float32 accumulation; equal to naive within
  round-off, tested under ``TRITON_INTERPRET=1``).
- ``"rank"``: the rank-d_head update (z'_h - z_h) W_O[h] (float64) is added to the clean
  projection's output. Exact in real arithmetic; in float32 the projection's own round-off
  differs between o_proj(z) + update and o_proj(z'), and a deep model amplifies that
  ulp-level difference: measured <= 2e-7 on the tiny test models and up to ~2e-5 on the
  IOI logit difference of smollm2-135m (30 layers).

Devices: activations and patches stay on the device of the captured z (the model's);
the bookkeeping (which variant is which row, what changed) is on the CPU, and effects
come back as float32 CPU tensors. Reduced precision: the replay runs in the model's
dtype, exactly the naive loop's computation, so fast == naive holds there too (tested
in bfloat16 in ``tests/test_device_dtype.py``).
"""
from __future__ import annotations

import numpy as np
import torch

from ._resume import Resumable
from .nodes import members

UPDATES = ("z", "rank")


def _first_change(changed: torch.Tensor) -> int:
    """First position where any row changes; ``changed`` bool [V, T] (T if none)."""
    idx = torch.nonzero(changed.any(0))
    return int(idx[0]) if len(idx) else changed.shape[1]


def fast_effects(res: Resumable, sites: list, z_src: dict, metric, index: torch.Tensor, base_metric: torch.Tensor, *,
                 per_position: bool = False, query_mask: dict | None = None, max_tokens: int = 1024,
                 max_rows: int | None = None, update: str = "z", groups: dict | None = None,
                 key_positions: dict | None = None) -> dict:
    """Exact effects of patching the heads of several sites.

    Args:
        res: the base run (``Resumable``) of n inputs.
        sites: ``[(site key, [head, ...]), ...]`` (units: see ``groups``).
        z_src: {site key: values patched in, [n, pos, head, d_head]}.
        metric: a ``Metric``; ``index`` long [n] gives each local input's index in the metric.
        base_metric: metric of the unpatched base run, [n].
        per_position: patch one query position at a time.
        query_mask: {stream: bool [n, pos]} real positions (per-position mode skips the rest).
        max_tokens: variants x replayed positions per batch (sets the batch size unless
            ``max_rows`` is given).
        update: ``"z"`` or ``"rank"`` (module docstring).
        groups: {site key: [[head, ...] per unit of ``sites``]}: a unit patches z of several
            heads at once (a key/value node under GQA, ``nodes``); default: unit = head.
        key_positions: per key position (k / v nodes with ``per_position``): {site key: bool
            [n, P] valid key positions}; ``z_src[key]`` is then [P, n, pos, head, d_head], entry p
            the z of every head with key position p of its unit patched (``nodes.key_position_z``),
            and a variant (unit, i, p) patches the unit's heads at every query position with it.

    Returns:
        {site key: [heads, n] or, per position, [heads, n, pos]} (``key_positions``: [heads, n, P]):
        metric(patched) - metric(base).
        Variants that change nothing (z'_h == z_h bitwise where patched) get exactly 0.
    """
    if update not in UPDATES:
        raise ValueError(f"unknown update {update!r}; use one of {UPDATES}")
    query_mask = query_mask or {}
    kp = key_positions is not None
    out, cand = {}, []                                                # cand: per site, rows (site, head#, i, q)
    member = {}                                                       # per site: bool [unit, head]
    for s, (key, heads) in enumerate(sites):
        zb = res.z[key]
        n, t = zb.shape[:2]
        member[s] = members(zb.shape[2], heads, (groups or {}).get(key))
        changed = (z_src[key].to(zb.device, zb.dtype) != zb).any(-1).cpu()   # [(P,) n, pos, head]
        out[key] = torch.zeros(len(heads), n, t) if per_position else torch.zeros(len(heads), n)
        if kp:
            km = key_positions[key].bool().cpu()                             # [n, P]
            ch = (changed.any(2)[:, :, None, :] & member[s][None, None]).any(-1)   # [P, n, unit]
            out[key] = torch.zeros(len(heads), n, ch.shape[0])
            q, hi, i = torch.nonzero((ch & km.T[:, :, None]).permute(0, 2, 1), as_tuple=True)
        elif per_position:
            qm = query_mask.get(key[0])
            qm = torch.ones(n, t, dtype=torch.bool) if qm is None else qm[:, -t:].bool().cpu()
            ch = (changed[:, :, None, :] & member[s][None, None]).any(-1)    # [n, pos, unit]
            q, hi, i = torch.nonzero((ch & qm[:, :, None]).permute(1, 2, 0), as_tuple=True)
        else:
            hi = torch.arange(len(heads)).repeat_interleave(n)
            i = torch.arange(n).repeat(len(heads))
            q = torch.full_like(i, -1)
        cand.append(torch.stack([torch.full_like(i, s), hi, i, q], 1))
    if not cand:
        return out
    cand = torch.cat(cand)
    stacks = [res.site_stack(key) for key, _ in sites]               # (stack name, layer) per site
    for sname in dict.fromkeys(st for st, _ in stacks):
        mine = cand[torch.tensor([stacks[int(s)][0] == sname for s in cand[:, 0]], dtype=torch.bool)]
        layer = torch.tensor([stacks[int(s)][1] for s in mine[:, 0]])
        order = torch.from_numpy(_lexsort(mine[:, 3], layer, mine[:, 0])) if per_position else \
            torch.from_numpy(_lexsort(layer, mine[:, 0], mine[:, 1], mine[:, 2]))
        mine, layer = mine[order], layer[order]
        t = res.z[sites[int(mine[0, 0])][0]].shape[1] if len(mine) else 1
        step = max_rows or max(1, max_tokens // t)
        for c in range(0, len(mine), step):
            _chunk(res, sname, sites, mine[c:c + step], layer[c:c + step], z_src, metric, index, base_metric,
                   per_position, update, out, member, kp)
    return out


def _fused(res, key, zb: torch.Tensor) -> bool:
    """Whether update "z" runs through ``workbench.cuda.head_patch``'s Triton kernel (the
    backend switch: CUDA tensors, or ``backend="triton"``); otherwise the output projection
    runs on the spliced input, bit for bit the naive loop's computation."""
    from ..cuda._backend import choose

    return choose("head_patch", None, zb) == "triton" and res.model.out_proj(*key).weight.device.type != "meta"


def _lexsort(*keys) -> np.ndarray:
    return np.lexsort([k.numpy() for k in reversed(keys)], axis=0)


def _chunk(res, sname, sites, rows, layer, z_src, metric, index, base_metric, per_position, update, out,
           member, kp: bool = False) -> None:
    order = torch.from_numpy(_lexsort(layer, rows[:, 0]))            # pipeline order: by joining layer, site
    rows, layer = rows[order], layer[order]
    site, hi, i, q = rows.unbind(1)
    keys = [sites[int(s)][0] for s in site]
    t = res.z[keys[0]].shape[1]
    changed = torch.zeros(len(rows), t, dtype=torch.bool)
    patches = []
    for s in torch.unique_consecutive(site).tolist():
        sel = torch.nonzero(site == s)[:, 0]
        lo, hi_ = int(sel[0]), int(sel[-1]) + 1
        key, heads = sites[s]
        zb = res.z[key]
        dev = zb.device
        zs = z_src[key].to(dev, zb.dtype)
        h = torch.tensor(heads)[hi[lo:hi_]].to(dev)
        mem = member[s][hi[lo:hi_]].to(dev)                                  # [rows, head]
        single = bool((member[s].sum(1) == 1).all()) and torch.equal(member[s].nonzero()[:, 1], torch.tensor(heads))
        ii = i[lo:hi_].to(dev)
        zr = zs[q[lo:hi_].to(dev), ii] if kp else zs[ii]                   # [rows, T, head, d]: z' per row
        mask = torch.ones(hi_ - lo, t, dtype=torch.bool)
        if per_position and not kp:
            mask = torch.arange(t)[None, :] == q[lo:hi_, None]
        mask = mask.to(dev)
        changed[lo:hi_] = (mask & ((zr != zb[ii]).any(-1) & mem[:, None, :]).any(-1)).cpu()
        n_heads, d_head = zb.shape[2:]
        if update == "z" and single and _fused(res, key, zb):   # Triton: never builds the spliced input
            from ..cuda import head_patch

            b_o = res.model.b_O(*key)
            y = head_patch(zb, zr[torch.arange(hi_ - lo, device=dev), :, h], ii, h, res.model.W_O(*key).detach().to(dev),
                           None if b_o is None else b_o.detach().to(dev), mask=mask)
            patches.append((key, lo, hi_, "out", y))
        elif update == "z":
            sel_h = mask[:, :, None] & mem[:, None, :]
            x_new = torch.where(sel_h[..., None], zr, zb[ii]).reshape(hi_ - lo, t, n_heads * d_head)
            patches.append((key, lo, hi_, "z", x_new))
        else:
            w_o = res.model.W_O(*key).detach()
            if w_o.device.type == "meta":
                from ..errors import UserError

                raise UserError(f"update='rank' reads W_O of site {key[0]}/{key[1]}, which is offloaded "
                                "(device_map); use update='z'")
            w_o = w_o.to(dev).double()
            dz = (zr - zb[ii]).double() * (mask[:, :, None] & mem[:, None, :])[..., None]
            patches.append((key, lo, hi_, "rank", torch.einsum("rthd,hdm->rtm", dz, w_o)))
    start = _first_change(changed) if res.can_skip_prefix(keys[0]) else 0
    if start >= t:
        return                                                        # nothing changes: effects exactly 0
    with torch.no_grad():
        o = res.run_rows(sname, layer.tolist(), i, patches, start)
    # subtract in the metric's dtype (float64 models keep tiny effects), then float32 on the CPU
    vals = (metric(o, index[i]).cpu() - base_metric[i]).float()
    for r in range(len(rows)):
        key = keys[r]
        if per_position:
            out[key][hi[r], i[r], q[r]] = vals[r]
        else:
            out[key][hi[r], i[r]] = vals[r]
