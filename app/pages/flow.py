"""Flow page: which input tokens matter at each layer; for Whisper, word alignment.

Token importance comes from ``flow.parquet`` (``rollout`` / ``flow`` / ``attention`` per
stream, layer, input, position) when the run has it; otherwise rollout is computed here from
the saved patterns of a text run (numpy, no model). Audio runs show the cross-attention of
the best alignment heads over the spectrogram with word timings found by DTW.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, dash_table, dcc, html
from dash.exceptions import PreventUpdate

from workbench.word_timing import published_heads

from .. import alignment
from ..components import attempt, control, dropdown, message
from ..fig_flow import alignment_figure, flow_matrix, token_layer_figure
from ..._rollout import rollout_from_patterns
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import as_int, current_store, input_options, pick_input, unchanged

QUANTITIES = ("rollout", "flow", "attention")


def _quantities(table) -> list[str]:
    return [q for q in QUANTITIES if table is not None and q in table.columns]


def token_flow(store, run: Run, index: int, quantity: str | None) -> tuple:
    """(figure or None, note) for the token-importance heatmap. An unreadable
    ``flow.parquet`` falls back to rollout from the patterns, and the note says so.

    Raises:
        RunError: the saved patterns needed for rollout are unreadable.
    """
    try:
        table, unreadable = store.table(run.name, "flow"), ""
    except RunError as exc:
        table, unreadable = None, f"{exc}; "
    if table is not None and quantity in _quantities(table):
        streams = [s for s in run.streams if s in set(table["stream"])] or ["self"]
        values, tokens, layers = flow_matrix(table, streams[0], index, quantity)
        return (token_layer_figure(values, tokens, layers=layers, colorbar=quantity,
                                   title=f"{quantity} per layer · {streams[0]} · input {index}"),
                f"from flow.parquet ({streams[0]} stream)")
    stream = next((s for s in ("self", "decoder") if s in run.streams), None)
    if run.kind != "text" or stream is None or not store.has_patterns(run.name):
        return None, unreadable + "this run has no flow.parquet (and no text patterns to compute rollout from)"
    layers = run.layers(stream)
    r = rollout_from_patterns([store.site_patterns(run.name, stream, layer, index) for layer in layers])
    tokens = run.tokens(index, stream) or []
    return (token_layer_figure(r[:, -1, :], tokens, layers=layers, colorbar="rollout",
                               title=f"rollout to the last token per layer · input {index}"),
            unreadable + "rollout computed in the dashboard from the saved patterns (Abnar & "
            "Zuidema 2020); this run has no flow.parquet")


def _cross_scores(store, run: Run, index: int) -> tuple[dict[tuple[int, int], float], bool]:
    """Score per cross-attention (layer, head), and whether it is the alignment analysis's
    ``alignment.score`` (when the run has it) rather than peak x monotonicity on this input."""
    t = run.heads
    if "alignment.score" in t.columns:
        rows = t[(t["stream"] == "cross") & t["alignment.score"].notna()]
        if len(rows):
            return {(int(r.layer), int(r.head)): float(s) for r, s in zip(rows.itertuples(), rows["alignment.score"])}, True
    toks = alignment.predicted_tokens(run.tokens(index, "decoder") or [])
    scores = {}
    for layer in run.layers("cross"):
        site = store.site_patterns(run.name, "cross", layer, index)
        for h in range(site.shape[0]):
            scores[(layer, h)] = alignment.alignment_score(site[h], toks)
    return scores, False


def _alignment_heads(store, run: Run, index: int) -> tuple[dict[tuple[int, int], float], bool, list[tuple[int, int]], str]:
    """(score per cross head for the picker, whether the scores are the analysis's, default
    heads best first, how they were chosen).

    Defaults, in order: the alignment analysis's top 3 when the run has it; else OpenAI's
    published alignment heads for a known Whisper model (what Whisper itself uses); else
    the 3 best by peak x monotonicity on this input. That last heuristic cannot tell heads
    that track the predicted token from heads that lag one word behind (measured on
    whisper-tiny.en: it picked lagging heads), so it is only the fallback."""
    scores, analysed = _cross_scores(store, run, index)
    if analysed:
        return scores, analysed, alignment.best_heads(scores, k=3), "best 3 by alignment analysis score"
    published = [lh for lh in published_heads(run.model) or () if lh in scores]
    if published:
        return scores, analysed, published, f"OpenAI's published alignment heads for {run.model}"
    return scores, analysed, alignment.best_heads(scores, k=3), "best 3 by peak × monotonicity on this input"


def word_alignment(store, run: Run, index: int, heads: list[str] | None) -> tuple:
    """(figure, word rows) for the chosen cross heads ("layer/head" strings).

    Raises:
        RunError: a head is not a "layer/head" cross-attention head of the run, or the
            patterns are unreadable.
    """
    toks = run.tokens(index, "decoder") or []
    chosen = [_cross_head(run, h) for h in heads or []]
    if not chosen:
        chosen = _alignment_heads(store, run, index)[2]
    mats = [store.pattern(run.name, "cross", layer, index, h) for layer, h in chosen]
    matrix = alignment.average_heads(mats)
    toks = alignment.predicted_tokens(toks)      # row t is the evidence for token t + 1
    words = alignment.word_timings(toks, matrix)
    names = ", ".join(f"L{layer}H{h}" for layer, h in chosen)
    mel, _ = attempt(store.mel, run.name, index)     # an unreadable spectrogram: drawn without
    fig = alignment_figure(matrix, toks, words, mel,
                           title=f"cross-attention alignment · heads {names} · input {index}")
    return fig, [{"word": w.text, "start (s)": round(w.start_s, 2), "end (s)": round(w.end_s, 2)}
                 for w in words]


def _cross_head(run: Run, value) -> tuple[int, int]:
    """``"layer/head"`` -> (layer, head) of a cross-attention head of ``run``."""
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) < 7 for p in parts) or \
            not run.has_head("cross", int(parts[0]), int(parts[1])):
        raise RunError(f"{str(value)[:40]!r} is not a cross-attention head of run {run.name!r} "
                       "(expected layer/head)")
    return int(parts[0]), int(parts[1])


def _alignment_card(store, run: Run, index: int, available: set[int]) -> tuple[list, list]:
    """Children of the alignment card and the heads chosen (best first)."""
    if index not in available:
        return _no_alignment(message(f"run {run.name!r} saved no patterns for input {index}",
                                     "info")), []
    try:
        scores, analysed, chosen, how = _alignment_heads(store, run, index)
        best = [f"{layer}/{h}" for layer, h in chosen]
        fig, words = word_alignment(store, run, index, best)
    except RunError as exc:
        return _no_alignment(message(str(exc))), []
    short = "analysis score" if analysed else "peak × monotonicity"
    opts = [{"label": f"L{layer} H{h} ({short} {s:.2f})", "value": f"{layer}/{h}"}
            for (layer, h), s in sorted(scores.items())]
    return [
        control(f"Alignment heads (default: {how})",
                dropdown("flow-heads", opts, best, multi=True, width="520px")),
        dcc.Graph(id="flow-align-graph", figure=fig),
        dash_table.DataTable(id="flow-words", data=words,
                             columns=[{"name": c, "id": c} for c in ("word", "start (s)",
                                                                     "end (s)")],
                             style_cell={"textAlign": "left", "fontSize": 13}),
    ], best


def _no_alignment(why) -> list:
    """The alignment card's children when there is nothing to align: ``why`` and hidden
    placeholders for the components its callback reads and writes."""
    return [why, dcc.Dropdown(id="flow-heads", multi=True, style={"display": "none"}),
            dcc.Graph(id="flow-align-graph", style={"display": "none"}),
            dash_table.DataTable(id="flow-words")]


def _body(store, run: Run, index) -> tuple[list, dict]:
    """Each panel reads its own files, so an unreadable patterns file or flow table hides only
    the panel that needs it, with a message saying which file."""
    available, broken = attempt(store.pattern_inputs, run.name, default=set())
    index = pick_input(run, index, available)
    if index is None:
        return [message(f"run {run.name!r} lists no inputs", "info")], {"run": run.name}
    table, _ = attempt(store.table, run.name, "flow")
    quants = _quantities(table) or ["rollout"]
    kind = "info"
    try:
        fig, note = (token_flow(store, run, index, quants[0]) if index in available
                     or quants != ["rollout"] else (None, f"no saved patterns for input {index}"))
    except RunError as exc:
        fig, note, kind = None, str(exc), "error"
    if broken is not None and fig is None:
        note, kind = broken.children, "error"
    audio = run.kind == "audio" and "cross" in run.streams and store.has_patterns(run.name)
    card, best = ([], [])
    if audio:
        card, best = (_no_alignment(broken), []) if broken is not None else \
            _alignment_card(store, run, index, available)
    view = {"run": run.name, "input": index, "quantity": quants[0], "heads": best}
    return [
        html.Div([control("Input", dropdown("flow-input", input_options(run, available), index,
                                            width="360px")),
                  html.Div(control("Quantity", dropdown("flow-quantity", quants, quants[0])),
                           style=None if fig else {"display": "none"})],
                 className="controls"),
        html.Div([html.P(note, id="flow-note", className="sub"),
                  dcc.Graph(id="flow-token-graph", figure=fig or {})], className="card",
                 style=None if fig else {"display": "none"}),
        html.Div([html.H3("Cross-attention alignment"), *card], className="card",
                 style=None if audio else {"display": "none"}),
        None if fig or audio else message(note, kind),
    ], view


def layout(run=None, input=None, **_q):  # noqa: A002
    return run_page("flow", "Flow", "token importance per layer; Whisper: word alignment", _body, run, input)


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/flow", name="Flow",
                       title="workbench · flow", order=3, layout=layout)
    register_run_switch(app, "flow", _body, None, url_keys=("input",))

    @app.callback(Output("flow-token-graph", "figure"), Output("flow-note", "children"),
                  Output("flow-view", "data", allow_duplicate=True),
                  Output("shell-view", "data", allow_duplicate=True),
                  Input("flow-input", "value"), Input("flow-quantity", "value"),
                  State("flow-run", "value"), State("flow-view", "data"),
                  prevent_initial_call=True)
    def _token(index, quantity, name, shown):
        if unchanged(shown, run=name, input=index, quantity=quantity):
            raise PreventUpdate
        view = {**(shown or {}), "run": name, "input": as_int(index), "quantity": quantity}
        try:
            fig, note = token_flow(current_store(), current_store().run(name), as_int(index, 0),
                                   quantity)
        except (RunError, ValueError) as exc:
            return {}, str(exc), view, dash.no_update
        return fig or {}, note, view, {"run": name, "input": as_int(index)}

    @app.callback(Output("flow-align-graph", "figure"), Output("flow-words", "data"),
                  Output("flow-view", "data", allow_duplicate=True),
                  Input("flow-input", "value"), Input("flow-heads", "value"),
                  State("flow-run", "value"), State("flow-view", "data"),
                  prevent_initial_call=True)
    def _align(index, heads, name, shown):
        if unchanged(shown, run=name, input=index, heads=heads):
            raise PreventUpdate
        store = current_store()
        view = {**(shown or {}), "run": name, "input": as_int(index), "heads": heads}
        try:
            run = store.run(name)
            if run.kind != "audio" or "cross" not in run.streams:
                raise PreventUpdate
            fig, words = word_alignment(store, run, as_int(index, 0), heads)
            return fig, words, view
        except (RunError, ValueError) as exc:
            return {"layout": {"title": {"text": str(exc)}}}, [], view

