"""Triton kernel of batched head patching: one program per (variant, block of positions,
block of d_model) computes the output projection of the spliced z straight from the clean
z and the variant's replacement head (mode "z"), or the clean output plus the rank-d_head
update (mode "rank"); the [V, T, head * d_head] input is never built. float32 accumulation.
Under ``TRITON_INTERPRET=1`` operands are upcast to float32 before ``tl.dot``."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreting

INTERPRET = interpreting()
CONFIGS = ([triton.Config({"BLOCK_T": 32, "BLOCK_N": 32})] if INTERPRET else
           [triton.Config({"BLOCK_T": t, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for t, n, w, s in [(64, 128, 4, 3), (128, 128, 8, 3), (64, 64, 4, 2), (32, 128, 4, 2), (128, 64, 4, 3)]])


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Output buffer (tests replace this to poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.autotune(configs=CONFIGS, key=["T_BUCKET", "DM", "BLOCK_D", "MODE"])
@triton.jit
def _head_patch(ZB, ZN, ROWS, HEADS, W, BIAS, MASK, BASE, OUT,
                szb_n, szb_t, szb_h, szb_d, szn_v, szn_t, szn_d, sw_h, sw_d, sw_m,
                sbo_n, sbo_t, sbo_m, smask_v, smask_t,
                T, H, DM, T_BUCKET,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
                IEEE: tl.constexpr):
    v = tl.program_id(0).to(tl.int64)               # int64 offsets: large V x T x d_model
    pid_t = tl.program_id(1)
    pid_n = tl.program_id(2)
    row = tl.load(ROWS + v).to(tl.int64)
    head = tl.load(HEADS + v)
    ts = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ds = tl.arange(0, BLOCK_D)
    tmask = ts < T
    nmask = ns < DM
    zmask = tmask[:, None] & (ds[None, :] < D)
    wmask = (ds[:, None] < D) & nmask[None, :]
    if HAS_MASK:
        on = tl.load(MASK + v * smask_v + ts * smask_t, mask=tmask, other=0) != 0
    else:
        on = tmask
    zn = tl.load(ZN + v * szn_v + ts[:, None] * szn_t + ds[None, :] * szn_d, mask=zmask, other=0.0)
    acc = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
    if MODE == 0:                                      # o_proj(concat z'), z' spliced on the fly
        for h in range(H):
            z = tl.load(ZB + row * szb_n + ts[:, None] * szb_t + h * szb_h + ds[None, :] * szb_d,
                        mask=zmask, other=0.0)
            z = tl.where(on[:, None] & (h == head), zn.to(z.dtype), z)
            w = tl.load(W + h * sw_h + ds[:, None] * sw_d + ns[None, :] * sw_m, mask=wmask, other=0.0)
            if UPCAST:
                z = z.to(tl.float32)
                w = w.to(tl.float32)
            else:
                w = w.to(z.dtype)
            if IEEE:
                acc += tl.dot(z, w, input_precision="ieee")
            else:
                acc += tl.dot(z, w)
        if HAS_BIAS:
            acc += tl.load(BIAS + ns, mask=nmask, other=0.0).to(tl.float32)[None, :]
    else:                                              # clean output + (z'_h - z_h) W_O[h]
        z = tl.load(ZB + row * szb_n + ts[:, None] * szb_t + head * szb_h + ds[None, :] * szb_d,
                    mask=zmask, other=0.0)
        dz = tl.where(on[:, None], zn.to(tl.float32) - z.to(tl.float32), 0.0)
        w = tl.load(W + head * sw_h + ds[:, None] * sw_d + ns[None, :] * sw_m, mask=wmask, other=0.0)
        acc = tl.dot(dz, w.to(tl.float32), input_precision="ieee")
        acc += tl.load(BASE + row * sbo_n + ts[:, None] * sbo_t + ns[None, :] * sbo_m,
                       mask=tmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
    out = v * T * DM + ts[:, None] * DM + ns[None, :]
    tl.store(OUT + out, acc.to(OUT.dtype.element_ty), mask=tmask[:, None] & nmask[None, :])


def head_patch(z_base, z_new, rows, heads, w_o, bias=None, *, mask=None, base_out=None, mode="z") -> torch.Tensor:
    """Triton ``head_patch`` (see ``workbench.cuda.head_patch.head_patch``)."""
    v, t, d = z_new.shape
    n_heads, _, d_model = w_o.shape
    dev = z_base.device
    rows32 = rows.to(dev, torch.int32).contiguous()
    heads32 = heads.to(dev, torch.int32).contiguous()
    out_dtype = z_base.dtype if mode == "z" else base_out.dtype
    out = _alloc((v, t, d_model), out_dtype, dev)
    m = mask.to(dev).view(torch.uint8) if mask is not None else rows32
    base = base_out if base_out is not None else z_base
    b = bias if bias is not None else rows32
    if v and t:
        grid = lambda meta: (v, triton.cdiv(t, meta["BLOCK_T"]), triton.cdiv(d_model, meta["BLOCK_N"]))  # noqa: E731
        _head_patch[grid](
            z_base, z_new.to(dev), rows32, heads32, w_o, b, m, base, out,
            *z_base.stride(), *z_new.stride(), *w_o.stride(),
            *(base_out.stride() if base_out is not None else (0, 0, 0)),
            *(m.stride() if mask is not None else (0, 0)),
            t, n_heads, d_model, triton.next_power_of_2(t),
            D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), MODE=0 if mode == "z" else 1,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None, UPCAST=INTERPRET,
            IEEE=INTERPRET or z_base.dtype == torch.float32)
    return out
