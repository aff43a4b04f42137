"""The one capture point: an attention function registered with transformers.

Every supported family calls its attention through
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` with ``(module, query, key, value,
attention_mask, scaling=..., dropout=..., **kw)``, rotary already applied and KV heads not
yet repeated. We register ``"workbench"`` there, with transformers' SDPA mask builder as its
mask function. The output is computed by transformers' own SDPA path, so tracing leaves
logits bit-for-bit as the SDPA model gives them (except at the sites of a
``Stats(attn_output="fused")`` trace, whose output comes from the statistics' own score
blocks, ``Tracer.fuses``); where SDPA cannot honour a keyword
(``softcap``: Gemma 2; ``s_aux`` sink logits) the output is the family's own HF
``eager_attention_forward`` (Gemma 2 ships without SDPA support for this reason). When a
site is being traced we *additionally* recompute the probabilities as HF's eager path
computes them for that dtype (scores in the query dtype; softmax in float32 for the
families whose eager function upcasts, Llama-style, and in the query dtype for those that
do not, GPT-2, BERT, Whisper, wav2vec2, HuBERT: ``Family.eager_softmax_fp32``), to capture
patterns or reduce them to per-head statistics, and apply interventions to the per-head
output ``z`` ([batch, query_pos, head, d_head]) before it reaches the output projection.

Every keyword the function receives is either honoured in the recomputed probabilities
(``scaling``, ``is_causal``, ``softcap``, ``sliding_window``, ``s_aux``), refused when it
would make them differ from what the model computes (``dropout`` > 0 while traced: a model
in training mode), known not to change them (``INERT``: rotary positions already applied,
cache flags), or raises ``UnsupportedAttentionError`` naming it: never silently ignored.

The active trace is held in a ``ContextVar`` set only inside ``Model.run``: outside a run
the function is a plain pass-through to SDPA (or eager, see above).
"""
from __future__ import annotations

import contextvars
import math
import sys
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from workbench.cuda.stats.naive import eager_probs, repeat_kv, row_blocks  # noqa: F401 (repeat_kv: re-export)

IMPL = "workbench"
# Statistics-only traces compute the eager probabilities in blocks of query rows of about
# this many bytes (float32 [batch, head, rows, key_pos]), so no site's full T x T pattern
# exists at once. Measured on smollm2-135m, 2 CPU threads (benchmarks/tracing.py): 4 MiB
# blocks vs the whole pattern at once took 9.2 vs 13.8 s at T = 2048 and 28.9 vs 63.5 s at
# T = 4096 (cache-sized blocks are faster), with less peak memory; 1 MiB was slower.
STATS_BLOCK_BYTES = 4 << 20
ACTIVE: contextvars.ContextVar = contextvars.ContextVar("workbench_active_trace", default=None)
# q/k/v nodes (``workbench.patching.nodes``): when set, called first with every call's inputs,
# ``fn(module, query, key, value, attention_mask, scaling, kwargs) -> (query, key, value)``
INPUTS: contextvars.ContextVar = contextvars.ContextVar("workbench_attention_inputs", default=None)
# keywords that do not change the attention probabilities: positions are already applied to
# query/key (rotary), the rest are flags for what the model returns or caches
INERT = frozenset({"position_ids", "cache_position", "use_cache", "output_attentions", "output_hidden_states",
                   "output_router_logits", "return_dict", "num_items_in_batch", "encoder_hidden_states",
                   "layer_idx"})
# keywords SDPA cannot honour: the output then comes from the family's HF eager function
EAGER_ONLY = ("softcap", "s_aux")


class UnsupportedAttentionError(ValueError):
    """The model passed its attention function a keyword the workbench does not understand."""


@dataclass(frozen=True)
class AttnCall:
    """What one call of the attention function asked for, as the probabilities need it.

    ``scaling``: the factor on q.k (1/sqrt(d_head) when the model passed None);
    ``softcap``: scores := softcap * tanh(scores / softcap) before the mask (Gemma 2);
    ``sliding_window``: key j is visible from query i only if i - j < sliding_window
    (transformers' ``sliding_window_overlay``); ``sinks``: [head] logits of a virtual key
    that takes probability mass and is dropped (``s_aux``); ``softmax_fp32``: HF eager's
    softmax dtype for the family (see module docstring).
    """

    scaling: float
    is_causal: bool | None = None
    softcap: float | None = None
    sliding_window: int | None = None
    sinks: torch.Tensor | None = None
    softmax_fp32: bool = True


def read_call(module, query, scaling, dropout, kwargs: dict, softmax_fp32: bool = True, traced: bool = False) -> AttnCall:
    """Validate the keywords of one attention call. Raises UnsupportedAttentionError naming
    an unknown keyword; ValueError when a traced call has dropout > 0."""
    for name, val in kwargs.items():
        if name in INERT or name in ("is_causal", "softcap", "sliding_window", "s_aux"):
            continue
        if name in ("position_bias", "cache", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                    "seq_idx") and val is None:
            continue
        raise UnsupportedAttentionError(
            f"{type(module).__name__} passed keyword {name!r} to the attention function; the workbench does not "
            "know how it changes the attention probabilities, so it refuses rather than ignore it")
    if traced and dropout:
        raise ValueError(f"{type(module).__name__} applies attention dropout p={dropout} (the model is in training "
                         "mode): call model.hf.eval() before tracing")
    return AttnCall(1.0 / math.sqrt(query.shape[-1]) if scaling is None else float(scaling), kwargs.get("is_causal"),
                    kwargs.get("softcap"), kwargs.get("sliding_window"), kwargs.get("s_aux"), softmax_fp32)


def attention_probs(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    call: AttnCall,
    rows: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention probabilities and the allowed-key mask, as HF's eager path computes
    them (module docstring), honouring every field of ``call``.

    Args:
        query: [batch, head, query_pos, d_head].
        key: [batch, kv_head, key_pos, d_head] (GQA heads are repeated here).
        attention_mask: None, boolean [batch, 1|head, query_pos|1, key_pos] (True = attend)
            or additive float of the same shape.
        rows: only these query rows (a ``slice`` with a start and a stop; default all);
            the causal offset of the rows is kept.

    Returns:
        pattern: float32 [batch, head, rows, key_pos]; rows with no allowed key are 0;
            with sinks, a row sums to 1 minus the sink's share.
        allowed: bool [batch, 1|head, rows|1, key_pos].

    The computation is the head-statistics reference, ``workbench.cuda.stats.naive.eager_probs``.
    """
    return eager_probs(query, key, attention_mask, scaling=call.scaling, causal=is_causal(module, call),
                       softcap=call.softcap, sliding_window=call.sliding_window, sinks=call.sinks,
                       softmax_fp32=call.softmax_fp32, rows=rows)


def is_causal(module: torch.nn.Module, call: AttnCall) -> bool:
    """Whether a call without a mask is causal: the call's ``is_causal``, else the module's."""
    return getattr(module, "is_causal", True) if call.is_causal is None else call.is_causal


def stats_blocks(query: torch.Tensor, key_len: int) -> list[slice]:
    """Query-row blocks for a statistics-only trace: each float32 [batch, head, rows,
    key_len] block holds about ``STATS_BLOCK_BYTES``; one block when everything fits."""
    return row_blocks(query, key_len, STATS_BLOCK_BYTES)


def workbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function registered as ``"workbench"``; see the module docstring."""
    inputs = INPUTS.get()
    if inputs is not None:
        query, key, value = inputs(module, query, key, value, attention_mask, scaling, kwargs)
    trace = ACTIVE.get()
    fp32 = trace.model.family.eager_softmax_fp32 if trace is not None else True
    call = read_call(module, query, scaling, dropout, kwargs, fp32, traced=trace is not None)
    if trace is not None and trace.fuses(module, query, key):     # Stats(attn_output="fused"): no SDPA
        return trace.on_attention(module, query, key, value, attention_mask, call, None), None
    passed = {k: v for k, v in kwargs.items() if k != "output_attentions"}
    if any(kwargs.get(k) is not None for k in EAGER_ONLY):
        mask = attention_mask
        if mask is not None and mask.dtype == torch.bool:          # eager adds its mask: 0 / dtype min
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(query.dtype).min)
        out, _ = _hf_eager(module)(module, query, key, value, mask, dropout=dropout, scaling=scaling, **passed)
    else:
        passed.pop("sliding_window", None)          # in the mask already; SDPA takes no such keyword
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                        **passed)
    if trace is None:
        return out, None
    return trace.on_attention(module, query, key, value, attention_mask, call, out), None


def _hf_eager(module):
    """The HF ``eager_attention_forward`` of the module's own modeling file."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise UnsupportedAttentionError(f"{type(module).__name__} needs eager attention (softcap or sink logits) but "
                                        "its modeling module has no eager_attention_forward")
    return fn


def register() -> None:
    """Register the ``"workbench"`` attention and mask functions (idempotent)."""
    AttentionInterface.register(IMPL, workbench_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL, sdpa_mask)


register()
