"""All heads of one layer as small pattern thumbnails side by side (plain function, no Dash).

``layer_thumbnails(patterns [head, query, key])`` draws one small heatmap per head, max-pooled
to at most ``THUMB_BINS`` bins per axis, each on its own colour range (so a diffuse head is
not washed out beside a sharp one), ``log`` / ``skip_first`` as in ``fig_pattern``. Trace
``h`` is head ``h`` and carries ``customdata = h``, so a click names the head; the selected
head's title is marked.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._color import colour, describe, value_range
from .fig_pattern import pool

THUMB_BINS = 48
PER_ROW = 12


def layer_thumbnails(patterns: np.ndarray, *, selected: int | None = None, title: str = "",
                     log: bool = False, skip_first: bool = False, labels: list[str] | None = None
                     ) -> go.Figure:
    """One thumbnail per head of ``patterns [head, query, key]``; ``labels`` (one per head)
    are the subplot titles (default ``H<h>``).

    Raises:
        ValueError: ``patterns`` is not 3-D.
    """
    if patterns.ndim != 3:
        raise ValueError(f"patterns must be [head, query, key]; got shape {patterns.shape}")
    n = patterns.shape[0]
    cols = min(n, PER_ROW)
    rows = math.ceil(n / cols)
    names = labels or [f"H{h}" for h in range(n)]
    names = [f"<b>▶ {t}</b>" if h == selected else t for h, t in enumerate(names)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.012,
                        vertical_spacing=0.08 if rows > 1 else 0.0)
    for h in range(n):
        z, _ = pool(patterns[h], THUMB_BINS, 0)
        z, _ = pool(z, THUMB_BINS, 1)
        zc, axis = colour(z, value_range(patterns[h], skip_first), log)
        fig.add_trace(go.Heatmap(
            z=zc, colorscale=axis["colorscale"], zmin=axis["cmin"], zmax=axis["cmax"], showscale=False,
            customdata=np.full(z.shape, h), name=f"head {h}",
            hovertemplate=f"head {h}<br>click to open<extra></extra>"), row=h // cols + 1, col=h % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    if selected is not None and 0 <= selected < n:
        r, c = selected // cols + 1, selected % cols + 1
        fig.add_shape(type="rect", xref="x domain", yref="y domain", x0=-0.04, x1=1.04, y0=-0.04, y1=1.04,
                      line={"color": "#d62728", "width": 3}, row=r, col=c)
    fig.update_annotations(font_size=11)
    fig.update_layout(title={"text": f"{title}{describe(log, skip_first)}", "x": 0.01, "font": {"size": 14}},
                      height=60 + rows * 130, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      clickmode="event", showlegend=False)
    return fig


def clicked_thumb(click_data: dict | None) -> int | None:
    """The head of a clicked thumbnail (``customdata``); None when absent or malformed."""
    try:
        return int(click_data["points"][0]["customdata"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None
