"""Head detail page: one head's pattern on one input, summaries, metrics; audio extras.

URL: ``/detail?run=&stream=&layer=&head=&input=&prompt=``. Text runs label both axes with
tokens; audio runs put encoder frames on a seconds axis with the log-mel spectrogram beneath
and an audio player. Beside the raw pattern: the value-weighted pattern (when the run saved
value norms); above: every head of the layer as thumbnails (a click opens that head);
below: the token view (hover or click a token: what it attends to, what attends to it).
Colour scale: linear or log, and optionally the colour range without the first token (sink
heads). ``prompt=corrupt`` shows a patch run's corrupt prompts. Panels are built in
``_detail_panels``. A k/v node patch run (rows are KV heads) still shows every query head; a note
names the KV head the shown head reads and the query heads sharing it, and the metrics are that
KV head's (``_patching_kv``).
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from .._circuit_panels import dla_panel
from .._color import LINEAR, LOG, SKIP_FIRST, options
from .._detail_panels import CLEAN, CORRUPT, build, has_corrupt, variant
from .._patching_kv import group_note, group_size, is_kv, n_query_heads
from ..components import attempt, control, dropdown, message, metrics_table
from ..fig_thumbs import clicked_thumb
from ..fig_tokens import TOKEN_JS
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import as_int, current_store, input_options, one, pick_head, pick_input, unchanged

HIDE = {"display": "none"}


def _n_heads(run: Run, stream: str, layer: int) -> int:
    """Query heads of the layer: the head table's, or ``meta.sites``' for a k/v run (rows are KV heads)."""
    n = n_query_heads(run.meta, stream, layer) if is_kv(run.meta) else None
    return n or run.n_heads(stream, layer)


def _pick(run: Run, stream, layer, head) -> tuple[str, int, int]:
    """``view.pick_head`` with a k/v run's query heads."""
    stream, layer, picked = pick_head(run, stream, layer, head)
    h = as_int(head, 0)
    return stream, layer, h if is_kv(run.meta) and 0 <= h < _n_heads(run, stream, layer) else picked


def _metrics(run: Run, stream: str, layer: int, head: int) -> tuple:
    """(metrics table, k/v note or None): a k/v run's table is the row of the KV head ``head`` reads."""
    if not is_kv(run.meta):
        return metrics_table(run.head_row(stream, layer, head), "detail-metrics-table"), None
    kv = head // group_size(run.meta, stream, layer)
    return (metrics_table(run.head_row(stream, layer, kv), "detail-metrics-table"),
            group_note(run.name, run.meta, stream, layer, head))


def _selectors(store, run: Run, shown: Run, stream: str, layer: int, head: int, index: int | None,
               available: set[int], prompt: str) -> html.Div:
    inputs = input_options(shown, available)
    corrupt = has_corrupt(store, run)
    return html.Div([
        control("Stream", dropdown("detail-stream", run.streams, stream)),
        control("Layer", dropdown("detail-layer", run.layers(stream), layer, width="90px")),
        control("Head", dropdown("detail-head", list(range(_n_heads(run, stream, layer))), head,
                                 width="90px")),
        control("Input", dropdown("detail-input", inputs, index, width="360px")),
        html.Div(control("Prompts (patch run)", dcc.RadioItems(
            id="detail-prompt", options=[CLEAN, CORRUPT], value=prompt, inline=True)),
            style=None if corrupt else HIDE),
        control("Colour scale", dcc.RadioItems(id="detail-scale", options=[LINEAR, LOG], value=LINEAR,
                                               inline=True)),
        control("Sink heads", dcc.Checklist(
            id="detail-colour", value=[], inline=True,
            options=[{"label": " colour range without the first token", "value": SKIP_FIRST}])),
    ], className="controls")


def _outputs(store, run: Run, stream, layer, head, index, scale, checks, prompt) -> tuple:
    """(figures and panel styles for the callback's outputs, view)."""
    shown, stem, prompt = variant(store, run, prompt)
    log, skip_first = options(scale, checks)
    p = build(store, shown, stream, layer, head, index, log=log, skip_first=skip_first, stem=stem)
    table, note = _metrics(run, stream, layer, head)
    view = {"run": run.name, "stream": stream, "layer": layer, "head": head, "input": index,
            "prompt": None if prompt == CLEAN else prompt}
    return (p.pattern or {}, p.value_weighted or {}, None if p.value_weighted else HIDE,
            p.thumbs or {}, None if p.thumbs else HIDE, p.tokens or {}, None if p.tokens else HIDE,
            p.audio, p.audio is None, table, p.messages or None, note), view


def _body(store, run: Run, stream, layer, head, index, prompt=None) -> tuple[list, dict]:
    stream, layer, head = _pick(run, stream, layer, head)
    shown, stem, prompt = variant(store, run, one(prompt))
    available, broken = attempt(store.pattern_inputs, run.name, stem, default=set())
    index = pick_input(shown, index, available)
    (fig, vw, vw_style, thumbs, thumbs_style, tokens, tokens_style, src, _, table, msg, note), view = \
        _outputs(store, run, stream, layer, head, index, LINEAR, [], prompt)
    msg = broken if broken is not None and not fig else msg
    view = {**view, "scale": LINEAR, "colour": []}
    return [
        _selectors(store, run, shown, stream, layer, head, index, available, prompt),
        html.Div(msg, id="detail-message"),
        html.Div(note, id="detail-kv"),
        html.Audio(id="detail-audio", src=src, controls=True, hidden=src is None,
                   style={"width": "480px"}),
        html.Div(dcc.Graph(id="detail-thumbs", figure=thumbs, config={"displayModeBar": False}),
                 id="detail-thumbs-card", className="card", style=thumbs_style),
        html.Div([
            html.Div(dcc.Graph(id="detail-graph", figure=fig), className="card grow"),
            html.Div(dcc.Graph(id="detail-vw-graph", figure=vw), id="detail-vw-card",
                     className="card grow", style=vw_style),
        ], className="row"),
        html.Div([html.H3("Token view"),
                  html.P("Hover a token: its row (what it attends to) and its column (what attends to it); "
                         "click to pin. Scroll sideways on long inputs.", className="sub"),
                  html.Div(dcc.Graph(id="detail-tokens", figure=tokens, config={"displayModeBar": False}),
                           style={"overflowX": "auto"})],
                 id="detail-tokens-card", className="card", style=tokens_style),
        dla_panel(store, run, stream, layer, head, index),           # circuit runs: DLA by key position
        html.Div([
            html.Div([html.H3("Metrics"), html.Div(table, id="detail-metrics")], className="card side"),
        ], className="row", id="detail-extra"),
    ], view


def layout(run=None, stream=None, layer=None, head=None, input=None, prompt=None, **_q):  # noqa: A002
    return run_page("detail", "Head detail", "one head's attention pattern; top: mean attention received "
                    "per key, right: entropy per query row", _body, run, stream, layer, head, input, prompt)


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/detail", name="Head detail",
                       title="workbench · head detail", order=2, layout=layout)
    register_run_switch(app, "detail", _body, None, None, None, None, None,
                        url_keys=("stream", "layer", "head", "input", "prompt"))

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
        stream, layer, head = _pick(run, stream, layer, head)
        opts = lambda xs: [{"label": str(x), "value": x} for x in xs]  # noqa: E731
        return (opts(run.layers(stream)), layer, opts(range(_n_heads(run, stream, layer))), head)

    @app.callback(Output("detail-head", "value", allow_duplicate=True), Input("detail-thumbs", "clickData"),
                  prevent_initial_call=True)
    def _thumb(click):
        head = clicked_thumb(click)
        if head is None:
            raise PreventUpdate
        return head

    @app.callback(Output("detail-graph", "figure"), Output("detail-vw-graph", "figure"),
                  Output("detail-vw-card", "style"), Output("detail-thumbs", "figure"),
                  Output("detail-thumbs-card", "style"), Output("detail-tokens", "figure"),
                  Output("detail-tokens-card", "style"), Output("detail-audio", "src"),
                  Output("detail-audio", "hidden"), Output("detail-metrics", "children"),
                  Output("detail-message", "children"), Output("detail-kv", "children"),
                  Output("detail-view", "data", allow_duplicate=True),
                  Output("shell-view", "data", allow_duplicate=True),
                  Input("detail-stream", "value"), Input("detail-layer", "value"),
                  Input("detail-head", "value"), Input("detail-input", "value"),
                  Input("detail-scale", "value"), Input("detail-colour", "value"),
                  Input("detail-prompt", "value"),
                  State("detail-run", "value"), State("detail-view", "data"),
                  prevent_initial_call=True)
    def _redraw(stream, layer, head, index, scale, checks, prompt, name, shown):
        if unchanged(shown, run=name, stream=stream, layer=layer, head=head, input=index,
                     scale=scale or LINEAR, colour=checks or [], prompt=None if prompt == CLEAN else prompt):
            raise PreventUpdate
        store = current_store()
        try:
            run = store.run(name)
            stream, layer, head = _pick(run, stream, layer, head)
            outs, view = _outputs(store, run, stream, layer, head, as_int(index), scale, checks, prompt)
        except RunError as exc:
            return ({}, {}, HIDE, {}, HIDE, {}, HIDE, None, True, None, message(str(exc)), None,
                    dash.no_update, dash.no_update)
        return (*outs, {**view, "scale": scale or LINEAR, "colour": checks or []}, view)

    app.clientside_callback(TOKEN_JS, Output("detail-tokens", "figure", allow_duplicate=True),
                            Input("detail-tokens", "hoverData"), Input("detail-tokens", "clickData"),
                            State("detail-tokens", "figure"), prevent_initial_call=True)
