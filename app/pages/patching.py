"""Patching & pruning page: what the run did (task, metric, clean and corrupt metric values,
pairs, example prompts: ``_patch_info``), effect heatmaps per method each beside its ranked
top heads, exact vs AtP scatter, effects per query position (``workbench patch
--per-position``), pruning curves. A click on any heatmap cell opens that head's detail
(a patch run saves the patterns of its first clean and corrupt prompts). A k/v node run
(``workbench patch --node k|v``) has one row per KV head: its heatmaps' columns and top lists are
KV heads named with the query heads that read them, and a click opens the first of those
(``_patching_kv``).

Effect columns are the numeric ``patch.*``, ``atp.*``, ``importance.*``, ``prune.*``
columns of ``heads.parquet``; pruning curves come from ``prune_curve.parquet``. Runs
without them say which command adds them.
"""
from __future__ import annotations

import dash
import numpy as np
from dash import ALL, Input, Output, State, dcc, html

from .._detail_panels import has_corrupt
from .._patch_info import task_card
from .._patching_kv import is_kv, kv_heatmap, kv_name, kv_scatter, node
from .._top_heads import top_heads_panel

from ..components import control, dropdown, message
from ..fig_patching import effect_heatmap, position_figure, prune_curve_figure, scatter_figure
from ..metrics import MAGNITUDE, column_scale, effect_columns, exact_and_atp, heatmap_columns, label
from ..run import Run, RunError
from ..run_page import register_run_switch, run_page
from ..view import current_store, input_options, pick_input

TOP_HEADS = 20      # heads shown per position: the largest |patch.effect|

# a click on an effect heatmap cell (customdata = stream, y = layer, x = head) opens its detail;
# KV-head cells of a k/v run carry their target instead: customdata = '/detail?...'
OPEN_JS = """
function(clicks, run) {
    const t = dash_clientside.callback_context.triggered;
    const ev = t.length ? t[0].value : null;
    if (!ev || !ev.points || !ev.points.length || !run) { return dash_clientside.no_update; }
    const p = ev.points[0];
    if (String(p.customdata).startsWith('/')) { return p.customdata; }
    const q = new URLSearchParams({run: run, stream: p.customdata, layer: p.y, head: p.x});
    return '/detail?' + q.toString();
}
"""


def position_view(store, run: Run, index: int, k: int = TOP_HEADS):
    """(figure, note) of the per-position effects of input ``index`` for the ``k`` heads with
    the largest |patch.effect|, or (None, why) when the run has none. Per query position; for a
    k/v run per KV head and key position (keys of a cross-attention site: encoder positions)."""
    effects = store.position_effects(run.name)
    if not effects:
        return None, "this run has no per-position effects; `workbench patch ... --per-position` adds them"
    patched: dict = {}
    for name in ((run.meta.get("analyses") or {}).get("patch") or {}).get("heads", []):
        stream, layer, head = name.split("/")
        patched.setdefault((stream, int(layer)), []).append(int(head))
    rows = []                                              # ((stream, layer, head), values [pos])
    for (stream, layer), arr in effects.items():
        heads = sorted(patched.get((stream, layer), range(arr.shape[0])))
        rows += [((stream, layer, h), arr[i, index]) for i, h in enumerate(heads[:arr.shape[0]])]
    size = run.heads.set_index(["stream", "layer", "head"])["patch.effect"].abs().to_dict() \
        if "patch.effect" in run.heads.columns else {}
    rows = sorted(rows, key=lambda r: -size.get(r[0], 0.0))[:k]
    n = rows[0][1].shape[0] if rows else 0
    kv = is_kv(run.meta)                  # k/v: rows are KV heads, positions are key positions
    stream = rows[0][0][0] if rows else None
    tokens = run.tokens(index, "encoder" if kv and stream == "cross" else stream) if rows else None
    tokens = tokens[:n] if tokens else [str(j) for j in range(n)]
    z = np.stack([v[:len(tokens)] for _, v in rows]) if rows else np.zeros((0, 0))
    magnitude = column_scale("patch.effect", run.heads, run.meta) == MAGNITUDE   # an atp* run
    names = [kv_name(run.meta, *key) if kv else "/".join(map(str, key)) for key, _ in rows]
    fig = position_figure(z, names, tokens, magnitude=magnitude,
                          title=f"effect per {'key' if kv else 'query'} position · input {index} · top {len(rows)} "
                                f"{'KV heads' if kv else 'heads'} by |effect|")
    if kv:
        fig.update_xaxes(title_text="key position (token)")
        fig.update_yaxes(title_text="KV head")
    return fig, None


def _heatmap(run: Run, column: str):
    fig = effect_heatmap(run.heads, column, run.meta)
    return kv_heatmap(fig, run.name, run.meta) if is_kv(run.meta) else fig


def _scatter_figure(run: Run, x: str, y: str):
    fig = scatter_figure(run.heads, x, y, run.meta)
    return kv_scatter(fig, run.meta) if is_kv(run.meta) else fig


def _body(store, run: Run) -> tuple[list, dict]:
    cols = effect_columns(run.heads)
    shown = heatmap_columns(run.heads)
    out = [task_card(run, store.has_patterns(run.name), has_corrupt(store, run)),
           dcc.Location(id="patching-go", refresh="callback-nav")]
    if cols and is_kv(run.meta):
        out.append(html.Div(message(
            f"This run patched node {node(run.meta)} per key/value head: the heatmaps' columns and the top lists are "
            "KV heads, each named with the query heads that read it; a click opens the first of those query heads "
            "in Head detail, which links the others.", "info"), id="patching-kv-note"))
    if not cols:
        out.append(message(f"run {run.name!r} has no patching or importance columns; "
                           "`workbench patch` and `workbench prune` add them.", "info"))
    else:
        out.append(html.Div([html.Div([html.Div(dcc.Graph(id={"type": "patching-effect", "index": i},
                                                          figure=_heatmap(run, c)),
                                                className="grow"),
                                       top_heads_panel(run.name, run.heads, c, run.meta, f"patching-top-{i}")],
                                      className="row", style={"minWidth": "620px", "flex": "1 1 620px"})
                             for i, c in enumerate(shown)], className="card row",
                            style={"flexWrap": "wrap"}))
    if len(shown) >= 2:                                # a scatter needs two different quantities
        x, y = exact_and_atp(run.heads)
        x, y = x or shown[0], y or shown[-1]
        opts = [{"label": label(c), "value": c} for c in shown]
        out.append(html.Div([
            html.Div([control("x (exact)", dropdown("patching-x", opts, x, width="260px")),
                      control("y (approximation)", dropdown("patching-y", opts, y,
                                                            width="260px"))],
                     className="controls"),
            dcc.Graph(id="patching-scatter", figure=_scatter_figure(run, x, y)),
        ], className="card"))
    index = pick_input(run, None)
    kind = "info"
    try:
        fig, why = position_view(store, run, index) if index is not None else (None, "this run lists no inputs")
    except RunError as exc:                            # unreadable patch.safetensors: this panel only
        fig, why, kind = None, str(exc), "error"
    if fig is not None:
        out.append(html.Div([
            control("Input", dropdown("patching-pos-input", input_options(run), index, width="520px")),
            dcc.Graph(id="patching-pos-graph", figure=fig),
        ], className="card"))
    elif cols or kind == "error":
        out.append(message(why, kind))
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
    app.clientside_callback(OPEN_JS, Output("patching-go", "href"),
                            Input({"type": "patching-effect", "index": ALL}, "clickData"),
                            State("patching-run", "value"), prevent_initial_call=True)

    @app.callback(Output("patching-pos-graph", "figure"), Input("patching-pos-input", "value"),
                  State("patching-run", "value"), prevent_initial_call=True)
    def _positions(index, name):
        try:
            fig, why = position_view(current_store(), current_store().run(name), int(index))
        except (RunError, ValueError, TypeError) as exc:
            return {"layout": {"title": {"text": str(exc)}}}
        return fig if fig is not None else {"layout": {"title": {"text": why}}}

    @app.callback(Output("patching-scatter", "figure"), Input("patching-x", "value"),
                  Input("patching-y", "value"), State("patching-run", "value"),
                  prevent_initial_call=True)
    def _scatter(x, y, name):
        try:
            return _scatter_figure(current_store().run(name), x, y)
        except (RunError, ValueError) as exc:
            return {"layout": {"title": {"text": str(exc)}}}

