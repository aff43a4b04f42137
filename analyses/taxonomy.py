"""Head taxonomy: one type per head from measured scores, thresholds in one place.

Types and the score behind each (first match in this order wins; every score is also a
column, so a head that is both a sink and local is visible):

1. ``retrieval``: retrieval score > 0.1 (Wu et al. 2024; ``retrieval``, quick NIAH grid;
   causal LMs only).
2. ``induction``: induction score > 0.4 (Olsson et al. 2022, "In-context Learning and
   Induction Heads"): on R random tokens repeated twice, mean attention from each query
   in the second copy to the token right after the same token's first occurrence
   (position i - R + 1); causal stacks only.
3. ``local``: previous-token score > 0.4 (mean A_{i,i-1} over queries i >= 1) or local mass
   > 0.5 (mean over queries of sum_{1 <= |k-q| <= 2} A_qk: neighbours, not the diagonal).
4. ``sink``: first-token alpha_1 > 0.3 (Gu et al. 2024; ``sinks``).
5. ``global``: normalised row entropy > 0.8 (``entropy``; 1 = uniform).
6. ``other``.

Inputs: the run's batch (natural text or audio) for sink, local and entropy scores; the
induction sequences are built here (R = 32 random non-special tokens, seed 0, 4 sequences).
Cross-attention heads get sink and entropy scores only (query tokens and key frames share
no position axis). ``THRESHOLDS`` is recorded in the summary (meta.json).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.capture import Pattern, Stats

from ._context import Analysis, Context, Params, Result, param
from .entropy import entropy_table
from .sinks import sinks_table

THRESHOLDS = {"retrieval": 0.1, "induction": 0.4, "prev_token": 0.4, "local_mass": 0.5, "sink_alpha1": 0.3,
              "global_entropy": 0.8}
ORDER = ("retrieval", "induction", "local", "sink", "global", "other")


@dataclass(frozen=True)
class TaxonomyParams(Params, analysis="taxonomy"):
    retrieval_grid: str | None = param("quick", choices=("quick", "default", "none"),
                                       doc="NIAH grid for retrieval scores (causal LMs); None: skip")


def position_scores(pattern: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous-token score, local mass) per head from one input's pattern [head, Q, K], cropped to n."""
    a = pattern[:, :n, :n].double()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    prev = torch.diagonal(a, offset=-1, dim1=-2, dim2=-1).mean(-1) if n > 1 else torch.zeros(a.shape[0], device=a.device)
    off = (torch.arange(n, device=a.device)[None, :] - torch.arange(n, device=a.device)[:, None]).abs()
    local = (a * ((off >= 1) & (off <= 2))).sum(-1).mean(-1)
    return prev, local


def induction_scores(model, rep: int = 32, n_seq: int = 4, seed: int = 0) -> dict:
    """{(stream, layer): [head]} induction score on random tokens repeated twice (causal only)."""
    from workbench.inputs import random_token_ids

    ids = [s + s for s in random_token_ids(model.tokenizer, n_seq, rep, seed=seed)]
    bos = getattr(model.tokenizer, "bos_token_id", None)
    lead = 1 if bos is not None and model.tokenizer("a")["input_ids"][:1] == [bos] else 0
    ids = [[bos] * lead + s for s in ids]
    trace = model.run(model.prepare(token_ids=ids), capture=[Pattern("self")])
    out = {}
    q = torch.arange(lead + rep, lead + 2 * rep)
    for key, p in trace.pattern.items():
        out[key] = p[:, :, q, q - rep + 1].mean((0, 2))
    return out


def scores_table(model, batch, max_inputs: int = 8) -> pd.DataFrame:
    """Measured scores per head (see module docstring); NaN where a score does not apply."""
    from ._context import KEY_STREAM

    stats = model.run(batch, capture=[Stats()])
    tokens = [it.get("tokens", {}) for it in batch.items]
    sk = sinks_table(stats.stats, stats.query_mask, tokens)
    en = entropy_table(stats.stats, stats.query_mask)
    tab = sk[["stream", "layer", "head", "sinks.alpha1"]].merge(
        en[["stream", "layer", "head", "entropy.mean_norm"]], on=["stream", "layer", "head"], how="left")
    pos_streams = sorted({s.stream for s in model.sites if s.stream != "cross"})
    acc: dict = {}
    for i in range(min(max_inputs, len(batch))):
        tr = model.run(batch.select([i]), capture=[Pattern(pos_streams)])
        for (s, l), p in tr.pattern.items():
            qm = batch.query_mask.get(KEY_STREAM[s])
            n = int(qm[i].sum()) if qm is not None else p.shape[-1]
            prev, local = position_scores(p[0], n)
            acc.setdefault((s, l), []).append(torch.stack([prev, local]))
    rows = []
    for (s, l), v in acc.items():
        m = torch.stack(v).mean(0)
        for h in range(m.shape[1]):
            rows.append({"stream": s, "layer": l, "head": h, "prev_token": float(m[0, h]), "local_mass": float(m[1, h])})
    tab = tab.merge(pd.DataFrame(rows), on=["stream", "layer", "head"], how="left")
    tab["induction"] = np.nan
    if model.kind == "causal":
        for (s, l), v in induction_scores(model).items():
            sel = (tab["stream"] == s) & (tab["layer"] == l)
            tab.loc[sel, "induction"] = v.numpy()[tab.loc[sel, "head"].to_numpy()]
    return tab.rename(columns={"sinks.alpha1": "sink_alpha1", "entropy.mean_norm": "entropy_norm"})


def classify(row, th: dict = THRESHOLDS) -> str:
    gt = lambda k, t: (row.get(k) is not None and not pd.isna(row.get(k)) and row[k] > th[t])  # noqa: E731
    if gt("retrieval", "retrieval"):
        return "retrieval"
    if gt("induction", "induction"):
        return "induction"
    if gt("prev_token", "prev_token") or gt("local_mass", "local_mass"):
        return "local"
    if gt("sink_alpha1", "sink_alpha1"):
        return "sink"
    if gt("entropy_norm", "global_entropy"):
        return "global"
    return "other"


def taxonomy_table(model, batch, *, retrieval_grid: str | None = "quick", thresholds: dict = THRESHOLDS) -> pd.DataFrame:
    """Per-head scores and ``type`` (columns prefixed ``taxonomy.``)."""
    tab = scores_table(model, batch)
    tab["retrieval"] = np.nan
    if model.kind == "causal" and retrieval_grid not in (None, "none"):
        from . import retrieval as rmod

        g = rmod.GRIDS[retrieval_grid]
        prompts = rmod.grid_prompts(model, g["lengths"], g["depths"], g["needles"])
        _, totals, n_ok = rmod.run_niah(model, prompts)
        rt = rmod.retrieval_table(model, totals, n_ok)
        tab = tab.drop(columns="retrieval").merge(
            rt[["stream", "layer", "head", "retrieval.score"]].rename(columns={"retrieval.score": "retrieval"}),
            on=["stream", "layer", "head"], how="left")
    tab["type"] = [classify(r, thresholds) for r in tab.to_dict("records")]
    keys = ["stream", "layer", "head"]
    return tab.rename(columns={c: f"taxonomy.{c}" for c in tab.columns if c not in keys})


def _run(ctx: Context) -> Result:
    grid = ctx.params.retrieval_grid
    table = taxonomy_table(ctx.model, ctx.batch, retrieval_grid=grid)
    counts = table["taxonomy.type"].value_counts()
    summary = {"thresholds": THRESHOLDS, "order": list(ORDER), "retrieval_grid": grid,
               "counts": {t: int(counts.get(t, 0)) for t in ORDER}}
    return Result(table, summary=summary)


ANALYSIS = Analysis("taxonomy", _run, params=TaxonomyParams)
