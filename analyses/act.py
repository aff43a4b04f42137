"""ACT-style attention calibration of hidden sinks, as a measured intervention.

Source: Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks: Training-Free
Attention Calibration for Enhancing Large Language Models" (ACT); ../shared/METHODS.md.
For the calibrated heads, on each input, sink columns S = {k > 0 : column mean alpha_k >
0.1} get A'_tk = beta A_tk (beta = 0.4) and the removed mass (1 - beta) sum_{k in S} A_tk
is given to the row's other keys in proportion to their weights, so rows still sum to 1.

Choices made here: the first token is never calibrated (ACT keeps the first-token sink);
S is found online from the head's own pattern on the input being run (keys seen by at
least ``min_queries`` = 4 queries; ``hidden_sinks``' rule), applied with ``EditPattern``;
inputs run one at a time (no padding), so alpha_k's query count is exact. Head sets: the
heads with a hidden sink on most inputs (``hidden_sinks.frac_inputs`` > 0.5), split into
early / middle / late thirds of the layers, and all of them. Metric: mean next-token
cross-entropy (nats) on the run's natural-text batch, base vs calibrated; a negative
change is an improvement. Causal LMs only (the metric needs an LM head).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench._types import Head
from workbench.capture import EditPattern

from ._context import Analysis, Context, Params, Result, param
from .hidden_sinks import hidden_sinks_table
from .kv_plan import lm_loss

BETA = 0.4
THRESHOLD = 0.1


@dataclass(frozen=True)
class ActParams(Params, analysis="act"):
    beta: float = param(BETA, lo=0, hi=1, doc="factor applied to the sink columns' attention")


def applies(model) -> str | None:
    if model.kind != "causal":
        return f"ACT calibration is measured by LM loss; {model.name} is a {model.kind} model with no LM head"
    return None


def calibrate_fn(beta: float = BETA, threshold: float = THRESHOLD, min_queries: int = 4, causal: bool = True):
    """``EditPattern`` function implementing ACT on the sink columns found in the pattern itself."""
    def fn(a: torch.Tensor, offset: int) -> torch.Tensor:
        tq, tk = a.shape[-2:]
        q = torch.arange(tq, device=a.device)[:, None] + offset
        seen = (torch.arange(tk, device=a.device)[None, :] <= q) if causal else torch.ones(tq, tk, dtype=torch.bool, device=a.device)
        count = seen.sum(0).float()                                       # [k]
        alpha = a.sum(-2) / count.clamp_min(1)                            # [b, k]
        sink = (alpha > threshold) & (count >= min_queries)
        sink[:, 0] = False
        s = sink[:, None, :].float()
        m = (a * s).sum(-1, keepdim=True)                                 # sink mass per row
        scale_rest = torch.where(m < 1 - 1e-6, (1 - beta * m) / (1 - m).clamp_min(1e-6), torch.ones_like(m))
        return a * (s * beta + (1 - s) * scale_rest)
    return fn


def head_sets(table: pd.DataFrame, n_layers: int) -> dict[str, list[Head]]:
    sel = table[table["hidden_sinks.frac_inputs"] > 0.5]
    heads = [Head(r.stream, r.layer, r.head) for r in sel.itertuples()]
    third = max(1, n_layers // 3)
    return {"early": [h for h in heads if h.layer < third],
            "middle": [h for h in heads if third <= h.layer < 2 * third],
            "late": [h for h in heads if h.layer >= 2 * third], "all": heads}


def _run(ctx: Context) -> Result:
    model, batch, p = ctx.model, ctx.batch, ctx.params
    reason = applies(model)
    if reason:
        raise ValueError(reason)
    beta = p.beta
    trace = ctx.stats_trace()
    tokens = [it.get("tokens", {}) for it in batch.items]
    table, _ = hidden_sinks_table(trace.stats, trace.query_mask, tokens)
    n_layers = 1 + max(s.layer for s in model.sites)
    sets = head_sets(table, n_layers)
    singles = [batch.select([i]) for i in range(len(batch))]
    base = sum(lm_loss(model, b) for b in singles) / len(singles)
    rows = []
    for name, heads in sets.items():
        if not heads:
            rows.append({"set": name, "n_heads": 0, "loss_nats": base, "loss_change_nats": 0.0})
            continue
        edit = [EditPattern(tuple(heads), calibrate_fn(beta), f"act(beta={beta})")]
        loss = sum(lm_loss(model, b, edit) for b in singles) / len(singles)
        rows.append({"set": name, "n_heads": len(heads), "loss_nats": loss, "loss_change_nats": loss - base})
    out = pd.DataFrame(rows)
    member = {h: [n for n, hs in sets.items() if h in hs and n != "all"] for h in sets["all"]}
    table["act.calibrated_in"] = [",".join(member.get(Head(r.stream, r.layer, r.head), [])) for r in table.itertuples()]
    summary = {"beta": beta, "threshold": THRESHOLD, "loss_base_nats": base,
               "sets": {r["set"]: {"n_heads": r["n_heads"], "loss_change_nats": round(r["loss_change_nats"], 5)}
                        for r in rows}}
    return Result(table[["stream", "layer", "head", "act.calibrated_in"]], tables={"act": out}, summary=summary)


ANALYSIS = Analysis("act", _run, applies, params=ActParams)
