"""PyTorch reference of batched head patching: what the fast exact patching path computes
today, one batch of variants at a time (``workbench.patching.fast``)."""
from __future__ import annotations

import torch


def spliced_z(z_base, z_new, rows, heads, mask=None) -> torch.Tensor:
    """concat_h z for every variant, head ``heads[v]`` replaced by ``z_new[v]`` (where
    ``mask[v, t]``): [V, T, head * d_head]. This is the tensor the kernel never builds."""
    v, t = z_new.shape[:2]
    n_heads, d_head = z_base.shape[2:]
    dev = z_base.device
    sel = torch.arange(n_heads, device=dev)[None, None, :] == heads.to(dev)[:, None, None]
    if mask is not None:
        sel = sel & mask.to(dev)[:, :, None]
    zn = z_new.to(dev, z_base.dtype)[:, :, None, :]
    return torch.where(sel[..., None], zn, z_base[rows.to(dev)]).reshape(v, t, n_heads * d_head)


def head_patch(z_base, z_new, rows, heads, w_o, bias=None, *, mask=None, base_out=None, mode="z") -> torch.Tensor:
    """See ``workbench.cuda.head_patch.head_patch``."""
    if mode == "z":
        n_heads, d_head, d_model = w_o.shape
        weight = w_o.reshape(n_heads * d_head, d_model).t().to(z_base.dtype)       # nn.Linear layout
        return torch.nn.functional.linear(spliced_z(z_base, z_new, rows, heads, mask), weight,
                                          None if bias is None else bias.to(z_base.dtype))
    dev = z_base.device
    rows, heads = rows.to(dev), heads.to(dev)
    dz = (z_new.to(dev).double() - z_base[rows, :, heads].double())
    if mask is not None:
        dz = dz * mask.to(dev)[..., None]
    update = torch.einsum("vtd,vdm->vtm", dz, w_o.to(dev).double()[heads])
    return (base_out[rows].double() + update).to(base_out.dtype)
