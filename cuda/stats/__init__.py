"""Streaming head statistics: per head and query, the softmax statistics of one attention
call without a [query_pos, key_pos] tensor per head (the Triton kernel) or with one block of
query rows at a time (the PyTorch reference, ``naive.py``)."""
from __future__ import annotations

import torch

from workbench.errors import UserError

from .._backend import choose, requested, triton_unavailable
from ._types import HeadStatsOut

__all__ = ["HeadStatsOut", "head_stats", "z_available"]


def z_available(query: torch.Tensor, key: torch.Tensor, backend: str | None = None) -> bool:
    """Whether ``head_stats(values=...)`` can return z on these tensors with this backend:
    only the PyTorch path computes it (``backend`` "torch", or "auto" where it picks the
    reference: tensors not on CUDA, or Triton unable to run). Records nothing, warns nothing."""
    name = requested(backend)
    if name != "auto":
        return name == "torch"
    return not any(t.device.type == "cuda" for t in (query, key)) or triton_unavailable(query, key) is not None


def head_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    scaling: float,
    causal: bool = True,
    softcap: float | None = None,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
    softmax_fp32: bool = True,
    query_mask: torch.Tensor | None = None,
    keys: torch.Tensor | list[int] | None = None,
    backend: str | None = None,
    block_bytes: int = 4 << 20,
    lse: bool = True,
    values: torch.Tensor | None = None,
) -> HeadStatsOut:
    """Per-head statistics of softmax(scaling * q k^T + mask) (``HeadStatsOut``): log-sum-exp,
    entropy (Shannon, nats; by online softmax in the kernel), argmax key and its probability,
    the mass on chosen keys (sink candidates, Xiao et al. 2024) and per-key column sums
    (attention received, the sink score alpha_k of Gu et al. 2024 is col_sum / col_count).

    Args:
        query: [batch, head, query_pos, d_head], rotary applied.
        key: [batch, kv_head, key_pos, d_head] (head must be a multiple of kv_head: GQA);
            key_pos >= query_pos: query i sits at key index i + key_pos - query_pos (the
            causal offset of a KV-cached decode step).
        attention_mask: None, boolean [batch, 1|head, query_pos|1, key_pos] (True = attend)
            or additive float (values <= float32 min / 2 are masked); it holds any causality.
        scaling: factor on q.k.
        causal: without a mask, key j is visible from query i only if j <= its key index.
        softcap: scores := softcap * tanh(scores / softcap) before the mask (Gemma 2).
        sliding_window: key j visible from query i only if i - j < sliding_window.
        sinks: [head] logits of a virtual key that takes probability mass (gpt-oss ``s_aux``).
        softmax_fp32: the reference's softmax dtype (float32, or the query dtype as HF eager
            computes it for GPT-2-style families); the kernel is always float32.
        query_mask: [batch, query_pos] weights of the queries in the column sums (1 = real
            token, 0 = padding).
        keys: chosen key positions (int, [n_chosen]) for ``key_mass``.
        backend: "auto" | "torch" | "triton" (default ``$WORKBENCH_BACKEND`` or "auto"; see
            ``workbench.cuda``).
        block_bytes: the reference's float32 bytes per block of query rows.
        lse: False lets the reference skip the log-sum-exp (``lse`` is then None; the kernel
            computes it anyway, its column pass needs it).
        values: [batch, kv_head, key_pos, d_v]: also return ``z`` = P @ values per head
            ([batch, query_pos, head, d_v], the attention output) computed from the same
            probability blocks, one pass over the scores (``fused.py``: blocks trimmed to
            the keys their rows may see; statistics equal the reference's to float
            round-off, not bit for bit). PyTorch path only (see ``z_available``).

    Raises:
        UserError: bad shapes, a key position out of range, an unknown backend.
        BackendError: backend "triton" cannot run here.
        UserError: ``values`` where the Triton kernel would run (it computes no z).
    """
    if query.dim() != 4 or key.dim() != 4 or query.shape[0] != key.shape[0] or query.shape[3] != key.shape[3]:
        raise UserError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must be [batch, head, pos, d_head] "
                        "with the same batch and d_head")
    if key.shape[1] == 0 or query.shape[1] % key.shape[1]:
        raise UserError(f"query has {query.shape[1]} heads, not a multiple of key's {key.shape[1]}")
    if keys is not None:
        keys = torch.as_tensor(keys, dtype=torch.long, device=query.device).reshape(-1)
        if keys.numel() and not (0 <= int(keys.min()) and int(keys.max()) < key.shape[2]):
            raise UserError(f"keys must be key positions in 0..{key.shape[2] - 1}, got {keys.tolist()}")
    if values is not None:
        if values.dim() != 4 or values.shape[:3] != key.shape[:3]:
            raise UserError(f"values {tuple(values.shape)} must be [batch, kv_head, key_pos, d_v] like key "
                            f"{tuple(key.shape)}")
        if not z_available(query, key, backend):
            raise UserError("head_stats: values (the attention output z) is computed only by the PyTorch path; "
                            "use backend 'torch', or leave values None")
    kw = dict(scaling=scaling, causal=causal, softcap=softcap, sliding_window=sliding_window, sinks=sinks,
              softmax_fp32=softmax_fp32, query_mask=query_mask, keys=keys)
    if choose("head_stats", backend, query, key) == "triton":
        from . import triton as kernel

        return kernel.head_stats(query, key, attention_mask, **kw)
    if values is not None:
        from .fused import head_stats_and_z

        return head_stats_and_z(query, key, values, attention_mask, block_bytes=block_bytes, lse=lse, **kw)
    from . import naive

    return naive.head_stats(query, key, attention_mask, block_bytes=block_bytes, lse=lse, **kw)
