"""Token view (as in CircuitsVis' attention pattern "tokens" view): hover or click a token to
see what it attends to and what attends to it.

``token_view_figure(pattern [query, key], tokens)`` draws two rows of token cells, every
token labelled: "attends to" colours each key by the selected token's row (its attention
over earlier tokens), "attended by" colours each query by the selected token's column.
The figure is ``CELL_PX`` pixels per token wide and lives in a horizontally scrolling box,
so a long input keeps every label instead of thinning them. The pattern travels in the
figure (``layout.meta``, rounded to 4 decimals), and a clientside callback (``TOKEN_JS``)
recolours the rows on hover or click without a server round trip; a click pins the token
(hover then no longer moves it) until another click.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ._color import LOG_FLOOR, colour, value_range
from .fig_pattern import display_token

CELL_PX = 58
MAX_TOKENS = 512          # the pattern travels to the browser: at most 512 x 512 values
ROWS = ("attends to", "attended by")


def _rows(pattern: np.ndarray, i: int) -> np.ndarray:
    return np.stack([pattern[i], pattern[:, i]])


def token_view_figure(pattern: np.ndarray, tokens: list[str], *, selected: int | None = None,
                      title: str = "", log: bool = False, skip_first: bool = False) -> go.Figure:
    """Two rows of token cells for ``pattern [query, key]`` over the same ``tokens``
    (self-attention); ``selected`` (default: the last token) is outlined.

    Raises:
        ValueError: the pattern is not square over ``tokens``, or longer than ``MAX_TOKENS``.
    """
    n = len(tokens)
    if pattern.shape != (n, n):
        raise ValueError(f"token view needs a [query, key] pattern over the same {n} tokens; "
                         f"got shape {pattern.shape}")
    if n > MAX_TOKENS:
        raise ValueError(f"the token view shows inputs of at most {MAX_TOKENS} tokens; this one has {n}")
    i = n - 1 if selected is None or not 0 <= selected < n else int(selected)
    p = np.round(pattern.astype(np.float64), 4)
    top = value_range(pattern, skip_first)
    zc, axis = colour(_rows(p, i), top, log)
    labels = [display_token(t) for t in tokens]
    text = [labels, labels]
    fig = go.Figure(go.Heatmap(
        z=zc, x=list(range(n)), y=list(ROWS), text=text, texttemplate="%{text}", customdata=_rows(p, i),
        colorscale=axis["colorscale"], zmin=axis["cmin"], zmax=axis["cmax"], showscale=False, xgap=2, ygap=6,
        hovertemplate="%{x}: %{text}<br>%{y} selected: %{customdata:.4f}<extra></extra>"))
    fig.add_shape(type="rect", x0=i - 0.5, x1=i + 0.5, y0=-0.5, y1=1.5, line={"color": "#d62728", "width": 3})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-0.5, n - 0.5], fixedrange=True)
    fig.update_yaxes(autorange="reversed", showgrid=False, fixedrange=True)
    fig.update_layout(
        title={"text": _title(title, i, labels[i]), "x": 0.0, "xanchor": "left"},
        width=max(720, 140 + CELL_PX * n), height=210, margin={"l": 110, "r": 10, "t": 50, "b": 10},
        clickmode="event", hovermode="closest", dragmode=False,
        meta={"pattern": p.tolist(), "labels": labels, "selected": i, "pinned": False, "log": bool(log),
              "floor": LOG_FLOOR, "prefix": title})
    return fig


def _title(prefix: str, i: int, label: str) -> str:
    return f"{prefix}token {i} “{label}”: what it attends to (its row) and what attends to it (its column)"


# Clientside: (hoverData, clickData, figure) -> figure with the rows of the token under the
# pointer; a click pins / unpins the selection. Mirrors ``_rows`` and ``_color.colour``.
TOKEN_JS = """
function(hover, click, fig) {
    const ctx = dash_clientside.callback_context;
    if (!fig || !fig.layout || !fig.layout.meta || !fig.layout.meta.pattern) {
        return dash_clientside.no_update;
    }
    const trig = (ctx.triggered[0] || {}).prop_id || '';
    const m = fig.layout.meta;
    const ev = trig.endsWith('clickData') ? click : hover;
    if (!ev || !ev.points || !ev.points.length) { return dash_clientside.no_update; }
    const i = ev.points[0].x;
    if (trig.endsWith('clickData')) {
        m.pinned = !(m.pinned && m.selected === i);
    } else if (m.pinned || i === m.selected) {
        return dash_clientside.no_update;
    }
    const P = m.pattern;
    const row = P[i].slice();
    const col = P.map(r => r[i]);
    const tf = v => m.log ? Math.log10(Math.max(v, m.floor)) : v;
    const out = Object.assign({}, fig);
    out.data = fig.data.slice();
    out.data[0] = Object.assign({}, fig.data[0], {z: [row.map(tf), col.map(tf)], customdata: [row, col]});
    out.layout = Object.assign({}, fig.layout, {meta: Object.assign({}, m, {selected: i})});
    out.layout.shapes = [Object.assign({}, fig.layout.shapes[0], {x0: i - 0.5, x1: i + 0.5})];
    const pin = m.pinned ? ' (pinned: click again to release)' : '';
    out.layout.title = Object.assign({}, fig.layout.title, {text: (m.prefix || '') + 'token ' + i + ' \\u201c' +
        m.labels[i] + '\\u201d: what it attends to (its row) and what attends to it (its column)' + pin});
    return out;
}
"""
