"""Head detail page: one head's pattern on one input, summaries, metrics; audio extras.

URL: ``/detail?run=&stream=&layer=&head=&input=``. Text runs label both axes with tokens;
audio runs put encoder frames on a seconds axis with the log-mel spectrogram beneath and an
audio player. Only this head's ``[query, key]`` slice is read from ``patterns.safetensors``.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from ..components import attempt, control, dropdown, message, metrics_table
from ..fig_pattern import pattern_figure
from ..routes import audio_url
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import as_int, current_store, input_options, pick_head, pick_input, unchanged


def _content(store, run: Run, stream: str, layer: int, head: int, index: int | None) -> tuple:
    """(figure or None, audio src or None, metrics table, message(s) or None).

    The metrics come from ``heads.parquet`` alone: an unreadable patterns or inputs file
    hides only the pattern (or the spectrogram under it) and says why."""
    table = metrics_table(run.head_row(stream, layer, head), "detail-metrics-table")
    if index is None:
        return None, None, table, message(f"run {run.name!r} lists no inputs", "info")
    src = audio_url(run.name, index) if run.kind == "audio" else None
    if not store.has_patterns(run.name):
        return None, src, table, message(f"run {run.name!r} saved no patterns; re-run with "
                                         "patterns saved to see this head's attention", "info")
    try:
        q, k = run.axes(stream, index)
        pattern = store.pattern(run.name, stream, layer, index, head)
    except (RunError, ValueError) as exc:
        return None, src, table, message(str(exc))
    mel, notes = None, []
    if run.kind == "audio":
        mel, note = attempt(store.mel, run.name, index)
        notes += [note] if note else []
    fig = pattern_figure(pattern, q, k, mel=mel,
                         title=f"{stream} L{layer} H{head} · {run.input_label(index)}")
    return fig, src, table, notes or None


def _selectors(run: Run, stream: str, layer: int, head: int, index: int | None,
               available: set[int]) -> html.Div:
    inputs = input_options(run, available)
    return html.Div([
        control("Stream", dropdown("detail-stream", run.streams, stream)),
        control("Layer", dropdown("detail-layer", run.layers(stream), layer, width="90px")),
        control("Head", dropdown("detail-head", list(range(run.n_heads(stream, layer))), head,
                                 width="90px")),
        control("Input", dropdown("detail-input", inputs, index, width="360px")),
    ], className="controls")


def _body(store, run: Run, stream, layer, head, index) -> tuple[list, dict]:
    stream, layer, head = pick_head(run, stream, layer, head)
    available, broken = attempt(store.pattern_inputs, run.name, default=set())
    index = pick_input(run, index, available)
    fig, src, table, msg = _content(store, run, stream, layer, head, index)
    msg = broken if broken is not None and fig is None else msg
    view = {"run": run.name, "stream": stream, "layer": layer, "head": head, "input": index}
    return [
        _selectors(run, stream, layer, head, index, available),
        html.Div(msg, id="detail-message"),
        html.Audio(id="detail-audio", src=src, controls=True, hidden=src is None,
                   style={"width": "480px"}),
        html.Div([
            html.Div(dcc.Graph(id="detail-graph", figure=fig or {}), className="card grow"),
            html.Div([html.H3("Metrics"), html.Div(table, id="detail-metrics")],
                     className="card side"),
        ], className="row"),
    ], view


def layout(run=None, stream=None, layer=None, head=None, input=None, **_q):  # noqa: A002
    return run_page("detail", "Head detail", "one head's attention pattern; top: mean attention received "
                    "per key, right: entropy per query row", _body, run, stream, layer, head, input)


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/detail", name="Head detail",
                       title="workbench · head detail", order=2, layout=layout)
    register_run_switch(app, "detail", _body, None, None, None, None,
                        url_keys=("stream", "layer", "head", "input"))

    @app.callback(Output("detail-layer", "options"), Output("detail-layer", "value"),
                  Output("detail-head", "options"), Output("detail-head", "value"),
                  Input("detail-stream", "value"), Input("detail-layer", "value"),
                  State("detail-head", "value"), State("detail-run", "value"),
                  State("detail-view", "data"), prevent_initial_call=True)
    def _options(stream, layer, head, name, shown):
        if unchanged(shown, run=name, stream=stream, layer=layer):
            raise PreventUpdate
        try:
            run = current_store().run(name)
        except RunError:
            raise PreventUpdate from None
        stream, layer, head = pick_head(run, stream, layer, head)
        opts = lambda xs: [{"label": str(x), "value": x} for x in xs]  # noqa: E731
        return (opts(run.layers(stream)), layer, opts(range(run.n_heads(stream, layer))), head)

    @app.callback(Output("detail-graph", "figure"), Output("detail-audio", "src"),
                  Output("detail-audio", "hidden"), Output("detail-metrics", "children"),
                  Output("detail-message", "children"),
                  Output("detail-view", "data", allow_duplicate=True),
                  Output("shell-view", "data", allow_duplicate=True),
                  Input("detail-stream", "value"), Input("detail-layer", "value"),
                  Input("detail-head", "value"), Input("detail-input", "value"),
                  State("detail-run", "value"), State("detail-view", "data"),
                  prevent_initial_call=True)
    def _redraw(stream, layer, head, index, name, shown):
        if unchanged(shown, run=name, stream=stream, layer=layer, head=head, input=index):
            raise PreventUpdate
        store = current_store()
        try:
            run = store.run(name)
            stream, layer, head = pick_head(run, stream, layer, head)
            index = as_int(index)
            fig, src, table, msg = _content(store, run, stream, layer, head, index)
        except RunError as exc:
            return {}, None, True, None, message(str(exc)), dash.no_update, dash.no_update
        view = {"run": name, "stream": stream, "layer": layer, "head": head, "input": index}
        return fig or {}, src, src is None, table, msg, view, view

