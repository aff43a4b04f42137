"""Flow page figures: token importance per layer, and Whisper word alignment.

``token_layer_figure(values [layer, position], tokens)``: how much each input token matters
at each layer (rollout / flow / attention from ``flow.parquet``, or rollout computed from the
saved patterns). ``alignment_figure(matrix [token, frame], tokens, words, mel)``: averaged
cross-attention of the chosen heads with the DTW path on its own time axis, the words on
non-colliding lanes (``word_lanes``), and the log-mel spectrogram with word boundaries, each
panel with its own labelled seconds axis over the same range.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .alignment import FPS, Word, dtw
from .fig_pattern import MAX_BINS, display_token, pool
from .run import MEL_FPS


def flow_matrix(flow: pd.DataFrame, stream: str, index: int, quantity: str
                ) -> tuple[np.ndarray, list[str], list[int]]:
    """``flow.parquet`` rows of one stream/input -> (values [layer, position], tokens, layers).

    Raises:
        ValueError: the table lacks the quantity or has no rows for this stream/input.
    """
    need = {"stream", "layer", "input", "position", quantity}
    if not need <= set(flow.columns):
        raise ValueError(f"flow table lacks columns {sorted(need - set(flow.columns))}")
    rows = flow[(flow["stream"] == stream) & (flow["input"] == index)]
    if rows.empty:
        raise ValueError(f"flow table has no rows for stream {stream!r}, input {index}")
    wide = rows.pivot_table(index="layer", columns="position", values=quantity, aggfunc="mean")
    tokens = []
    if "token" in rows.columns:
        tok = rows.drop_duplicates("position").set_index("position")["token"]
        tokens = [str(tok.get(p, p)) for p in wide.columns]
    return wide.to_numpy(dtype=float), tokens, [int(x) for x in wide.index]


def token_layer_figure(values: np.ndarray, tokens: list[str], *, layers: list[int] | None = None,
                       title: str = "", colorbar: str = "importance") -> go.Figure:
    """Heatmap ``values [layer, position]``; x ticks are the tokens."""
    n_layers, n_pos = values.shape
    layers = layers if layers is not None else list(range(n_layers))
    labels = [display_token(t) for t in tokens] if tokens else [str(i) for i in range(n_pos)]
    step = max(1, n_pos // 60)
    fig = go.Figure(go.Heatmap(
        z=values, x=list(range(n_pos)), y=layers, colorscale="Viridis",
        colorbar={"title": colorbar}, customdata=np.tile(np.array(labels, dtype=object),
                                                         (n_layers, 1)),
        hovertemplate="layer %{y}<br>token %{x} %{customdata}<br>%{z:.4f}<extra></extra>"))
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, n_pos, step)),
                     ticktext=labels[::step], title_text="token")
    fig.update_yaxes(autorange="reversed", title_text="layer")
    fig.update_layout(title={"text": title, "x": 0.01}, height=max(320, 18 * n_layers + 140),
                      margin={"l": 60, "r": 20, "t": 50, "b": 80})
    return fig


PLOT_PX = 1100          # width of the time axis on a typical screen, for placing word labels
CHAR_PX, GAP_PX = 7.5, 8  # width of one label character (12 px font) and the gap between labels
MAX_LANES = 8


def word_lanes(words: list[Word], duration_s: float, plot_px: float = PLOT_PX) -> list[int]:
    """A lane (row) per word so that labels in one lane do not overlap: each label is centred on
    its word, about ``CHAR_PX`` per character wide on a ``plot_px`` wide axis of ``duration_s``;
    a word goes to the first lane whose last label ends before it starts (the least crowded
    lane when all ``MAX_LANES`` are taken)."""
    px_per_s = plot_px / max(duration_s, 1e-6)
    ends: list[float] = []
    lanes = []
    for w in words:
        mid = (w.start_s + w.end_s) / 2 * px_per_s
        half = len(w.text) * CHAR_PX / 2
        free = [i for i, e in enumerate(ends) if e + GAP_PX <= mid - half]
        if free:
            lane = free[0]
        elif len(ends) < MAX_LANES:
            ends.append(-np.inf)
            lane = len(ends) - 1
        else:
            lane = int(np.argmin(ends))
        ends[lane] = mid + half
        lanes.append(lane)
    return lanes


def alignment_figure(matrix: np.ndarray, tokens: list[str], words: list[Word],
                     mel: np.ndarray | None, *, title: str = "") -> go.Figure:
    """Averaged cross-attention ``[token, frame]`` + DTW path on its own time axis; the words,
    each on a lane where its label does not collide with its neighbours (a 30 s clip has
    dozens), as spans on the same time axis; the spectrogram with word boundaries."""
    n_tok, n_frames = matrix.shape
    z, f = pool(matrix, 2 * MAX_BINS, 1, how="mean")
    duration = n_frames / FPS
    lanes = word_lanes(words, duration)
    n_lanes = max(lanes, default=0) + 1
    rows = 3 if mel is not None else 2
    heights = [max(240, 17 * n_tok), 50 + 28 * n_lanes, 260][:rows]          # pixels per panel
    gap = 70                                                                 # pixels between panels
    total = sum(heights) + gap * (rows - 1)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=False, vertical_spacing=gap / total,
                        row_heights=[h / sum(heights) for h in heights])
    labels = [display_token(t) for t in tokens]
    fig.add_trace(go.Heatmap(z=z, x=np.arange(0, n_frames, f) / FPS, y=list(range(n_tok)),
                             colorscale="Blues", colorbar={"title": "z-scored", "len": 0.4,
                                                           "y": 0.8},
                             hovertemplate="t %{x:.2f} s<br>token %{y}<br>%{z:.2f}<extra></extra>"),
                  row=1, col=1)
    ti, fj = dtw(-matrix)
    fig.add_trace(go.Scatter(x=fj / FPS, y=ti, mode="lines", line={"color": "#d62728", "width": 2},
                             name="DTW path", hoverinfo="skip"), row=1, col=1)
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(n_tok)),
                     ticktext=labels, title_text="predicted token", row=1, col=1)
    for r in range(1, rows + 1):        # every panel has its own labelled time axis, same range
        fig.update_xaxes(range=[0, duration], title_text="time (s)", showticklabels=True, row=r, col=1)
    xs, ys, tips = [], [], []
    for w, lane in zip(words, lanes):               # one trace: spans separated by gaps (None)
        xs += [w.start_s, w.end_s, None]
        ys += [lane, lane, None]
        tips += [f"{w.text}: {w.start_s:.2f}–{w.end_s:.2f} s"] * 2 + [""]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#9ecae1", "width": 12}, name="words",
                             hoverinfo="text", hovertext=tips), row=2, col=1)
    # annotations and boundary lines set in one layout update (plotly's add_annotation /
    # add_vline per word re-validates the whole layout: ~0.3 s a word on a 30 s clip)
    notes = [{"x": (w.start_s + w.end_s) / 2, "y": lane, "xref": "x2", "yref": "y2", "text": w.text,
              "showarrow": False, "font": {"size": 12, "color": "#1d2330"}} for w, lane in zip(words, lanes)]
    lines = [{"type": "line", "x0": w.start_s, "x1": w.start_s, "xref": "x3", "y0": 0, "y1": 1, "yref": "y3 domain",
              "line": {"color": "white", "width": 1, "dash": "dot"}} for w in words] if mel is not None else []
    fig.update_layout(annotations=list(fig.layout.annotations) + notes, shapes=list(fig.layout.shapes) + lines)
    fig.update_yaxes(range=[n_lanes - 0.5, -0.5], showticklabels=False, showgrid=False, zeroline=False,
                     title_text="words", row=2, col=1)
    if mel is not None:
        m, fm = pool(mel, 2 * MAX_BINS, 1, how="mean")
        fig.add_trace(go.Heatmap(z=m, x=np.arange(0, mel.shape[1], fm) / MEL_FPS,
                                 y=np.arange(mel.shape[0]), colorscale="Magma", showscale=False,
                                 hovertemplate="t %{x:.2f} s<br>mel %{y}<extra></extra>"),
                      row=3, col=1)
        fig.update_yaxes(title_text="mel bin", row=3, col=1)
    fig.update_layout(title={"text": title, "x": 0.01}, showlegend=False,
                      height=total + 100,
                      margin={"l": 140, "r": 20, "t": 50, "b": 50})
    return fig
