"""A ranked list of the top heads for the metric a heatmap shows, each a link to its detail.

Ranking (``ranked``): signed quantities and magnitudes (patching effects, importance,
differences, direct logit attribution) by |value|, largest first; entropy columns by value,
smallest first (the most focused heads); other numeric columns by value, largest first. Heads
where the metric does not apply (NaN) are left out; string columns (classes) have no ranking.
The list's title says what it ranks by.

``top_pairs_panel``: the same for a sender x receiver heatmap (path patching, composition scores
of ``workbench circuit``): the top (sender, receiver) cells of one kind (q|k|v), each head a link.
"""
from __future__ import annotations

import pandas as pd
from dash import dcc, html

from ..schema import analysis_of
from ._patching_kv import is_kv, unit_link
from .metrics import MAGNITUDE, SIGNED, column_scale, definition, format_value, is_numeric, label
from .view import href

TOP = 10
SIGNED_ANALYSES = ("dla",)      # signed by definition, whatever signs a run's values have (Elhage et al. 2021)


def order(column: str, heads: pd.DataFrame, meta: dict | None = None) -> str:
    """How ``column`` is ranked: ``"|value|"``, ``"lowest"`` or ``"highest"``."""
    if analysis_of(column) in SIGNED_ANALYSES or column_scale(column, heads, meta) in (SIGNED, MAGNITUDE):
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
    how = order(column, heads, meta)
    head = html.Div([html.B(f"Top {len(top)} {'KV heads' if is_kv(meta) else 'heads'} by "
                            f"{how if how == '|value|' else how + ' value'}"), html.Br(),
                     html.Span(label(column), className="sub", title=definition(column))])
    if top.empty:
        return html.Div([head, html.P("no numeric values to rank", className="sub")], id=cid, className="top-heads")
    items = [html.Li([dcc.Link(*unit_link(run_name, meta, s, int(l), int(h))),
                      html.Span(f"  {format_value(v)}", className="num")])
             for s, l, h, v in top[["stream", "layer", "head", column]].itertuples(index=False)]
    return html.Div([head, html.Ol(items)], id=cid, className="top-heads")


def ranked_pairs(table: pd.DataFrame, value: str, kind: str, by_abs: bool, k: int = TOP) -> pd.Series:
    """The ``k`` top (sender, receiver) cells of ``kind``: ``value`` averaged per cell (as the heatmap
    shows it), largest |value| first when ``by_abs``, else largest value; NaN cells left out."""
    cells = table[table["kind"] == kind].groupby(["sender", "receiver"])[value].mean().dropna()
    key = cells.abs() if by_abs else cells
    return cells.loc[key.sort_values(ascending=False, kind="stable").index[:k]]


def _head_link(run_name: str, name: str):
    """A link to Head detail for a ``stream/layer/head`` name; other components as text."""
    parts = str(name).split("/")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return dcc.Link(name, href=href("/detail", run=run_name, stream=parts[0], layer=int(parts[1]),
                                        head=int(parts[2])))
    return html.Span(str(name))


def top_pairs_panel(run_name: str, table: pd.DataFrame, value: str, kind: str, cid: str, *, by_abs: bool,
                    what: str, k: int = TOP) -> html.Div:
    """A card for a sender x receiver heatmap: the top ``k`` pairs of ``kind`` by ``ranked_pairs``,
    ``sender → receiver  value``, each head a link to its detail; the title says what it ranks by
    (``what`` names ``value``)."""
    top = ranked_pairs(table, value, kind, by_abs, k)
    head = html.Div([html.B(f"Top {len(top)} sender → receiver pairs via {kind}, by "
                            f"{'|' + value + '|' if by_abs else 'highest ' + value}"), html.Br(),
                     html.Span(what, className="sub")])
    if top.empty:
        return html.Div([head, html.P("no values to rank", className="sub")], id=cid, className="top-heads")
    items = [html.Li([_head_link(run_name, s), " → ", _head_link(run_name, r),
                      html.Span(f"  {format_value(v)}", className="num")]) for (s, r), v in top.items()]
    return html.Div([head, html.Ol(items)], id=cid, className="top-heads")
