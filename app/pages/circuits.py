"""Circuits page: what a ``workbench circuit`` run holds, drawn from its tables.

- ``dla``: the largest direct logit attributions (mean over inputs) of every component
  (embeddings, heads, MLPs, biases) from ``dla_components.parquet``, and ``dla.value`` per
  head as a layer x head grid beside its top 10 heads by |DLA| (also a metric of the Head grid;
  Head detail splits one head's DLA over key positions, ``_circuit_panels``).
- ``path``: sender x receiver heatmap of path-patching effects with a q | k | v selector, beside
  it the top 10 sender → receiver pairs of that kind by |effect| (a signed effect).
- ``composition``: sender x receiver heatmap of composition score minus the random-matrix
  baseline, q | k | v selector (the receivers with the largest scores when there are many),
  beside it the top 10 pairs of that kind by highest excess over all receivers.
Each head in a top list links to its Head detail (``_top_heads``).
- ``qk``: for the run's head and key position, each upstream component's share of the
  scores through the query and through the key (``qk_summary.parquet``); below, for a chosen
  query and key position, the [query component, key component] contribution matrix with the
  largest pairs named (``_circuit_panels``).

Figure builders are plain functions of DataFrames (no torch, no model).
"""
from __future__ import annotations

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

from .._circuit_panels import qk_controls
from .._circuit_panels import register as register_panels
from .._top_heads import top_heads_panel, top_pairs_panel
from ..components import control, dropdown, message
from ..fig_grid import head_grid_figure
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import current_store

KINDS = ("q", "k", "v")
TOP = 25
HIDE = {"display": "none"}
# analysis -> (table, value column, rank by |value|, what the value is): the pair heatmaps' top lists
PAIRS = {"path": ("path", "effect", True, "path patching effect (metric units), signed"),
         "composition": ("composition", "excess", False, "composition score minus the random-matrix baseline, "
                                                        "all receivers")}
TOP_STYLE = {"flex": "0 0 280px", "fontSize": "13px"}


def analyses(run: Run) -> list[str]:
    """The circuit analyses of a run (``meta.json`` analyses ``circuit.<name>``)."""
    return [k.split(".", 1)[1] for k in (run.meta.get("analyses") or {}) if k.startswith("circuit.")]


def dla_figure(components: pd.DataFrame, top: int = TOP) -> go.Figure:
    """Horizontal bars: the ``top`` components by |mean DLA| (nats)."""
    mean = components.groupby("component")["dla"].mean()
    mean = mean.reindex(mean.abs().sort_values(ascending=False).index).head(top)[::-1]
    fig = go.Figure(go.Bar(x=mean.values, y=list(mean.index), orientation="h",
                           marker_color=np.where(mean.values >= 0, "#b2182b", "#2166ac"),
                           hovertemplate="%{y}: %{x:.4g} nats<extra></extra>"))
    fig.update_layout(title={"text": f"direct logit attribution, top {len(mean)} components (mean over inputs)",
                             "x": 0.01}, height=180 + 18 * len(mean), xaxis_title="nats", margin={"l": 120})
    return fig


def pair_heatmap(table: pd.DataFrame, value: str, kind: str, title: str, top: int | None = None) -> go.Figure:
    """Sender x receiver heatmap of ``value`` for one kind (q|k|v), diverging around 0;
    with ``top``, only the receivers with the largest |value| somewhere."""
    t = table[table["kind"] == kind]
    grid = t.pivot_table(index="sender", columns="receiver", values=value, aggfunc="mean")
    if top is not None and grid.shape[1] > top:
        grid = grid[grid.abs().max().sort_values(ascending=False).index[:top]]
    order = lambda names: sorted(names, key=lambda n: (n.split("/")[0], *map(int, n.split("/")[1:])))  # noqa: E731
    grid = grid.reindex(index=order(grid.index), columns=order(grid.columns))
    lim = float(np.nanmax(np.abs(grid.values))) if grid.size else 1.0
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="RdBu_r",
                               zmid=0.0, zmin=-lim, zmax=lim, colorbar={"title": value},
                               hovertemplate="sender %{y} → receiver %{x}<br>%{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="sender")
    fig.update_xaxes(title_text="receiver", tickangle=-45)
    fig.update_layout(title={"text": title, "x": 0.01}, height=max(360, min(1400, 140 + 6 * len(grid.index))))
    return fig


def qk_figure(summary: pd.DataFrame, head: str, key: int, top: int = TOP) -> go.Figure:
    """Grouped bars: each component's mean share of the scores to key ``key``, via the query
    and via the key, for the ``top`` components by |via_query| + |via_key|."""
    size = summary.via_query.abs().fillna(0) + summary.via_key.abs().fillna(0)   # cross: one side per row
    s = summary.assign(size=size).nlargest(top, "size")[::-1]
    fig = go.Figure([go.Bar(x=s.via_query, y=s.component, orientation="h", name="via query"),
                     go.Bar(x=s.via_key, y=s.component, orientation="h", name="via key")])
    fig.update_layout(barmode="group", height=180 + 26 * len(s), margin={"l": 120},
                      title={"text": f"{head}: what drives its scores to key position {key}", "x": 0.01},
                      xaxis_title="share of the pre-softmax score")
    return fig


def figure(store, run: Run, analysis: str, kind: str = "q"):
    """(figure, note) for one analysis of a run; (None, why) when its table is missing."""
    return view(store, run, analysis, kind)[:2]


def view(store, run: Run, analysis: str, kind: str = "q"):
    """(figure, note, top list or None): ``figure``'s pair and, for a sender x receiver heatmap,
    the card of its top pairs of ``kind`` (``PAIRS``), ranked from the same table."""
    if analysis in PAIRS:
        name, value, by_abs, what = PAIRS[analysis]
        t = store.table(run.name, name)
        if t is None:
            return None, f"{name}.parquet is missing", None
        fig = (pair_heatmap(t, value, kind, f"path patching effect via {kind} (metric units)") if analysis == "path"
               else pair_heatmap(t, value, kind, f"{kind}-composition minus random baseline (top {TOP} receivers)",
                                 top=TOP))
        return fig, None, top_pairs_panel(run.name, t, value, kind, "circuits-top-list", by_abs=by_abs, what=what)
    return (*_figure(store, run, analysis), None)


def _figure(store, run: Run, analysis: str):
    info = (run.meta.get("analyses") or {}).get(f"circuit.{analysis}", {})
    if analysis == "dla":
        t = store.table(run.name, "dla_components")
        return (dla_figure(t), None) if t is not None else (None, "dla_components.parquet is missing")
    t = store.table(run.name, "qk_summary")
    return ((qk_figure(t, info.get("head", "?"), info.get("key", 0)), None) if t is not None
            else (None, "qk_summary.parquet is missing"))


def _body(store, run: Run) -> tuple[list, dict]:
    found = analyses(run)
    if not found:
        return [message(f"run {run.name!r} has no circuit analysis; `workbench circuit MODEL --analysis "
                        "dla|path|qk|composition` adds one.", "info")], {"run": run.name}
    analysis = found[0]
    try:
        fig, why, top = view(store, run, analysis)
    except RunError as exc:
        fig, why, top = None, str(exc), None
    kinds = html.Div(control("q | k | v", dropdown("circuits-kind", list(KINDS), "q")), className="controls",
                     style={"display": "flex" if analysis in ("path", "composition") else "none"})
    extra = []
    if analysis == "dla" and "dla.value" in run.heads.columns:
        grid = dcc.Graph(id="circuits-dla-grid", figure=head_grid_figure(
            run.heads, "dla.value", title=f"{run.name}: direct logit attribution per head (nats, mean over inputs)",
            meta=run.meta))
        extra = [html.Div([html.Div(grid, className="card grow"),
                           html.Div(top_heads_panel(run.name, run.heads, "dla.value", run.meta, "circuits-dla-top"),
                                    className="card", style=TOP_STYLE)], className="row")]
    elif analysis == "qk":
        extra = qk_controls(store, run)
    side = html.Div(top, id="circuits-top", className="card", style=TOP_STYLE if top is not None else HIDE)
    return [kinds, message(why, "error") if why else html.Div(),
            html.Div([html.Div(dcc.Graph(id="circuits-graph", figure=fig or {}), className="grow"), side],
                     className="row"), *extra], {"run": run.name, "analysis": analysis}


def layout(run=None, **_q):
    return run_page("circuits", "Circuits", "DLA, path patching, QK attribution, composition", _body, run)


def register(app: dash.Dash) -> None:
    dash.register_page(__name__, path="/circuits", name="Circuits", title="workbench · circuits", order=5,
                       layout=layout)
    register_run_switch(app, "circuits", _body)
    register_panels(app)

    @app.callback(Output("circuits-graph", "figure"), Output("circuits-top", "children"),
                  Input("circuits-kind", "value"), State("circuits-run", "value"), State("circuits-view", "data"),
                  prevent_initial_call=True)
    def _kind(kind, name, shown):
        store = current_store()
        try:
            fig, why, top = view(store, store.run(name), (shown or {}).get("analysis", "path"), kind or "q")
        except (RunError, ValueError) as exc:
            return {"layout": {"title": {"text": str(exc)}}}, message(str(exc))
        return fig or {}, top if top is not None else message(why or "no pairs to rank", "info")
