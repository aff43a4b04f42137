"""Attention sinks per head.

Definition (Gu et al. 2024, "When Attention Sink Emerges in Language Models"):

    alpha_k = 1/(T-k+1) * sum_{t>=k} A_tk

the mean attention key k receives from the queries that may see it (1-indexed k; here
positions are 0-indexed, so the first token is position 0). A head is a first-token sink
head on an input if alpha_first > epsilon (epsilon = 0.3 by default); the model's sink
rate is the percentage of (layer, head) pairs that are sink heads.

One definition of a sink head of a run (``sinks.is_sink``, and the sink rate is exactly the
mean of that column): the head is a sink on more than half of the inputs that have a
valid first key (``sinks.sink_frac`` > 0.5), the same majority rule as ``hidden_sinks``.
Gu et al.'s reference code (sail-sg/Attention-Sink, ``compute_attention_sink``) instead
averages the per-input indicator over inputs; that figure is the mean of
``sinks.sink_frac`` and equals the rate when every head is a sink on all or none of the
inputs (always, for a single input).

Choices made here: for bidirectional stacks (BERT, wav2vec2, Whisper encoder) the same
formula is the mean over every valid query (a column mean). Padding queries and keys are
excluded; Whisper encoder and cross-attention keys are cropped to frames holding real
audio. The strongest non-first sink (the hidden sinks of ACT, "Unveiling and Harnessing
Hidden Attention Sinks") is argmax_{k>0} alpha_k over keys seen by at least
``min_queries`` valid queries (the last keys of a causal input are seen by one or two
queries only, which makes alpha noisy there); its position is the most frequent argmax
over inputs and its score the mean over inputs of the maximum.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd
import torch

from workbench.errors import UserError

from ._context import KEY_STREAM, Analysis, Context, Params, Result, param

SINK_MAJORITY = 0.5      # a sink head of the run: a sink on more than this fraction of inputs


@dataclass(frozen=True)
class SinksParams(Params, analysis="sinks"):
    """``epsilon``: a head is a sink head when alpha_first > epsilon (Gu et al. 2024);
    ``min_queries``: keys seen by fewer valid queries are not candidates for the strongest
    non-first sink."""

    epsilon: float = param(0.3, lo=0, hi=1, lo_open=True, hi_open=True, doc="sink threshold on alpha_first")
    min_queries: int = param(4, lo=1, doc="queries that must see a key for it to be a later-sink candidate")


def alpha(stats, key_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-key sink scores of one site: alpha [batch, head, key_pos] (NaN where no valid
    query sees the key or the key is padding) and the query count [batch, key_pos]."""
    count = stats.col_count.float()
    a = stats.col_sum.float() / count[:, None, :].clamp_min(1)
    bad = count == 0
    if key_mask is not None:
        bad = bad | ~key_mask[:, : count.shape[1]]
    return a.masked_fill(bad[:, None, :], float("nan")), count


def sinks_table(stats: dict, query_mask: dict, tokens: list[dict] | None = None, *, epsilon: float = 0.3,
                min_queries: int = 4) -> pd.DataFrame:
    """Per-head sink table from ``Trace.stats``.

    Columns: ``sinks.alpha1`` (mean over inputs of alpha at the first position),
    ``sinks.sink_frac`` (fraction of inputs where alpha1 > epsilon, over the inputs whose
    first key is valid), ``sinks.is_sink`` (sink_frac > 0.5: a sink on most inputs; see the
    module docstring), ``sinks.top_pos``, ``sinks.top_alpha``, ``sinks.top_token``
    (strongest non-first sink; -1 / NaN / "" when no key qualifies).
    ``tokens``: per input, {stream: [token strings]} for ``top_token``.
    """
    if not 0 < epsilon < 1:
        raise UserError(f"epsilon must be in (0, 1), got {epsilon}")
    rows = []
    for (stream, layer), st in sorted(stats.items()):
        a, count = alpha(st, query_mask.get(KEY_STREAM[stream]))
        a1 = a[:, :, 0]                                            # [batch, head]
        later = a[:, :, 1:].masked_fill((count[:, None, 1:] < min_queries), float("nan"))
        top_val, top_idx = torch.nan_to_num(later, nan=-1.0).max(-1)   # [batch, head]
        for h in range(a.shape[1]):
            ok = top_val[:, h] >= 0
            pos, tok = -1, ""
            if ok.any():
                pos = Counter((top_idx[ok, h] + 1).tolist()).most_common(1)[0][0]
                first = int(torch.nonzero(ok & (top_idx[:, h] + 1 == pos))[0])
                toks = (tokens or [{}] * a.shape[0])[first].get(KEY_STREAM[stream]) if tokens else None
                tok = toks[pos] if toks and pos < len(toks) else ""
            valid = ~torch.isnan(a1[:, h])
            frac = ((a1[:, h] > epsilon) & valid).sum().item() / max(1, int(valid.sum()))
            rows.append({
                "stream": stream, "layer": layer, "head": h,
                "sinks.alpha1": torch.nanmean(a1[:, h]).item(),
                "sinks.sink_frac": frac,
                "sinks.is_sink": bool(frac > SINK_MAJORITY),
                "sinks.top_pos": int(pos),
                "sinks.top_alpha": top_val[ok, h].mean().item() if ok.any() else float("nan"),
                "sinks.top_token": tok,
            })
    return pd.DataFrame(rows)


def sink_rate(table: pd.DataFrame) -> dict[str, float]:
    """Model sink rate per stream: % of (layer, head) pairs that are sink heads, i.e.
    100 x the mean of ``sinks.is_sink`` (Gu et al. 2024's rate, with a head's status over
    the run's inputs decided by majority; see the module docstring)."""
    return {s: 100.0 * g["sinks.is_sink"].astype(float).mean() for s, g in table.groupby("stream")}


def _run(ctx: Context) -> Result:
    trace = ctx.stats_trace()
    p: SinksParams = ctx.params
    tokens = [it.get("tokens", {}) for it in ctx.batch.items]
    table = sinks_table(trace.stats, trace.query_mask, tokens, epsilon=p.epsilon, min_queries=p.min_queries)
    return Result(table, summary=sinks_summary(table, p))


def sinks_summary(table: pd.DataFrame, p: SinksParams) -> dict:
    """meta.json's summary of a sinks table: sink rates and the 3 strongest first-token sinks."""
    strongest = table.sort_values("sinks.alpha1", ascending=False).head(3)
    return {
        "sink_rate_percent": {k: round(v, 2) for k, v in sink_rate(table).items()},
        "sink_head_rule": f"alpha1 > {p.epsilon:g} on more than half of the inputs (sinks.is_sink)",
        # Gu et al.'s published figure: the per-input indicator averaged over inputs and heads
        "per_input_rate_percent": {s: round(100.0 * g["sinks.sink_frac"].mean(), 2)
                                   for s, g in table.groupby("stream")},
        "strongest": [{"head": f"{r['stream']}/{r['layer']}/{r['head']}", "alpha1": round(r["sinks.alpha1"], 4)}
                      for _, r in strongest.iterrows()],
    }


ANALYSIS = Analysis("sinks", _run, params=SinksParams)
