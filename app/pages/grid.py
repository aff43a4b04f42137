"""Head grid page: layer x head heatmap per stream coloured by a metric; click selects.

URL: ``/grid?run=&metric=&compare=&stream=&layer=&head=``. With ``compare`` (a run of the
same model) cells show the difference. The side panel shows the selected head's metrics and
a small pattern preview (one head's slice), with a link to the Head detail page.

A k/v node patch run (``workbench patch --node k|v``) has one row per KV head, drawn as on the
Patching page (``_patching_kv``): the column axis reads "KV head", the hover and the top list name
each KV head with the query heads that read it, and a click opens the first of them in Head
detail; such a run is compared only with another k/v run.
"""
from __future__ import annotations

import dash
import pandas as pd
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from .._patching_kv import detail_href, group, is_kv, kv_heatmap, node, unit_link
from .._top_heads import top_heads_panel
from ..components import control, dropdown, message, metrics_table, run_picker
from ..fig_grid import clicked_head, head_grid_figure
from ..fig_pattern import pattern_preview
from ..metrics import HEAD_KEYS, default_metric, label, metric_options
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import current_store, href, one, pick_head, pick_input, unchanged


TOP_STYLE = {"flex": "0 0 230px", "fontSize": "13px"}


def _compare(store, run: Run, name: str | None) -> tuple[Run | None, str | None]:
    if not name:
        return None, None
    try:
        other = store.run(name)
    except RunError as exc:
        return None, f"cannot compare: {exc}"
    if other.model != run.model:
        return None, f"cannot compare: {name} is a run of {other.model}, not {run.model}"
    if is_kv(other.meta) != is_kv(run.meta):
        kv, heads = (run, other) if is_kv(run.meta) else (other, run)
        return None, (f"cannot compare: the rows of {kv.name} are KV heads (patch node {node(kv.meta)}), "
                      f"those of {heads.name} query heads")
    return other, None


def _figure(store, run: Run, metric: str | None, compare: str | None, selected) -> tuple:
    """(heatmap, message or None, top-heads panel); a metric the run lacks falls back to the
    default one; with a compared run the panel ranks the differences."""
    metric = metric if metric in run.heads.columns and metric not in HEAD_KEYS \
        else default_metric(run.heads)
    if metric is None:
        raise RunError(f"run {run.name!r} has no metric columns in heads.parquet")
    other, msg = _compare(store, run, compare)
    if other is not None and metric not in other.heads.columns:
        other, msg = None, f"cannot compare: {compare} has no column {metric}"
    title = f"{run.name}: {label(metric)}" + (f"  (minus {other.name})" if other else "")
    fig = head_grid_figure(run.heads, metric, compare=other.heads if other else None,
                           selected=selected, title=title, meta=run.meta)
    if is_kv(run.meta):
        fig = kv_heatmap(fig, run.name, run.meta)
    return fig, (message(msg) if msg else None), _top(run, metric, other)


def _top(run: Run, metric: str, other: Run | None):
    heads = run.heads
    if other is not None and metric in other.heads.columns:
        theirs = other.heads.set_index(["stream", "layer", "head"])[metric]
        try:
            diff = heads[metric].to_numpy(dtype=float) - theirs.reindex(
                pd.MultiIndex.from_frame(heads[["stream", "layer", "head"]])).to_numpy(dtype=float)
        except (TypeError, ValueError):             # a class column: nothing to rank
            diff = None
        if diff is not None:
            heads = heads[["stream", "layer", "head"]].assign(**{f"diff.{metric}": diff})
            metric = f"diff.{metric}"
    return top_heads_panel(run.name, heads, metric, run.meta, "grid-top")


def _selected_panel(store, run: Run, sel) -> list:
    if not sel:
        return [message("Click a KV head in the grid to open its first query head in Head detail." if is_kv(run.meta)
                        else "Click a head in the grid to see its metrics and pattern.", "info")]
    stream, layer, head = sel
    shown = head                        # the query head previewed: a KV head's first one
    if is_kv(run.meta):
        shown = group(run.meta, stream, layer, head)[0]
        children = [html.H3(unit_link(run.name, run.meta, stream, layer, head)[0], id="grid-selected-title"),
                    dcc.Link(f"Open query head H{shown} in head detail →", id="grid-detail-link",
                             href=detail_href(run.name, run.meta, stream, layer, head))]
    else:
        children = [html.H3(f"{stream} · layer {layer} · head {head}", id="grid-selected-title"),
                    dcc.Link("Open in head detail →", id="grid-detail-link",
                             href=href("/detail", run=run.name, stream=stream, layer=layer, head=head))]
    try:
        index = pick_input(run, None, store.pattern_inputs(run.name))
        if index is not None and store.has_patterns(run.name):
            q, k = run.axes(stream, index)
            fig = pattern_preview(store.pattern(run.name, stream, layer, index, shown), q, k,
                                  title=f"pattern on input {index}" + (f" (H{shown})" if shown != head else ""))
            children.append(dcc.Graph(id="grid-preview", figure=fig,
                                      config={"displayModeBar": False}))
    except RunError as exc:       # an unreadable patterns file hides only the preview
        children.append(message(str(exc)))
    children.append(metrics_table(run.head_row(stream, layer, head), "grid-metrics"))
    return children


def _body(store, run: Run, metric, compare, stream, layer, head) -> tuple[list, dict]:
    metric = one(metric) if one(metric) in run.heads.columns else default_metric(run.heads)
    if metric is None:
        return [message(f"run {run.name!r} has no metric columns in heads.parquet")], \
            {"run": run.name}
    sel = pick_head(run, stream, layer, head) if one(stream) is not None else None
    compare = one(compare)
    fig, msg, top = _figure(store, run, metric, compare, sel)
    view = {"run": run.name, "metric": metric, "compare": compare,
            "head": list(sel) if sel else None}
    return [
        html.Div([
            control("Metric", dropdown("grid-metric", metric_options(run.heads), metric,
                                       width="260px")),
            run_picker("grid", store, compare, label_text="Compare with (same model)",
                       clearable=True, exclude=run.name, same_model=run.model),
        ], className="controls"),
        html.Div(msg, id="grid-message"),
        html.Div(message(f"This run patched node {node(run.meta)} per key/value head: the grid's columns and the "
                         "top list are KV heads, each named with the query heads that read it; a click opens the "
                         "first of those query heads in Head detail.", "info") if is_kv(run.meta) else None,
                 id="grid-kv-note"),
        dcc.Location(id="grid-go", refresh="callback-nav"),
        html.Div([
            html.Div(dcc.Graph(id="grid-heatmap", figure=fig), className="card grow"),
            html.Div(top, id="grid-top-card", className="card", style=TOP_STYLE),
            html.Div(_selected_panel(store, run, sel), id="grid-selected", className="card side"),
        ], className="row"),
        dcc.Store(id="grid-head", data=list(sel) if sel else None),
    ], view


def _url_view(view: dict) -> dict:
    sel = view.get("head") or (None, None, None)
    return {"run": view.get("run"), "metric": view.get("metric"), "compare": view.get("compare"),
            "stream": sel[0], "layer": sel[1], "head": sel[2]}


def layout(run=None, metric=None, compare=None, stream=None, layer=None, head=None, **_q):
    return run_page("grid", "Head grid", "layer × head per stream; hover for numbers, click to select",
                    _body, run, metric, compare, stream, layer, head)


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/grid", name="Head grid",
                       title="workbench · head grid", order=1, layout=layout)
    register_run_switch(app, "grid", _body, None, None, None, None, None, url_view=_url_view)

    @app.callback(Output("grid-heatmap", "figure"), Output("grid-message", "children"),
                  Output("grid-top-card", "children"),
                  Output("grid-view", "data", allow_duplicate=True),
                  Output("shell-view", "data", allow_duplicate=True),
                  Input("grid-metric", "value"), Input("grid-compare", "value"),
                  Input("grid-head", "data"), State("grid-run", "value"),
                  State("grid-view", "data"), prevent_initial_call=True)
    def _redraw(metric, compare, sel, name, shown):
        if unchanged(shown, run=name, metric=metric, compare=compare, head=sel):
            raise PreventUpdate
        store = current_store()
        view = {"run": name, "metric": metric, "compare": compare, "head": sel}
        try:
            fig, msg, top = _figure(store, store.run(name), metric, compare,
                                    tuple(sel) if sel else None)
        except (RunError, ValueError) as exc:
            return dash.no_update, message(str(exc)), dash.no_update, view, _url_view(view)
        return fig, msg, top, view, _url_view(view)

    @app.callback(Output("grid-head", "data"), Output("grid-go", "href"), Input("grid-heatmap", "clickData"),
                  State("grid-run", "value"), prevent_initial_call=True)
    def _click(click, name):
        """A click selects the head; on a k/v run's KV head it opens the group's first query head."""
        sel = clicked_head(click)
        if not sel:
            raise PreventUpdate
        try:
            run = current_store().run(name)
        except RunError:
            return list(sel), dash.no_update
        if is_kv(run.meta) and run.has_head(*sel):
            return dash.no_update, detail_href(run.name, run.meta, *sel)
        return list(sel), dash.no_update

    @app.callback(Output("grid-selected", "children"), Input("grid-head", "data"),
                  State("grid-run", "value"), State("grid-view", "data"),
                  prevent_initial_call=True)
    def _select(sel, name, shown):
        if unchanged(shown, run=name, head=sel):
            raise PreventUpdate
        store = current_store()
        try:
            run = store.run(name)
            if sel and not run.has_head(*sel):
                return [message(f"run {name!r} has no head {sel}")]
            return _selected_panel(store, run, tuple(sel) if sel else None)
        except RunError as exc:
            return [message(str(exc))]

