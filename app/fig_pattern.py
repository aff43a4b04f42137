"""One head's attention pattern with row / column summaries and, for audio, the spectrogram.

``pattern_figure(pattern, q_axis, k_axis, mel=...)`` draws ``pattern [query, key]``:

- top: mean attention each key receives (column mean over queries);
- right: entropy of each query's row in nats;
- bottom (audio with a time key axis): the log-mel spectrogram on the same seconds axis.

Long axes (a 30 s Whisper clip has 1500 encoder frames) are max-pooled to at most
``MAX_BINS`` bins for display, so a sharp diagonal survives; summaries are computed at full
resolution and then averaged per bin. Token axes use numeric positions with token tick
labels, so repeated tokens ("the" twice) stay separate cells.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._color import colour, describe, value_range
from .run import MEL_FPS, Axis

MAX_BINS = 320
MAX_TICKS = 60
MAX_HOVER_CELLS = 40_000


def display_token(tok: str) -> str:
    """Make whitespace visible: leading space / 'Ġ' -> '␣', newline -> '⏎'."""
    tok = tok.replace("Ġ", " ").replace("Ċ", "\n")
    if tok.startswith(" "):
        tok = "␣" + tok[1:]
    return tok.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def pool(a: np.ndarray, max_bins: int, axis: int, how: str = "max") -> tuple[np.ndarray, int]:
    """Block-reduce ``a`` along ``axis`` so it has at most ``max_bins`` entries.

    Returns ``(pooled, factor)``; ``factor`` is 1 when nothing was pooled. The last block
    may be shorter (it is padded with NaN and reduced with nanmax / nanmean).
    """
    n = a.shape[axis]
    factor = max(1, math.ceil(n / max_bins))
    if factor == 1:
        return a, 1
    pad = (-n) % factor
    moved = np.moveaxis(a.astype(np.float32), axis, 0)
    if pad:
        moved = np.concatenate([moved, np.full((pad,) + moved.shape[1:], np.nan, np.float32)])
    blocks = moved.reshape((moved.shape[0] // factor, factor) + moved.shape[1:])
    out = np.nanmax(blocks, axis=1) if how == "max" else np.nanmean(blocks, axis=1)
    return np.moveaxis(out, 0, axis), factor


def row_entropy(pattern: np.ndarray) -> np.ndarray:
    """Entropy in nats of each query row of ``pattern [query, key]``."""
    p = np.clip(pattern.astype(np.float64), 0, None)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(np.where(p > 0, p * np.log(p), 0.0)).sum(-1)


def column_mean(pattern: np.ndarray) -> np.ndarray:
    """Mean attention each key receives, averaged over all queries ``[key]``."""
    return pattern.astype(np.float64).mean(0)


def _coords(axis: Axis, n: int, factor: int) -> np.ndarray:
    idx = np.arange(0, n, factor)
    return idx * axis.step_s if axis.kind == "seconds" else idx


def _ticks(axis: Axis, n: int, factor: int) -> dict:
    if axis.kind != "tokens" or not axis.labels:
        return {}
    idx = np.arange(0, n, factor)
    step = max(1, math.ceil(len(idx) / MAX_TICKS))
    labels = [display_token(axis.labels[i]) if i < len(axis.labels) else str(i) for i in idx]
    return {"tickmode": "array", "tickvals": [int(i) for i in idx[::step]],
            "ticktext": labels[::step]}


def _hover_text(q_axis: Axis, k_axis: Axis, q_idx: np.ndarray, k_idx: np.ndarray,
                z: np.ndarray, quantity: str = "attention") -> np.ndarray | None:
    if z.size > MAX_HOVER_CELLS or "tokens" not in (q_axis.kind, k_axis.kind):
        return None

    def name(axis: Axis, i: int) -> str:
        if axis.kind == "tokens" and axis.labels and i < len(axis.labels):
            return f"{i} {display_token(axis.labels[i])}"
        if axis.kind == "seconds":
            return f"{i * axis.step_s:.2f} s"
        return str(i)

    qs = [name(q_axis, int(i)) for i in q_idx]
    ks = [name(k_axis, int(i)) for i in k_idx]
    return np.array([[f"query {q}<br>key {k}<br>{quantity} {v:.4f}" for k, v in zip(ks, row)]
                     for q, row in zip(qs, z)], dtype=object)


def pattern_figure(pattern: np.ndarray, q_axis: Axis, k_axis: Axis, *,
                   mel: np.ndarray | None = None, title: str = "", log: bool = False,
                   skip_first: bool = False, quantity: str = "attention") -> go.Figure:
    """Attention pattern ``[query, key]`` with summaries; ``mel [mel bin, frame]`` at 100/s.

    ``log``: colour log10 of the values (``_color``); ``skip_first``: the colour range ends at
    the largest value over keys 1.. (a sink's first column saturates); ``quantity`` names
    the values in hovers and on the colour bar.

    Raises:
        ValueError: ``pattern`` is not 2-D, or token labels do not match its size.
    """
    if pattern.ndim != 2:
        raise ValueError(f"pattern must be [query, key]; got shape {pattern.shape}")
    for axis, n, which in ((q_axis, pattern.shape[0], "query"), (k_axis, pattern.shape[1], "key")):
        if axis.kind == "tokens" and axis.labels is not None and len(axis.labels) != n:
            raise ValueError(f"{which} axis has {len(axis.labels)} tokens but the pattern has "
                             f"{n} {which} positions")
    n_q, n_k = pattern.shape
    z, fq = pool(pattern, MAX_BINS, 0)
    z, fk = pool(z, MAX_BINS, 1)
    ent, _ = pool(row_entropy(pattern), MAX_BINS, 0, how="mean")
    col, _ = pool(column_mean(pattern), MAX_BINS, 0, how="mean")
    qc, kc = _coords(q_axis, n_q, fq), _coords(k_axis, n_k, fk)
    show_mel = mel is not None and k_axis.kind == "seconds"
    rows = 3 if show_mel else 2
    heights = [0.14, 0.6, 0.26] if show_mel else [0.16, 0.84]
    specs = [[{}, None], [{}, {}]] + ([[{}, None]] if show_mel else [])
    fig = make_subplots(rows=rows, cols=2, shared_xaxes=True, shared_yaxes=False,
                        row_heights=heights, column_widths=[0.86, 0.14], specs=specs,
                        horizontal_spacing=0.02, vertical_spacing=0.03)
    text = _hover_text(q_axis, k_axis, np.arange(0, n_q, fq), np.arange(0, n_k, fk), z, quantity)
    zc, axis = colour(z, value_range(pattern, skip_first), log, quantity)
    shown = f"log10 {quantity} %{{z:.2f}}" if log else f"{quantity} %{{z:.4f}}"
    fig.add_trace(go.Heatmap(
        z=zc, x=kc, y=qc, coloraxis="coloraxis", name="pattern", text=text,
        hovertemplate=("%{text}" if text is not None else
                       "query %{y}<br>key %{x}<br>" + shown) + "<extra></extra>",
    ), row=2, col=1)
    fig.add_trace(go.Bar(x=kc, y=col, name="mean attention received", marker_color="#1f77b4",
                         hovertemplate="key %{x}<br>mean received %{y:.4f}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Bar(y=qc, x=ent, orientation="h", name="row entropy (nats)",
                         marker_color="#ff7f0e",
                         hovertemplate="query %{y}<br>entropy %{x:.3f} nats<extra></extra>"),
                  row=2, col=2)
    fig.update_yaxes(autorange="reversed", title_text=q_axis.title, row=2, col=1,
                     **_ticks(q_axis, n_q, fq))
    fig.update_yaxes(autorange="reversed", matches=fig.data[0].yaxis, showticklabels=False,
                     row=2, col=2)
    fig.update_xaxes(title_text="entropy (nats)", row=2, col=2)
    fig.update_yaxes(title_text="received", row=1, col=1)
    fig.update_xaxes(**_ticks(k_axis, n_k, fk), row=2, col=1)
    if show_mel:
        m, fm = pool(mel, 2 * MAX_BINS, 1, how="mean")
        fig.add_trace(go.Heatmap(z=m, x=np.arange(0, mel.shape[1], fm) / MEL_FPS,
                                 y=np.arange(mel.shape[0]), coloraxis="coloraxis2",
                                 name="log-mel", hovertemplate="t %{x:.2f} s<br>mel bin %{y}"
                                 "<br>%{z:.2f}<extra></extra>"), row=3, col=1)
        fig.update_yaxes(title_text="mel bin", row=3, col=1)
        fig.update_xaxes(title_text="time (s)", row=3, col=1)
    else:
        fig.update_xaxes(title_text=k_axis.title, row=2, col=1)
    pooled = f" (max-pooled ×{fq} query, ×{fk} key for display)" if fq > 1 or fk > 1 else ""
    body = 500 if q_axis.kind == "seconds" else min(720, max(320, 18 * n_q))
    fig.update_layout(
        title={"text": f"{title}{pooled}{describe(log, skip_first)}", "x": 0.01}, showlegend=False,
        bargap=0.05 if len(kc) < 80 else 0.0,
        coloraxis={**axis, "colorbar": {**axis["colorbar"], "len": 0.5, "y": 0.5}},
        coloraxis2={"colorscale": "Magma", "showscale": False},
        height=int(body / heights[1]) + 40, margin={"l": 80, "r": 20, "t": 60, "b": 50},
    )
    return fig


def pattern_preview(pattern: np.ndarray, q_axis: Axis, k_axis: Axis, *, title: str = "",
                    max_labels: int = 24, log: bool = False, skip_first: bool = False) -> go.Figure:
    """A small heatmap of ``pattern [query, key]`` for side panels: no summaries, pooled to
    ``MAX_BINS // 2`` bins, token tick labels only when there are few; ``log`` and
    ``skip_first`` as in ``pattern_figure``."""
    n_q, n_k = pattern.shape
    z, fq = pool(pattern, MAX_BINS // 2, 0)
    z, fk = pool(z, MAX_BINS // 2, 1)
    zc, axis = colour(z, value_range(pattern, skip_first), log)
    fig = go.Figure(go.Heatmap(z=zc, x=_coords(k_axis, n_k, fk), y=_coords(q_axis, n_q, fq),
                               colorscale=axis["colorscale"], zmin=axis["cmin"], zmax=axis["cmax"],
                               showscale=False, customdata=z,
                               hovertemplate="query %{y}<br>key %{x}<br>%{customdata:.4f}<extra></extra>"))
    for update, axis, n, f in ((fig.update_yaxes, q_axis, n_q, fq),
                               (fig.update_xaxes, k_axis, n_k, fk)):
        ticks = _ticks(axis, n, f) if n // f <= max_labels else {}
        update(title_text=axis.title, showticklabels=bool(ticks) or axis.kind != "tokens",
               **ticks)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title={"text": title, "x": 0.01}, height=340,
                      margin={"l": 60, "r": 10, "t": 40, "b": 40})
    return fig
