"""A ranked list of the top heads for the metric a heatmap shows, each a link to its detail.

Ranking (``ranked``): signed quantities and magnitudes (patching effects, importance,
differences) by |value|, largest first; entropy columns by value, smallest first (the most
focused heads); other numeric columns by value, largest first. Heads where the metric does
not apply (NaN) are left out; string columns (classes) have no ranking.
"""
from __future__ import annotations

import pandas as pd
from dash import dcc, html

from ._patching_kv import is_kv, unit_link
from .metrics import MAGNITUDE, SIGNED, column_scale, definition, format_value, is_numeric, label

TOP = 10


def order(column: str, heads: pd.DataFrame, meta: dict | None = None) -> str:
    """How ``column`` is ranked: ``"|value|"``, ``"lowest"`` or ``"highest"``."""
    if column_scale(column, heads, meta) in (SIGNED, MAGNITUDE):
        return "|value|"
    return "lowest" if "entropy" in column else "highest"


def ranked(heads: pd.DataFrame, column: str, meta: dict | None = None, k: int = TOP) -> pd.DataFrame:
    """The ``k`` top rows of ``heads`` (``stream, layer, head, column``) by ``order``."""
    if column not in heads.columns or not is_numeric(heads[column]):
        return heads.iloc[:0][["stream", "layer", "head"]]
    rows = heads[["stream", "layer", "head", column]].dropna(subset=[column])
    how = order(column, heads, meta)
    key = rows[column].astype(float)
    key = key.abs() if how == "|value|" else key
    return rows.loc[key.sort_values(ascending=how == "lowest", kind="stable").index[:k]]


def top_heads_panel(run_name: str, heads: pd.DataFrame, column: str, meta: dict | None, cid: str,
                    k: int = TOP) -> html.Div:
    """A card: title (with the metric's definition as tooltip) and the ranked heads as links
    to ``/detail``; says so when the column cannot be ranked. Rows of a k/v patch run are KV heads,
    each named with its query heads and linking to the first (``_patching_kv``)."""
    top = ranked(heads, column, meta, k)
    head = html.Div([html.B(f"Top {len(top)} {'KV heads' if is_kv(meta) else 'heads'}"), html.Br(),
                     html.Span(f"{label(column)} ({order(column, heads, meta)})", className="sub",
                               title=definition(column))])
    if top.empty:
        return html.Div([head, html.P("no numeric values to rank", className="sub")], id=cid, className="top-heads")
    items = [html.Li([dcc.Link(*unit_link(run_name, meta, s, int(l), int(h))),
                      html.Span(f"  {format_value(v)}", className="num")])
             for s, l, h, v in top[["stream", "layer", "head", column]].itertuples(index=False)]
    return html.Div([head, html.Ol(items)], id=cid, className="top-heads")
