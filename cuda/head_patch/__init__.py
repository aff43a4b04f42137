"""Batched head patching: for V variants, the output projection with one head's z replaced
per variant (activation patching, Vig et al. 2020; Wang et al. 2023), without building the
[V, T, head * d_head] spliced input (the Triton kernel) or building it (the reference)."""
from __future__ import annotations

import torch

from workbench.errors import UserError

from .._backend import choose

__all__ = ["head_patch"]
MODES = ("z", "rank")


def head_patch(
    z_base: torch.Tensor,
    z_new: torch.Tensor,
    rows: torch.Tensor,
    heads: torch.Tensor,
    w_o: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    base_out: torch.Tensor | None = None,
    mode: str = "z",
    backend: str | None = None,
) -> torch.Tensor:
    """Output projection of V patched variants: variant v is input ``rows[v]`` with head
    ``heads[v]``'s z replaced by ``z_new[v]`` at the positions where ``mask[v]`` is True.

    o_proj(concat_h z') = sum_h z'_h W_O[h] + b; since only one head changes this also equals
    o_proj(concat_h z) + (z'_h - z_h) W_O[h] (mode "rank", a rank-d_head update of the clean
    output ``base_out``, float64 in the reference).

    Args:
        z_base: [n, pos, head, d_head] clean per-head outputs of the n inputs.
        z_new: [V, pos, d_head] the patched head's replacement z per variant.
        rows: long [V] input of each variant; heads: long [V] patched head of each variant.
        w_o: [head, d_head, d_model] the output projection per head (``Model.W_O``).
        bias: [d_model] the projection's bias, mode "z" only (the clean output holds it).
        mask: bool [V, pos] positions patched (default all).
        base_out: [n, pos, d_model] clean projection output, mode "rank" only.
        mode: "z" (the projection of the spliced input; the reference is bit-for-bit
            ``F.linear`` on it) or "rank".
        backend: "auto" | "torch" | "triton" (``workbench.cuda``).

    Returns:
        [V, pos, d_model] in z_base's dtype (mode "z") or base_out's (mode "rank").

    Raises:
        UserError: bad shapes or mode, a row or head out of range.
        BackendError: backend "triton" cannot run here.
    """
    if mode not in MODES:
        raise UserError(f"mode is {mode!r}; use one of {', '.join(MODES)}")
    n, t, n_heads, d_head = z_base.shape
    v = z_new.shape[0]
    if z_new.shape != (v, t, d_head) or tuple(w_o.shape[:2]) != (n_heads, d_head) or rows.shape != (v,) \
            or heads.shape != (v,) or (mask is not None and mask.shape != (v, t)):
        raise UserError(f"shapes do not fit: z_base {tuple(z_base.shape)} [n, pos, head, d_head], z_new "
                        f"{tuple(z_new.shape)} [V, pos, d_head], rows/heads [V], w_o {tuple(w_o.shape)} "
                        "[head, d_head, d_model], mask [V, pos]")
    if mode == "rank" and (base_out is None or tuple(base_out.shape) != (n, t, w_o.shape[2])):
        raise UserError("mode 'rank' needs base_out [n, pos, d_model], the clean projection output")
    if v and (int(rows.min()) < 0 or int(rows.max()) >= n or int(heads.min()) < 0 or int(heads.max()) >= n_heads):
        raise UserError(f"rows must be in 0..{n - 1} and heads in 0..{n_heads - 1}")
    if choose("head_patch", backend, z_base, z_new) == "triton":
        from . import triton as kernel

        return kernel.head_patch(z_base, z_new, rows, heads, w_o, bias, mask=mask, base_out=base_out, mode=mode)
    from . import naive

    return naive.head_patch(z_base, z_new, rows, heads, w_o, bias, mask=mask, base_out=base_out, mode=mode)
