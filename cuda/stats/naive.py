"""PyTorch reference of the head statistics: the eager probabilities HF computes, one block of
query rows at a time, each block reduced on the spot (no site's T x T pattern exists at once).

This is what CPU users run and what defines correct behaviour for the Triton kernel
(``triton.py``); ``workbench.Stats`` captures exactly these numbers (``workbench.trace``
calls ``head_stats`` through the backend switch). ``eager_probs`` is also the probability
the workbench's ``Pattern`` capture returns (``workbench._attention.attention_probs``).
"""
from __future__ import annotations

import torch

from ._types import HeadStatsOut


def eager_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    causal: bool = True,
    softcap: float | None = None,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
    softmax_fp32: bool = True,
    rows: slice | None = None,
    with_lse: bool = False,
    work: torch.Tensor | None = None,
):
    """Eager attention probabilities and the allowed-key mask as HF's eager path computes them:
    scores in the query dtype, softmax in float32 (``softmax_fp32``, Llama-style) or in the
    query dtype (GPT-2, BERT, Whisper ...).

    Args:
        query: [batch, head, query_pos, d_head] (rotary applied).
        key: [batch, kv_head, key_pos, d_head] (GQA heads are repeated here).
        attention_mask: None, boolean [batch, 1|head, query_pos|1, key_pos] (True = attend)
            or additive float of the same shape (values <= float32 min / 2 mean "masked").
        scaling: factor on q.k.
        causal: with no mask, key j is visible from query i only if j <= i + key_pos -
            query_pos (the causal offset of a KV-cached step); ignored when a mask is given
            (it holds the causality) and when query_pos == 1.
        softcap: scores := softcap * tanh(scores / softcap) before the mask (Gemma 2).
        sliding_window: key j visible from query i only if i - j < sliding_window.
        sinks: [head] logits of a virtual key that takes probability mass and is dropped
            (``s_aux``, gpt-oss).
        rows: only these query rows (a ``slice`` with a start and a stop; default all);
            the causal offset of the rows is kept.
        with_lse: also return the log-sum-exp of each row's scores (sink logit included).
        work: float32 [2, n] with n >= batch x head x rows x key_pos: scores and probabilities
            are written there (``pattern`` is then a view of ``work[1]``) instead of into new
            tensors, with the same values bit for bit; used only for float32 queries without
            soft-capping or sinks (else ignored). ``head_stats`` passes one per call (not where
            autograd records q or k: out= has no gradient), so its blocks do not fragment the heap.

    Returns:
        pattern: float32 [batch, head, rows, key_pos]; rows with no allowed key are 0;
            with sinks, a row sums to 1 minus the sink's share.
        allowed: bool [batch, 1|head, rows|1, key_pos].
        lse (only ``with_lse``): float32 [batch, head, rows] (-inf for a row with no key).
    """
    tq_all, tk = query.shape[2], key.shape[2]
    start = 0
    if rows is not None:
        start = rows.start
        query = query[:, :, rows]
        if attention_mask is not None and attention_mask.shape[-2] == tq_all:
            attention_mask = attention_mask[..., rows, :]
    b, h, tq, d = query.shape
    key = repeat_kv(key, h)
    qi = torch.arange(start, start + tq, device=query.device)[:, None] + (tk - tq_all)   # query i's key index
    kj = torch.arange(tk, device=query.device)[None, :]
    if attention_mask is None:
        allowed = (kj <= qi)[None, None] if causal and tq_all > 1 else None
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[..., :tk]
    else:
        m = attention_mask[..., :tk].float()
        allowed = m > torch.finfo(m.dtype).min / 2
    if sliding_window is not None and tk > sliding_window:
        window = (qi - kj < sliding_window)[None, None]
        allowed = window if allowed is None else allowed & window
    additive = attention_mask is not None and attention_mask.dtype != torch.bool
    if work is not None and query.dtype == torch.float32 and softcap is None and sinks is None:
        pattern = _probs_into(work, query, key, attention_mask, allowed, additive, scaling)
        if allowed is None:
            allowed = torch.ones(1, 1, tq, tk, dtype=torch.bool, device=query.device)
        elif not bool(allowed.any(-1).all()):
            pattern.nan_to_num_(nan=0.0)                    # rows with no allowed key
        return (pattern, allowed, torch.logsumexp(work[0, :pattern.numel()].view(pattern.shape), dim=-1)) \
            if with_lse else (pattern, allowed)
    # scale (+ mask in the same pass: baddbmm(bias, q, k^T) with bias 0 / -inf plus any
    # finite additive mask values) in the query dtype as eager attention does
    bias = torch.zeros((), dtype=query.dtype, device=query.device)
    if allowed is not None and softcap is None:
        bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(~allowed, float("-inf"))
        if additive:
            bias = bias + torch.where(allowed, attention_mask[..., :tk].to(query.dtype), 0)
    scores = torch.baddbmm(
        bias.expand(b, h, tq, tk).reshape(b * h, tq, tk), query.reshape(b * h, tq, d),
        key.reshape(b * h, tk, d).transpose(1, 2), alpha=scaling,
    ).view(b, h, tq, tk)
    if softcap is not None:                            # Gemma 2: cap the scores, then mask
        scores = torch.tanh(scores / softcap) * softcap
        if additive:
            scores = scores + torch.where(allowed, attention_mask[..., :tk].to(query.dtype), 0)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:                              # a virtual key per head, dropped after the softmax
        sink = sinks.to(scores.dtype).reshape(1, h, 1, 1).expand(b, h, tq, 1)
        scores = torch.cat([scores, sink], dim=-1)
    pattern = torch.softmax(scores.float() if softmax_fp32 else scores, dim=-1).float()
    lse = torch.logsumexp(scores.float(), dim=-1) if with_lse else None
    if sinks is not None:
        pattern = pattern[..., :-1]
    if allowed is None:
        allowed = torch.ones(1, 1, tq, tk, dtype=torch.bool, device=query.device)
    elif not bool(allowed.any(-1).all()):
        pattern = torch.nan_to_num(pattern, nan=0.0)        # rows with no allowed key
    return (pattern, allowed, lse) if with_lse else (pattern, allowed)


def _probs_into(work, query, key, attention_mask, allowed, additive: bool, scaling: float) -> torch.Tensor:
    """``eager_probs``' float32 scores and softmax written into ``work`` (the same operations as
    its allocating path: the bias 0 / -inf (+ additive values) laid down where baddbmm's input
    would be copied, then baddbmm_ with beta 1, then the softmax kernel with ``out=``)."""
    b, h, tq, d = query.shape
    tk = key.shape[2]
    scores = work[0, :b * h * tq * tk].view(b, h, tq, tk)
    scores.zero_()
    if allowed is not None:
        scores.masked_fill_(~allowed, float("-inf"))
        if additive:
            scores.add_(torch.where(allowed, attention_mask[..., :tk].to(query.dtype), 0))
    s3 = scores.view(b * h, tq, tk)
    s3.baddbmm_(query.reshape(b * h, tq, d), key.reshape(b * h, tk, d).transpose(1, 2), alpha=scaling)
    return torch.ops.aten._softmax.out(scores, -1, False, out=work[1, :b * h * tq * tk].view(b, h, tq, tk))


def repeat_kv(key: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[batch, kv_head, pos, d] -> [batch, n_heads, pos, d] (GQA: each KV head serves
    n_heads / kv_head query heads); the same tensor when there is nothing to repeat."""
    if key.shape[1] == n_heads:
        return key
    return key.repeat_interleave(n_heads // key.shape[1], dim=1)


def row_blocks(query: torch.Tensor, key_len: int, block_bytes: int) -> list[slice]:
    """Query-row blocks: each float32 [batch, head, rows, key_len] block holds about
    ``block_bytes``; one block when everything fits."""
    b, h, tq = query.shape[:3]
    step = max(1, block_bytes // max(1, b * h * key_len * 4))
    return [slice(s, min(s + step, tq)) for s in range(0, tq, step)]


def reduce_block(pattern: torch.Tensor, allowed: torch.Tensor, query_mask: torch.Tensor | None,
                 work: torch.Tensor | None = None) -> dict:
    """Reduce probabilities [batch, head, q, k] (float32) to the fields of ``HeadStatsOut``
    that need no scores: entropy, n_keys, col_sum, col_count, max_pos, max_prob.
    ``query_mask``: [batch, q] (1 = a real query; only these count in the column sums).
    ``work``: float32, at least pattern's size, for the entropy's p ln p (else a new tensor)."""
    pattern = pattern.float()
    b, h, tq, tk = pattern.shape
    allowed_b = allowed.expand(b, -1, tq, tk)[:, 0]
    qmask = (torch.ones(b, tq, dtype=pattern.dtype, device=pattern.device) if query_mask is None
             else query_mask[:, -tq:].to(pattern.device, pattern.dtype))
    max_pos = pattern.argmax(-1)
    return dict(
        entropy=-(torch.special.xlogy(pattern, pattern) if work is None
                  else torch.special.xlogy(pattern, pattern, out=work[:pattern.numel()].view(pattern.shape))).sum(-1),
        n_keys=allowed_b.sum(-1),
        col_sum=torch.einsum("bhqk,bq->bhk", pattern, qmask),
        col_count=torch.einsum("bqk,bq->bk", allowed_b.to(pattern.dtype), qmask),
        max_pos=max_pos,
        max_prob=pattern.gather(-1, max_pos[..., None])[..., 0],
    )


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
    keys: torch.Tensor | None = None,
    block_bytes: int = 4 << 20,
    lse: bool = True,
) -> HeadStatsOut:
    """Per-head statistics from probabilities computed ``block_bytes`` of float32 at a time
    (see ``workbench.cuda.stats.head_stats`` for the arguments and outputs). ``lse=False``
    skips the log-sum-exp (one more pass over each block: measured +30% time on CPU) and
    leaves ``lse`` None."""
    key = repeat_kv(key, query.shape[1])            # once per call, not once per block
    qm = None if query_mask is None else query_mask[:, -query.shape[2]:]
    blocks = row_blocks(query, key.shape[2], block_bytes)
    # every block's scores, probabilities and p ln p in one buffer allocated once per call: blocks
    # allocating their own fragment glibc's heap (its mmap threshold rises to the block size after
    # the first free), so peak RSS ends far above what is in use; the values are the same bit for bit
    work = None
    tracked = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)   # out= has no autograd
    if query.dtype == torch.float32 and softcap is None and sinks is None and not tracked:
        b, h, _, tk = *query.shape[:3], key.shape[2]
        work = torch.empty(2, b * h * max(r.stop - r.start for r in blocks) * tk, dtype=torch.float32,
                           device=query.device)
    out: dict = {}
    for rows in blocks:
        pattern, allowed, *row_lse = eager_probs(query, key, attention_mask, scaling=scaling, causal=causal,
                                                 softcap=softcap, sliding_window=sliding_window, sinks=sinks,
                                                 softmax_fp32=softmax_fp32, rows=rows, with_lse=lse, work=work)
        part = reduce_block(pattern, allowed, None if qm is None else qm[:, rows], None if work is None else work[0])
        if lse:
            part["lse"] = row_lse[0]
        part["key_mass"] = pattern[..., keys] if keys is not None else pattern.new_zeros(pattern.shape[:3] + (0,))
        # every output allocated once, at the first block, each block writing its slice, and the
        # column sums (one running [b, (h,) key] each, summed block after block in order) added in
        # place: per-block results kept until a final cat, and a new running sum per block, are
        # small long-lived chunks among the blocks' temporaries that split freed heap holes, so
        # the heap grew by about a block per block (~T^2: +5.5 GiB at T = 32768 on a tiny Llama)
        for name, t in part.items():
            if name in ("col_sum", "col_count"):
                if name in out:
                    out[name].add_(t)
                else:
                    out[name] = t.clone()
                continue
            dim = t.dim() - 1 if name == "n_keys" else 2
            if name not in out:
                shape = list(t.shape)
                shape[dim] = query.shape[2]
                out[name] = t.new_empty(shape)
            out[name].narrow(dim, rows.start, rows.stop - rows.start).copy_(t)
        del part, pattern, allowed, row_lse
    return HeadStatsOut(**{"lse": None, **out})
