"""Hidden attention sinks: sinks at positions after the first token.

Definition (ACT, Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks:
Training-Free Attention Calibration for Enhancing Large Language Models"; ../shared/METHODS.md):
a position k > 0 is a (hidden) sink of a head on an input if its column mean exceeds
``threshold`` = 0.1. The column mean is Gu et al.'s alpha_k = mean of A_tk over the queries
t that may see k (``sinks.alpha``), so for a causal model late keys are averaged over
fewer queries.

Choices made here: keys seen by fewer than ``min_queries`` (4) valid queries are not
eligible (the last key of a causal input is "seen" by one query, whose self-attention
alone would make it a sink); padding and, for Whisper, frames without audio are excluded;
bidirectional stacks use the plain column mean. Per head: ``hidden_sinks.n_per_input``
(mean count of hidden-sink positions per input), ``hidden_sinks.frac_inputs`` (inputs with
at least one), ``hidden_sinks.max_alpha`` (mean over inputs of the largest alpha_k, k > 0),
``hidden_sinks.top_token`` (the token most often found as a hidden sink: *which* token
they are) and ``hidden_sinks.top_token_share``. The ``hidden_sinks`` table lists every
(input, stream, layer, head, position, token, alpha).
"""
from __future__ import annotations

from dataclasses import dataclass

from collections import Counter

import pandas as pd
import torch

from ._context import KEY_STREAM, Analysis, Context, Params, Result, param
from .sinks import alpha

THRESHOLD = 0.1


@dataclass(frozen=True)
class HiddenSinksParams(Params, analysis="hidden_sinks"):
    threshold: float = param(THRESHOLD, lo=0, hi=1, lo_open=True, hi_open=True, doc="alpha_k above which key k > 0 is a sink")
    min_queries: int = param(4, lo=1, doc="queries that must see a key for it to count")


def hidden_sink_positions(stats: dict, query_mask: dict, *, threshold: float = THRESHOLD,
                          min_queries: int = 4) -> dict:
    """{(stream, layer): bool [batch, head, key_pos]} marking hidden sinks (k > 0, alpha_k > threshold)."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    out = {}
    for (stream, layer), st in sorted(stats.items()):
        a, count = alpha(st, query_mask.get(KEY_STREAM[stream]))
        ok = (count >= min_queries)[:, None, :]
        hit = torch.nan_to_num(a, nan=0.0) > threshold
        hit = hit & ok
        hit[:, :, 0] = False
        out[(stream, layer)] = hit
    return out


def hidden_sinks_table(stats: dict, query_mask: dict, tokens: list[dict] | None = None, *,
                       threshold: float = THRESHOLD, min_queries: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-head table and per-sink table (see module docstring) from ``Trace.stats``."""
    hits = hidden_sink_positions(stats, query_mask, threshold=threshold, min_queries=min_queries)
    heads, sinks = [], []
    for (stream, layer), hit in hits.items():
        a, _ = alpha(stats[(stream, layer)], query_mask.get(KEY_STREAM[stream]))
        later = torch.nan_to_num(a[:, :, 1:], nan=0.0)
        b, nh, _ = hit.shape
        for h in range(nh):
            toks = Counter()
            for i in range(b):
                tk = (tokens[i].get(KEY_STREAM[stream]) if tokens else None) or []
                for p in torch.nonzero(hit[i, h]).flatten().tolist():
                    t = tk[p] if p < len(tk) else f"#{p}"
                    toks[t] += 1
                    sinks.append({"input": i, "stream": stream, "layer": layer, "head": h, "position": p,
                                  "token": t, "alpha": float(a[i, h, p])})
            n = hit[:, h].sum(-1).float()
            top, cnt = toks.most_common(1)[0] if toks else ("", 0)
            heads.append({
                "stream": stream, "layer": layer, "head": h,
                "hidden_sinks.n_per_input": n.mean().item(),
                "hidden_sinks.frac_inputs": (n > 0).float().mean().item(),
                "hidden_sinks.max_alpha": later[:, h].max(-1).values.mean().item() if later.shape[-1] else 0.0,
                "hidden_sinks.top_token": top,
                "hidden_sinks.top_token_share": cnt / max(1, sum(toks.values())),
            })
    cols = ["input", "stream", "layer", "head", "position", "token", "alpha"]
    return pd.DataFrame(heads), pd.DataFrame(sinks, columns=cols)


def _run(ctx: Context) -> Result:
    trace = ctx.stats_trace()
    p: HiddenSinksParams = ctx.params
    thr, mq = p.threshold, p.min_queries
    tokens = [it.get("tokens", {}) for it in ctx.batch.items]
    heads, sinks = hidden_sinks_table(trace.stats, trace.query_mask, tokens, threshold=thr, min_queries=mq)
    top_tokens = Counter(sinks["token"]).most_common(5) if len(sinks) else []
    summary = {
        "heads_with_hidden_sinks_percent": round(100.0 * float((heads["hidden_sinks.frac_inputs"] > 0.5).mean()), 2),
        "most_common_sink_tokens": [{"token": t, "count": c} for t, c in top_tokens],
        "threshold": thr, "min_queries": mq,
    }
    return Result(heads, tables={"hidden_sinks": sinks}, summary=summary)


ANALYSIS = Analysis("hidden_sinks", _run, params=HiddenSinksParams)
