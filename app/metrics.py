"""Which head-table columns are metrics, how to label them, and which one to show first.

Metric columns are every column except ``stream, layer, head``; their prefix before the
first dot names the analysis (``entropy.mean_nats`` -> analysis ``entropy``). Numeric and
boolean columns are drawn on a colour scale, string columns (``taxonomy.class``) as
categories.

Signed or magnitude (``column_scale``), decided per column from what wrote it:

- ``importance.michel`` / ``importance.michel_raw``: E_x|dM/dxi_h| (Michel et al. 2019,
  ``analyses/importance.py``), a magnitude.
- ``patch.effect`` and ``patch.effect_norm``: signed metric(patched) - metric(base) for
  ``exact``, ``naive`` and ``atp`` (Nanda 2023: a signed linear estimate), but a magnitude
  when the run's patch method is ``atp*`` (Kramár et al. 2024 eq. 11 averages |c_hat_l|;
  ``workbench/patching/atp.py``). The method comes from ``meta.json``
  (``analyses.patch.method``), else from the ``patch.method`` column.
- ``patch.effect_<method>`` (extra methods of one ``workbench patch``): a magnitude for
  ``atp_star``, signed otherwise; ``prune.patch_effect`` (zero ablation): signed.
- Any other numeric column is signed when it holds values of both signs.

Magnitudes get a sequential scale from 0 and say "magnitude"; signed quantities a
diverging scale centred on 0; the exact-vs-approximation scatter compares |signed| with a
magnitude.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from ..schema import HEAD_KEYS, analysis_of
from ..schema import metric_columns as _metric_columns

PREFERRED = ("entropy.mean_nats", "sinks.alpha1", "retrieval.score", "patch.effect",
             "importance.michel", "taxonomy.type", "taxonomy.class")
EFFECT_PREFIXES = ("patch", "atp", "importance", "prune")
MAGNITUDE_METHODS = ("atp*", "atp_star", "atp-star")
SIGNED, MAGNITUDE, PLAIN = "signed", "magnitude", "plain"
NOT_APPLICABLE = "n/a"


def metric_columns(heads: pd.DataFrame) -> list[str]:
    return _metric_columns(heads.columns)


def is_numeric(series: pd.Series) -> bool:
    return bool(ptypes.is_numeric_dtype(series) or ptypes.is_bool_dtype(series))


def numeric_columns(heads: pd.DataFrame) -> list[str]:
    return [c for c in metric_columns(heads) if is_numeric(heads[c])]


def label(column: str) -> str:
    """``"entropy.mean_nats"`` -> ``"entropy: mean nats"``."""
    if "." not in column:
        return column.replace("_", " ")
    analysis, rest = column.split(".", 1)
    return f"{analysis}: {rest.replace('_', ' ')}"


def default_metric(heads: pd.DataFrame) -> str | None:
    cols = metric_columns(heads)
    for c in PREFERRED:
        if c in cols:
            return c
    num = numeric_columns(heads)
    return num[0] if num else (cols[0] if cols else None)


def metric_options(heads: pd.DataFrame) -> list[dict]:
    """Dropdown options, preferred metrics first; ``title`` (the tooltip) says what the metric's
    analysis measures and where the definition comes from (``definition``)."""
    cols = metric_columns(heads)
    order = [c for c in PREFERRED if c in cols] + [c for c in cols if c not in PREFERRED]
    return [{"label": label(c), "value": c, "title": definition(c)} for c in order]


def definition(column: str) -> str:
    """One line for a metric column: what its analysis measures and the source (the method notes
    of ``workbench report``); the column name alone for an analysis without a note."""
    from .._report_content import NOTES

    note = NOTES.get(analysis_of(column))
    return f"{column}: {note[0]} ({note[1]})" if note else column


def effect_columns(heads: pd.DataFrame) -> list[str]:
    """Numeric columns from patching / attribution / importance analyses."""
    return [c for c in numeric_columns(heads) if analysis_of(c) in EFFECT_PREFIXES]


def heatmap_columns(heads: pd.DataFrame) -> list[str]:
    """Effect columns worth a layer x head heatmap or a scatter axis: not ranks or step
    numbers (orderings of the effects shown beside them), not all-NaN (e.g. effect_norm of
    a zero ablation, which has no clean-vs-corrupt gap)."""
    return [c for c in effect_columns(heads)
            if ".rank" not in c and ".step_" not in c and heads[c].notna().any()]


def patch_method(heads: pd.DataFrame, meta: dict | None) -> str | None:
    """The method that filled ``patch.effect``: ``meta.json``'s ``analyses.patch.method``,
    else the table's ``patch.method`` column; None when neither says."""
    method = (((meta or {}).get("analyses") or {}).get("patch") or {}).get("method")
    if isinstance(method, str):
        return method
    if "patch.method" in heads.columns and heads["patch.method"].notna().any():
        return str(heads["patch.method"].dropna().iloc[0])
    return None


def column_scale(column: str, heads: pd.DataFrame, meta: dict | None = None) -> str:
    """``"magnitude"`` (unsigned, >= 0), ``"signed"`` (diverging around 0) or ``"plain"``
    (any other numeric quantity) for a numeric head-table column; see the module notes."""
    analysis, _, rest = column.partition(".")
    if analysis == "importance":
        return MAGNITUDE
    if analysis == "patch" and rest in ("effect", "effect_norm"):
        return MAGNITUDE if patch_method(heads, meta) in MAGNITUDE_METHODS else SIGNED
    if analysis in EFFECT_PREFIXES and any(m in column.lower() for m in MAGNITUDE_METHODS):
        return MAGNITUDE
    if analysis in EFFECT_PREFIXES and "rank" not in rest and "step_" not in rest:
        return SIGNED
    values = pd.to_numeric(heads[column], errors="coerce") if column in heads.columns else None
    if values is not None and (values < 0).any() and (values > 0).any():
        return SIGNED
    return PLAIN


def exact_and_atp(heads: pd.DataFrame) -> tuple[str | None, str | None]:
    """Best guess of (exact patching column, attribution-patching column) for the scatter."""
    cols = heatmap_columns(heads)
    atp = next((c for c in cols if "atp" in c.lower()), None)
    exact = next((c for c in cols if c != atp and "exact" in c.lower()), None)
    if exact is None:
        exact = next((c for c in cols if c != atp and analysis_of(c) == "patch"), None)
    return exact, atp


def format_value(value) -> str:
    """Short text for a table cell: 4 significant digits for floats; NaN, None or pandas' NA
    (the metric does not apply to this head, e.g. retrieval on a cross-attention head, a class
    column left empty) is ``"n/a"``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return NOT_APPLICABLE
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return NOT_APPLICABLE if value != value else f"{float(value):.4g}"
    return str(value)
