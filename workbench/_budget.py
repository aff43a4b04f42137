"""Checks on prepared inputs before tracing: the model's context length and the memory that
saved attention patterns will take.

``context_limit(model)`` is the longest input (tokens) a text model takes: its config's
``max_position_embeddings`` (GPT-2's ``n_positions`` maps to it), or None when the config
states none. ``pattern_bytes(model, batch, n)`` estimates the bytes that keeping the
patterns of the first ``n`` inputs takes: the float32 capture of those inputs at every
site ([input, head, query, key], padded to the batch's length T) plus the float16 copies
cropped to real tokens that are saved, i.e. sum over sites of
``heads x (4 n Tq_pad Tk_pad + 2 sum_i Tq_i Tk_i)``. Patterns an analysis captures itself
(rollout, flow) are not counted.
"""
from __future__ import annotations

from .errors import user_error

GIB = 1024 ** 3


def context_limit(model) -> int | None:
    """Maximum input length in tokens of a text model (None: not stated by its config)."""
    limit = getattr(model.hf.config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_context(model, lengths: list[int], *, truncate: bool) -> None:
    """UserError if an input is longer than the model's context (unless ``truncate``, in
    which case the caller has cut inputs to ``context_limit``)."""
    limit = context_limit(model)
    if limit is None or truncate:
        return
    over = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if over:
        i, n = max(over, key=lambda t: t[1])
        raise user_error("input {i} has {n} tokens but {model} takes at most {limit} (max_position_embeddings); "
                         "lower {max_tokens} to {limit} or pass {truncate} to cut inputs to the model's context",
                         i=i, n=n, model=model.name, limit=limit)


def pattern_bytes(model, batch, n: int) -> int:
    """Estimated bytes to capture and keep the patterns of the first ``n`` inputs (see above)."""
    from .analyses._context import KEY_STREAM

    n = min(n, len(batch))
    if n == 0:
        return 0
    total = 0
    for site in model.sites:
        qm, km = batch.query_mask[site.stream][:n], batch.query_mask[KEY_STREAM[site.stream]][:n]
        q, k = qm.sum(-1).tolist(), km.sum(-1).tolist()
        capture = 4 * n * qm.shape[-1] * km.shape[-1]          # the capture is padded (Whisper: 1500 frames)
        kept = 2 * sum(a * b for a, b in zip(q, k))
        total += site.n_heads * (capture + kept)
    return int(total)


def check_pattern_budget(model, batch, n: int, max_gib: float) -> int:
    """The estimate of ``pattern_bytes``; UserError naming it and the way out when above ``max_gib``."""
    need = pattern_bytes(model, batch, n)
    if need > max_gib * GIB:
        raise user_error("keeping the attention patterns of {n} input(s) would take about {need:.1f} GiB, over the "
                         "{max_save_gib} limit of {max_gib:g} GiB; lower {save_patterns} (0 keeps none) or "
                         "{max_tokens}, or raise {max_save_gib}", n=min(n, len(batch)), need=need / GIB, max_gib=max_gib)
    return need


__all__ = ["check_context", "check_pattern_budget", "context_limit", "pattern_bytes"]
