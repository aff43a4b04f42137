"""Tooltip text for every metric column: what it is, its unit, its source.

``tooltip(column)`` = ``metrics.definition`` (what the analysis measures and the paper, from the
report's method notes) + the unit, read off the column name by the schema's conventions
(units are in the metric name: ``_nats``, ``_s``) or known per analysis; and says that
"n/a" means the metric does not apply to that head.
"""
from __future__ import annotations

from .metrics import definition

_SUFFIX_UNITS = (("_nats", "nats"), ("_norm", "fraction of its maximum (0..1)"), ("_s", "seconds"),
                 ("_frac", "fraction (0..1)"), ("_pct", "percent"))
_UNITS = {
    "sinks.alpha1": "fraction of attention (0..1)", "sinks.top_alpha": "fraction of attention (0..1)",
    "sinks.is_sink": "flag", "sinks.top_pos": "token position", "retrieval.score": "fraction of needle tokens (0..1)",
    "patch.effect": "metric units (e.g. logit difference)", "patch.effect_norm": "fraction of the clean-corrupt gap",
    "patch.rank": "rank (1 = largest |effect|)", "importance.michel": "gradient magnitude (L2-normalised per layer)",
    "dla.value": "logits (nats)",
}
_ANALYSIS_UNITS = {"taxonomy": "class", "patch": "metric units", "atp": "metric units", "prune": "metric units",
                   "alignment": "score (0..1)", "entropy": "nats"}


def unit(column: str) -> str:
    """The unit of a metric column ("" when unknown)."""
    if column in _UNITS:
        return _UNITS[column]
    for suffix, name in _SUFFIX_UNITS:
        if column.endswith(suffix):
            return name
    return _ANALYSIS_UNITS.get(column.split(".", 1)[0], "")


def tooltip(column: str) -> str:
    """Definition, unit and source of ``column``; "n/a" in a table means it does not apply."""
    u = unit(column)
    return (definition(column) + (f". Unit: {u}." if u else ".")
            + " n/a: the metric does not apply to this head.")
