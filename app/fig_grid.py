"""Layer x head heatmaps, one panel per stream (plain functions; no Dash, no browser).

``head_grid_figure(heads, metric)`` colours each head by a metric column; string columns
(``taxonomy.class``) become categories. With ``compare`` (a second run's head table for the
same model) cells show ``run - compare`` (numeric) or whether the class changed. Each cell
carries ``customdata = stream`` so a click names the head: ``(stream, y=layer, x=head)``; the
cells of a k/v patch run carry their Head detail href instead (``_patching_kv.kv_heatmap``), and
``clicked_head`` reads the stream from it.

Colour scales follow what the column means (``metrics.column_scale``): signed quantities
(patching effects, differences between runs, any column with both signs) on a red-blue
scale centred on 0; magnitudes (AtP*, Michel importance) on a sequential scale from 0
whose colour bar says "magnitude"; other quantities on Viridis.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .metrics import (HEAD_KEYS, MAGNITUDE, SIGNED, column_scale, format_value, is_numeric,
                      label, numeric_columns)
from .run import STREAM_ORDER

MAX_HOVER_EXTRAS = 6


def _streams(heads: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(heads["stream"]))
    return [s for s in STREAM_ORDER if s in present] + [s for s in present if s not in STREAM_ORDER]


def _matrix(rows: pd.DataFrame, column: str, n_layers: int, n_heads: int, fill) -> np.ndarray:
    z = np.full((n_layers, n_heads), fill, dtype=object)
    for layer, head, v in zip(rows["layer"], rows["head"], rows[column]):
        z[int(layer), int(head)] = v
    return z


def _codes(values: np.ndarray, categories: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(categories)}
    out = np.full(values.shape, np.nan)
    for ij, v in np.ndenumerate(values):
        if v is not None and v == v and str(v) in index:
            out[ij] = index[str(v)]
    return out


def _discrete_scale(n: int) -> list:
    """Stepped colour scale so each integer code 0..n-1 gets one flat colour."""
    palette = qualitative.D3 + qualitative.Set3
    if n <= 1:
        return [[0, palette[0]], [1, palette[0]]]
    scale = []
    for i in range(n):
        scale += [[i / n, palette[i % len(palette)]], [(i + 1) / n, palette[i % len(palette)]]]
    return scale


def _hover(rows: pd.DataFrame, metric: str, n_layers: int, n_heads: int, stream: str,
           other: pd.DataFrame | None) -> np.ndarray:
    extras = [c for c in numeric_columns(rows) if c != metric][:MAX_HOVER_EXTRAS]
    text = np.full((n_layers, n_heads), "", dtype=object)
    other_idx = other.set_index(["layer", "head"]) if other is not None else None
    for r in rows.to_dict("records"):
        lines = [f"<b>{stream} L{int(r['layer'])} H{int(r['head'])}</b>",
                 f"{label(metric)}: <b>{format_value(r[metric])}</b>"]
        if other_idx is not None and (r["layer"], r["head"]) in other_idx.index:
            theirs = other_idx.loc[(r["layer"], r["head"]), metric]
            lines.append(f"compare run: {format_value(theirs)}")
        lines += [f"{label(c)}: {format_value(r[c])}" for c in extras]
        text[int(r["layer"]), int(r["head"])] = "<br>".join(lines)
    return text


def head_grid_figure(heads: pd.DataFrame, metric: str, *, compare: pd.DataFrame | None = None,
                     selected: tuple[str, int, int] | None = None, title: str | None = None,
                     meta: dict | None = None, scale: str | None = None) -> go.Figure:
    """Heatmap per stream: rows = layers (0 on top), columns = heads.

    Args:
        heads: head table (``stream, layer, head`` + metric columns).
        metric: column to colour by.
        compare: another run's head table; cells show ``heads - compare``.
        selected: ``(stream, layer, head)`` outlined in black.
        meta: the run's ``meta.json`` (says which patch method filled ``patch.effect``).
        scale: ``"signed"``, ``"magnitude"`` or ``"plain"``; default
            ``metrics.column_scale(metric, heads, meta)``.

    Raises:
        ValueError: ``metric`` is not a column, or ``compare`` lacks it.
    """
    if metric not in heads.columns or metric in HEAD_KEYS:
        raise ValueError(f"metric {metric!r} is not a column of the head table; "
                         f"choose one of {[c for c in heads.columns if c not in HEAD_KEYS]}")
    if compare is not None and metric not in compare.columns:
        raise ValueError(f"the compared run has no column {metric!r}")
    numeric = is_numeric(heads[metric])
    categories = [] if numeric else sorted({str(v) for v in heads[metric].dropna()})
    streams = _streams(heads)
    fig = make_subplots(rows=1, cols=len(streams), subplot_titles=streams,
                        horizontal_spacing=0.05 if len(streams) > 1 else 0.0)
    max_layers = 1
    for col, stream in enumerate(streams, start=1):
        rows = heads[heads["stream"] == stream]
        n_layers, n_heads = int(rows["layer"].max()) + 1, int(rows["head"].max()) + 1
        max_layers = max(max_layers, n_layers)
        a = _matrix(rows, metric, n_layers, n_heads, np.nan)
        other = compare[compare["stream"] == stream] if compare is not None else None
        if numeric:
            z = a.astype(float)
            if other is not None:
                z = z - _matrix(other, metric, n_layers, n_heads, np.nan).astype(float)
        else:
            z = _codes(a, categories)
            if other is not None:
                z = (_codes(_matrix(other, metric, n_layers, n_heads, None), categories) != z)
                z = z.astype(float)
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(n_heads)), y=list(range(n_layers)), coloraxis="coloraxis",
            text=_hover(rows, metric, n_layers, n_heads, stream, other),
            hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1,
            customdata=np.full((n_layers, n_heads), stream, dtype=object), name=stream,
        ), row=1, col=col)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=col)
        fig.update_yaxes(autorange="reversed", dtick=1 if n_layers <= 12 else 2, row=1, col=col,
                         title_text="layer" if col == 1 else None)
        if selected and selected[0] == stream:
            fig.add_shape(type="rect", x0=selected[2] - 0.5, x1=selected[2] + 0.5,
                          y0=selected[1] - 0.5, y1=selected[1] + 0.5,
                          line={"color": "black", "width": 3}, row=1, col=col)
    scale = "diff" if compare is not None else (scale or column_scale(metric, heads, meta))
    fig.update_layout(coloraxis=_coloraxis(numeric, scale, categories, metric),
                      height=max(320, 22 * max_layers + 130), margin={"l": 50, "r": 20, "t": 60,
                      "b": 40}, title={"text": title or label(metric), "x": 0.01},
                      clickmode="event")
    return fig


def _coloraxis(numeric: bool, scale: str, categories: list[str], metric: str) -> dict:
    unit = label(metric).split(": ")[-1]
    if numeric and scale == "diff":
        return {"colorscale": "RdBu_r", "cmid": 0, "colorbar": {"title": "Δ (this − compared)"}}
    if numeric and scale == SIGNED:
        return {"colorscale": "RdBu_r", "cmid": 0, "colorbar": {"title": f"{unit}<br>(signed)"}}
    if numeric and scale == MAGNITUDE:
        return {"colorscale": "Purples", "cmin": 0,
                "colorbar": {"title": f"{unit}<br>(magnitude,<br>unsigned)"}}
    if numeric:
        return {"colorscale": "Viridis", "colorbar": {"title": unit}}
    if scale == "diff":
        return {"colorscale": [[0, "#eeeeee"], [0.5, "#eeeeee"], [0.5, "#d62728"], [1, "#d62728"]],
                "cmin": 0, "cmax": 1, "colorbar": {"tickvals": [0.25, 0.75],
                                                    "ticktext": ["same", "changed"]}}
    n = max(len(categories), 1)
    return {"colorscale": _discrete_scale(n), "cmin": -0.5, "cmax": n - 0.5,
            "colorbar": {"tickvals": list(range(n)), "ticktext": categories}}


def clicked_head(click_data: dict | None) -> tuple[str, int, int] | None:
    """``(stream, layer, head)`` from a heatmap ``clickData``; None when absent or malformed. A cell
    whose customdata is a ``/detail?...`` href (a k/v run's KV head) names its stream in the href's
    ``stream``; ``head`` is then the KV head (the cell's x)."""
    try:
        point = click_data["points"][0]
        stream = str(point["customdata"])
        if stream.startswith("/"):
            stream = parse_qs(urlsplit(stream).query)["stream"][0]
        return stream, int(point["y"]), int(point["x"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None
