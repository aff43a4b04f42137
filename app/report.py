"""The head-importance report (markdown), downloadable from the Export page.

For each importance-like column (``importance.*``, ``patch.*``, ``atp.*``, ``prune.*``) the
top heads by absolute value, with the columns a reader wants next to them (taxonomy class,
entropy, sink score). Without such columns it says so and ranks by the sink and retrieval
scores that every ``workbench run`` writes, so the report is never empty.
"""
from __future__ import annotations

import pandas as pd

from .metrics import effect_columns, format_value, heatmap_columns, label
from .run import Run

TAXONOMY = ("taxonomy.type", "taxonomy.class")   # analyses/taxonomy.py writes type; older runs class
CONTEXT = (*TAXONOMY, "entropy.mean_nats", "sinks.alpha1", "retrieval.score")
FALLBACK = ("sinks.alpha1", "retrieval.score", "entropy.mean_nats")


def _table(heads: pd.DataFrame, column: str, top: int, by_abs: bool) -> list[str]:
    values = heads[column].astype(float)
    key = values.abs() if by_abs else values
    order = key.sort_values(ascending=False, na_position="last").index[:top]
    extra = [c for c in CONTEXT if c in heads.columns and c != column]
    lines = ["| rank | head | " + " | ".join([label(column)] + [label(c) for c in extra]) + " |",
             "|---" * (3 + len(extra)) + "|"]
    for rank, i in enumerate(order, start=1):
        r = heads.loc[i]
        cells = [format_value(r[column])] + [format_value(r[c]) for c in extra]
        lines.append(f"| {rank} | {r['stream']}/{int(r['layer'])}/{int(r['head'])} | "
                     + " | ".join(cells) + " |")
    return lines


def importance_report(run: Run, top: int = 15) -> str:
    """Markdown report of the most important heads of ``run`` (``top`` per column)."""
    m = run.meta
    model = m.get("model", {})
    lines = [f"# Head-importance report: {run.name}", "",
             f"- model: {model.get('name')} ({model.get('source', '?')}, "
             f"{model.get('dtype', '?')})",
             f"- inputs: {m['inputs'].get('kind', '?')} / "
             f"{m['inputs'].get('prompt_set') or m['inputs'].get('task') or '?'} ({len(run.items)} items)"
             + (f": {m['inputs']['description']}" if m['inputs'].get('description') else ""),
             f"- analyses: {', '.join(sorted(m.get('analyses', {}))) or 'none'}",
             f"- created: {m.get('created', '?')}; seed: {m.get('seed', '?')}; "
             f"git commit: {m.get('git_commit', '?')}",
             f"- command: `{m.get('command', '?')}`"]
    patch = (m.get("analyses") or {}).get("patch")
    if isinstance(patch, dict) and patch.get("method"):
        metric = patch.get("metric") or {}
        lines.append(f"- patching: {patch['method']}, {patch.get('ablation', '?')} ablation, "
                     f"{patch.get('direction', '?')}; metric {metric.get('name', '?')}; clean "
                     f"{format_value(patch.get('clean_metric_mean'))}, corrupt "
                     f"{format_value(patch.get('corrupt_metric_mean'))}"
                     + "".join(f"; also {a['method']}" for a in patch.get("also", [])))
    lines.append("")
    heads = run.heads
    cols = heatmap_columns(heads)                 # effects and scores, not ranks or all-NaN columns
    if not cols:
        lines += ["No importance or patching columns in this run (run `workbench patch` or "
                  "`workbench prune` to add them); ranking by the analysis scores instead.", ""]
        cols = [c for c in FALLBACK if c in heads.columns]
    for c in cols:
        lines += [f"## Top {top} heads by {label(c)}", ""]
        lines += _table(heads, c, top, by_abs=c in effect_columns(heads))
        lines.append("")
    tax = next((c for c in TAXONOMY if c in heads.columns), None)
    if tax is not None:
        counts = heads.groupby(["stream", tax]).size().unstack(fill_value=0)
        lines += ["## Taxonomy classes per stream", "",
                  "| stream | " + " | ".join(map(str, counts.columns)) + " |",
                  "|---" * (1 + len(counts.columns)) + "|"]
        lines += [f"| {s} | " + " | ".join(str(int(v)) for v in row) + " |"
                  for s, row in counts.iterrows()]
        lines.append("")
    return "\n".join(lines)
