"""The one capture point: an attention function registered with transformers.

Every supported family (Llama-like, GPT-2, BERT, Whisper, wav2vec2, HuBERT) calls its
attention through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` with
``(module, query, key, value, attention_mask, scaling=..., dropout=..., **kw)``, rotary
already applied and KV heads not yet repeated. We register ``"workbench"`` there, with
transformers' SDPA mask builder as its mask function. The output is always computed by
transformers' own SDPA path, so tracing leaves logits bit-for-bit as the SDPA model
gives them; when a site is being traced we *additionally* recompute the probabilities
the eager path would give (scores in the query dtype, softmax in float32) to capture
patterns or reduce them to per-head statistics, and apply interventions to the per-head
output ``z`` ([batch, query_pos, head, d_head]) before it reaches the output projection.

The active trace is held in a ``ContextVar`` set only inside ``Model.run``: outside a run
the function is a plain pass-through to SDPA.
"""
from __future__ import annotations

import contextvars
import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

IMPL = "workbench"
# Statistics-only traces compute the eager probabilities in blocks of query rows of about
# this many bytes (float32 [batch, head, rows, key_pos]), so no site's full T x T pattern
# exists at once. Measured on smollm2-135m, 2 CPU threads (benchmarks/tracing.py): 4 MiB
# blocks vs the whole pattern at once took 9.2 vs 13.8 s at T = 2048 and 28.9 vs 63.5 s at
# T = 4096 (cache-sized blocks are faster), with less peak memory; 1 MiB was slower.
STATS_BLOCK_BYTES = 4 << 20
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("workbench_active_trace", default=None)


def attention_probs(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    is_causal: bool | None,
    rows: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention probabilities and the allowed-key mask.

    Args:
        query: [batch, head, query_pos, d_head].
        key: [batch, kv_head, key_pos, d_head] (GQA heads are repeated here).
        attention_mask: None, boolean [batch, 1|head, query_pos|1, key_pos] (True = attend)
            or additive float of the same shape.
        rows: only these query rows (a ``slice`` with a start and a stop; default all);
            the causal offset of the rows is kept.

    Returns:
        pattern: float32 [batch, head, rows, key_pos]; rows with no allowed key are 0.
        allowed: bool [batch, 1|head, rows|1, key_pos].
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
    if scaling is None:
        scaling = 1.0 / math.sqrt(d)
    if attention_mask is None:
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        if causal and tq_all > 1:
            qi = torch.arange(start, start + tq, device=query.device)[:, None] + (tk - tq_all)
            allowed = (torch.arange(tk, device=query.device)[None, :] <= qi)[None, None]
        else:
            allowed = None
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[..., :tk]
    else:
        m = attention_mask[..., :tk].float()
        allowed = m > torch.finfo(m.dtype).min / 2
    # one pass for scale + mask: baddbmm(bias, q, k^T) with bias 0 / -inf (plus any finite
    # additive mask values), in the query dtype as eager attention does; softmax in float32
    bias = torch.zeros((), dtype=query.dtype, device=query.device)
    if allowed is not None:
        bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(~allowed, float("-inf"))
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            bias = bias + torch.where(allowed, attention_mask[..., :tk].to(query.dtype), 0)
    scores = torch.baddbmm(
        bias.expand(b, h, tq, tk).reshape(b * h, tq, tk), query.reshape(b * h, tq, d),
        key.reshape(b * h, tk, d).transpose(1, 2), alpha=scaling,
    ).view(b, h, tq, tk)
    pattern = torch.softmax(scores.float(), dim=-1)
    if allowed is None:
        allowed = torch.ones(1, 1, tq, tk, dtype=torch.bool, device=query.device)
    elif not bool(allowed.any(-1).all()):
        pattern = torch.nan_to_num(pattern, nan=0.0)        # rows with no allowed key
    return pattern, allowed


def repeat_kv(key: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[batch, kv_head, pos, d] -> [batch, n_heads, pos, d] (GQA: each KV head serves
    n_heads / kv_head query heads); the same tensor when there is nothing to repeat."""
    if key.shape[1] == n_heads:
        return key
    return key.repeat_interleave(n_heads // key.shape[1], dim=1)


def stats_blocks(query: torch.Tensor, key_len: int) -> list[slice]:
    """Query-row blocks for a statistics-only trace: each float32 [batch, head, rows,
    key_len] block holds about ``STATS_BLOCK_BYTES``; one block when everything fits."""
    b, h, tq = query.shape[:3]
    step = max(1, STATS_BLOCK_BYTES // max(1, b * h * key_len * 4))
    return [slice(s, min(s + step, tq)) for s in range(0, tq, step)]


def workbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function registered as ``"workbench"``; see the module docstring."""
    kwargs.pop("output_attentions", None)
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    trace = ACTIVE.get()
    if trace is None:
        return out, None
    return trace.on_attention(module, query, key, value, attention_mask, scaling, kwargs.get("is_causal"), out), None


def register() -> None:
    """Register the ``"workbench"`` attention and mask functions (idempotent)."""
    AttentionInterface.register(IMPL, workbench_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL, sdpa_mask)


register()
