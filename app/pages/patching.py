"""Patching & pruning page: effect heatmaps per method, exact vs AtP scatter, pruning curves.

Effect columns are the numeric ``patch.*``, ``atp.*``, ``importance.*``, ``prune.*``
columns of ``heads.parquet``; pruning curves come from ``prune_curve.parquet``. Runs
without them say which command adds them.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, dcc, html

from ..components import control, dropdown, message
from ..fig_patching import effect_heatmap, prune_curve_figure, scatter_figure
from ..metrics import effect_columns, exact_and_atp, label
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import current_store


def _body(store, run: Run) -> tuple[list, dict]:
    cols = effect_columns(run.heads)
    out = []
    if not cols:
        out.append(message(f"run {run.name!r} has no patching or importance columns; "
                           "`workbench patch` and `workbench prune` add them.", "info"))
    else:
        out.append(html.Div([html.Div(dcc.Graph(id=f"patching-effect-{i}",
                                                figure=effect_heatmap(run.heads, c)),
                                      className="grow", style={"minWidth": "420px"})
                             for i, c in enumerate(cols)], className="card row",
                            style={"flexWrap": "wrap"}))
        x, y = exact_and_atp(run.heads)
        x, y = x or cols[0], y or cols[-1]
        opts = [{"label": label(c), "value": c} for c in cols]
        out.append(html.Div([
            html.Div([control("x (exact)", dropdown("patching-x", opts, x, width="260px")),
                      control("y (approximation)", dropdown("patching-y", opts, y,
                                                            width="260px"))],
                     className="controls"),
            dcc.Graph(id="patching-scatter", figure=scatter_figure(run.heads, x, y)),
        ], className="card"))
    try:
        curve = store.table(run.name, "prune_curve")
        out.append(html.Div(dcc.Graph(id="patching-prune", figure=prune_curve_figure(curve)),
                            className="card") if curve is not None else
                   message(f"run {run.name!r} has no prune_curve.parquet; `workbench prune` "
                           "writes it.", "info"))
    except (RunError, ValueError) as exc:
        out.append(message(str(exc)))
    return out, {"run": run.name}


def layout(run=None, **_q):
    return run_page("patching", "Patching & pruning",
                    "per-head effects, exact vs attribution patching, pruning curves", _body, run)


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/patching", name="Patching & pruning",
                       title="workbench · patching", order=4, layout=layout)
    register_run_switch(app, "patching", _body)

    @app.callback(Output("patching-scatter", "figure"), Input("patching-x", "value"),
                  Input("patching-y", "value"), State("patching-run", "value"),
                  prevent_initial_call=True)
    def _scatter(x, y, name):
        try:
            return scatter_figure(current_store().run(name).heads, x, y)
        except (RunError, ValueError) as exc:
            return {"layout": {"title": {"text": str(exc)}}}

