"""Patching and pruning figures: effect heatmaps, exact-vs-AtP scatter, pruning curves.

Effect heatmaps reuse ``head_grid_figure``: signed effects on a diverging scale centred on
zero, magnitudes (AtP*, Michel importance: ``metrics.column_scale``) on a sequential scale
from zero, titled as magnitudes. The scatter compares two per-head effect columns
(typically exact activation patching against its attribution-patching approximation,
Nanda 2023 / Kramár et al. 2024) like with like: a signed column against a magnitude is
drawn as |signed|; it reports Pearson and Spearman correlation of what is drawn. Pruning curves read ``prune_curve.parquet``
(``method, seed, fraction_removed, metric``): mean over seeds with a min-max band.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from .fig_grid import head_grid_figure
from .metrics import MAGNITUDE, SIGNED, column_scale, label

CURVE_COLUMNS = ("method", "seed", "fraction_removed", "metric")


def effect_heatmap(heads: pd.DataFrame, column: str, meta: dict | None = None) -> go.Figure:
    """Layer x head heatmap of one effect column: diverging around 0 when signed, sequential
    from 0 (title "magnitude, unsigned") for magnitudes; ``meta`` is the run's meta.json."""
    scale = column_scale(column, heads, meta)
    note = {MAGNITUDE: " — magnitude (unsigned)", SIGNED: " (signed)"}.get(scale, "")
    return head_grid_figure(heads, column, meta=meta, scale=scale, title=label(column) + note)


def position_figure(effects: np.ndarray, heads: list[str], tokens: list[str], *, title: str = "",
                    magnitude: bool = False) -> go.Figure:
    """Heatmap of patching effects ``[head, position]`` (rows named ``heads``, columns the
    input's tokens), diverging around 0; sequential from 0 when the effects are magnitudes
    (an ``atp*`` run)."""
    lim = float(np.nanmax(np.abs(effects))) if effects.size else 1.0
    scale = ({"colorscale": "Purples", "zmin": 0.0, "zmax": lim,
              "colorbar": {"title": "effect<br>(magnitude,<br>unsigned)"}} if magnitude else
             {"colorscale": "RdBu_r", "zmid": 0.0, "zmin": -lim, "zmax": lim,
              "colorbar": {"title": "effect"}})
    fig = go.Figure(go.Heatmap(
        z=effects, x=list(range(effects.shape[1])), y=list(range(len(heads))), **scale,
        customdata=np.array([[f"{h} · {t!r}" for t in tokens] for h in heads], dtype=object),
        hovertemplate="%{customdata}<br>effect %{z:.4g}<extra></extra>"))
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens, tickangle=-45,
                     title_text="query position (token)")
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(heads))), ticktext=heads, autorange="reversed",
                     title_text="head")
    fig.update_layout(title={"text": title, "x": 0.01}, height=160 + 22 * len(heads),
                      margin={"l": 110, "r": 20, "t": 50, "b": 90})
    return fig


def correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Pearson r, Spearman rho) over finite pairs; NaN when fewer than 3 pairs."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan"), float("nan")
    pearson = float(np.corrcoef(x[ok], y[ok])[0, 1])
    rx, ry = pd.Series(x[ok]).rank().to_numpy(), pd.Series(y[ok]).rank().to_numpy()
    return pearson, float(np.corrcoef(rx, ry)[0, 1])


def scatter_figure(heads: pd.DataFrame, x: str, y: str, meta: dict | None = None) -> go.Figure:
    """One point per head: ``x`` vs ``y`` with the identity line; hover names the head.

    When one column is signed and the other a magnitude (exact effect vs AtP*), the signed
    one is drawn as its absolute value, so like is compared with like.

    Raises:
        ValueError: ``x`` or ``y`` is not a column.
    """
    for c in (x, y):
        if c not in heads.columns:
            raise ValueError(f"no column {c!r} in the head table")
    scales = {c: column_scale(c, heads, meta) for c in (x, y)}
    absolute = {c: MAGNITUDE in scales.values() and scales[c] == SIGNED for c in (x, y)}

    def values(frame: pd.DataFrame, c: str) -> np.ndarray:
        v = frame[c].astype(float).to_numpy()
        return np.abs(v) if absolute[c] else v

    def name(c: str) -> str:
        return f"|{label(c)}|" if absolute[c] else label(c) + (" (magnitude)" if scales[c] == MAGNITUDE else "")

    fig = go.Figure()
    xs, ys = values(heads, x), values(heads, y)
    for i, (stream, rows) in enumerate(heads.groupby("stream", sort=False)):
        names = [f"{stream} L{layer} H{head}" for layer, head in zip(rows["layer"], rows["head"])]
        fig.add_trace(go.Scatter(
            x=values(rows, x), y=values(rows, y), mode="markers", name=stream,
            text=names, marker={"color": qualitative.D3[i % 10], "size": 7, "opacity": 0.8},
            hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>"))
    finite = np.concatenate([xs[np.isfinite(xs)], ys[np.isfinite(ys)]])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                 line={"color": "grey", "dash": "dash"}, hoverinfo="skip"))
    r, rho = correlations(xs, ys)
    fig.update_layout(title={"text": f"{name(y)} vs {name(x)}: Pearson r = {r:.3f}, "
                             f"Spearman ρ = {rho:.3f}", "x": 0.01},
                      xaxis_title=name(x), yaxis_title=name(y), height=480,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def prune_curve_figure(curve: pd.DataFrame) -> go.Figure:
    """Metric vs fraction of heads removed, one line per method (mean over seeds, band).

    Raises:
        ValueError: the table lacks one of ``method, seed, fraction_removed, metric``.
    """
    missing = [c for c in CURVE_COLUMNS if c not in curve.columns]
    if missing:
        raise ValueError(f"prune_curve table lacks columns {missing}")
    fig = go.Figure()
    for i, (method, rows) in enumerate(curve.groupby("method", sort=True)):
        g = rows.groupby("fraction_removed")["metric"].agg(["mean", "min", "max", "count"])
        color = qualitative.D3[i % 10]
        xs = g.index.to_numpy(dtype=float)
        fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]),
                                 y=np.concatenate([g["max"], g["min"][::-1]]), fill="toself",
                                 line={"width": 0}, fillcolor=color, opacity=0.2,
                                 hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=xs, y=g["mean"], mode="lines+markers", name=str(method),
                                 line={"color": color}, customdata=g["count"],
                                 hovertemplate=f"{method}<br>removed %{{x:.0%}}<br>metric "
                                 "%{y:.4g} (n=%{customdata})<extra></extra>"))
    fig.update_layout(title={"text": "pruning curves (mean over seeds, band = min..max)",
                             "x": 0.01}, xaxis_title="fraction of heads removed",
                      yaxis_title="metric", xaxis_tickformat=".0%", height=420,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig
