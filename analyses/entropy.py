"""Attention entropy per head.

Definition (../shared/METHODS.md; Zhai et al. 2023, "Stabilizing Transformer Training by
Preventing Attention Entropy Collapse"; Jha & Reagen, "Entropy-Guided Attention for Private
LLMs"; Michel et al. 2019 / HF bertology compute the same per-row entropy):

    H_i = -sum_{j in K(i)} A_ij ln A_ij   (nats, 0 ln 0 := 0)
    normalised: H_i / ln n_i,  n_i = |K(i)| (causal: i, 1-indexed; padding: unmasked keys)

Choices the sources leave open, made here: rows with n_i = 1 are skipped (both columns);
padding queries are skipped; for the Whisper encoder only query frames holding real audio
are used, and their entropy is over the whole 1500-frame row the model actually attends
over (n_i = 1500). Head entropy = mean over an input's valid rows, then mean over inputs
(each input weighs the same).
"""
from __future__ import annotations


import pandas as pd
import torch

from ._context import Analysis, Context, Result


def entropy_table(stats: dict, query_mask: dict) -> pd.DataFrame:
    """Per-head entropy from ``Trace.stats`` ({(stream, layer): HeadStats}).

    Returns columns ``stream, layer, head, entropy.mean_nats, entropy.mean_norm,
    entropy.std_norm, entropy.n_rows`` (n_rows: valid query rows over all inputs).
    Raises ValueError when no site has a valid row (every input is one token long).
    """
    rows = []
    for (stream, layer), st in sorted(stats.items()):
        h = st.row_entropy.float()                              # [batch, head, q]
        n = st.n_keys.float()                                   # [batch, q]
        qm = query_mask.get(stream)
        valid = (n > 1) if qm is None else (n > 1) & qm[:, -n.shape[1]:]
        norm = h / torch.log(n.clamp_min(2))[:, None, :]
        w = valid[:, None, :].float()                           # [batch, 1, q]
        per_in = (h * w).sum(-1) / w.sum(-1).clamp_min(1)       # [batch, head]
        per_in_n = (norm * w).sum(-1) / w.sum(-1).clamp_min(1)
        has = valid.any(-1)                                     # inputs with a valid row
        if not has.any():
            continue
        for hd in range(h.shape[1]):
            vals = norm[:, hd][valid]
            rows.append({
                "stream": stream, "layer": layer, "head": hd,
                "entropy.mean_nats": per_in[has, hd].mean().item(),
                "entropy.mean_norm": per_in_n[has, hd].mean().item(),
                "entropy.std_norm": vals.std().item() if vals.numel() > 1 else 0.0,
                "entropy.n_rows": int(valid.sum()),
            })
    if not rows:
        raise ValueError("no query row sees more than one key: entropy needs inputs of 2+ tokens")
    return pd.DataFrame(rows)


def _run(ctx: Context) -> Result:
    trace = ctx.stats_trace()
    table = entropy_table(trace.stats, trace.query_mask)
    return Result(table, summary=entropy_summary(table))


def entropy_summary(table: pd.DataFrame) -> dict:
    """meta.json's summary of an entropy table: the 3 lowest and highest heads (normalised)."""
    return {"lowest": _extreme(table, ascending=True), "highest": _extreme(table, ascending=False)}


def _extreme(table: pd.DataFrame, ascending: bool, k: int = 3) -> list[dict]:
    t = table.sort_values("entropy.mean_norm", ascending=ascending).head(k)
    return [{"head": f"{r['stream']}/{r['layer']}/{r['head']}", "mean_norm": round(r["entropy.mean_norm"], 4),
             "mean_nats": round(r["entropy.mean_nats"], 4)} for _, r in t.iterrows()]


ANALYSIS = Analysis("entropy", _run)
