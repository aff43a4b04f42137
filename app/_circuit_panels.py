"""Circuit panels built from a ``workbench circuit`` run folder (numpy only, never torch).

- ``dla_positions``: one head's direct logit attribution split over the key positions it
  reads, on one input (``dla.safetensors`` ``per_position/<stream>/<layer>`` [head, input,
  key_pos], nats of the run's readout); the bars sum to the head's ``dla.value`` on that
  input. ``dla_panel`` is the Head detail card (hidden for runs without DLA); ``register``
  redraws it when the detail page's head or input changes.
- ``qk_matrix``: for the QK attribution run's head, one query position i and one key
  position j, the [query component, key component] contributions to the pre-softmax score
  s_ij = scaling * q_parts[:, i] @ k_parts[:, j].T (``qk.safetensors``, components named in
  ``meta.json``): the ``top`` rows and columns by total |contribution|, the rest summed into
  ``other`` so the shown matrix still sums to s_ij; ``qk_pairs`` the largest single pairs.
  ``qk_controls`` and ``register`` put them on the Circuits page with query/key selectors.
"""
from __future__ import annotations

from pathlib import Path

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from safetensors import safe_open

from .components import control, dropdown, message
from .run import Run, RunError
from .view import as_int, current_store, pick_head

HIDE = {"display": "none"}
TOP_QK = 12
OTHER = "other"


def _read(path: Path, key: str, index: tuple) -> np.ndarray:
    """``tensor[index]`` of one safetensors entry, reading only that slice."""
    with safe_open(str(path), framework="numpy") as f:
        if key not in f.keys():
            raise KeyError(f"{path.name} has no tensor {key!r}")
        return np.asarray(f.get_slice(key)[index])


def _labels(run: Run, stream: str, index: int, n: int, side: int = 1) -> list[str]:
    """Position labels ``"j · token"`` of the query (side 0) or key (side 1) axis, or numbers."""
    try:
        ax = run.axes(stream, index)[side]
        toks = list(ax.labels) if ax.kind == "tokens" else []
    except (RunError, ValueError, IndexError, AttributeError, TypeError):
        toks = []
    return [f"{j} · {toks[j]}" if j < len(toks) else str(j) for j in range(n)]


def dla_positions(store, run: Run, stream: str, layer: int, head: int, index: int | None) -> tuple:
    """(bar figure or None, message or None): the head's DLA per key position on input ``index``."""
    path = store.file(run.name, "dla.safetensors")
    if path is None or index is None:
        return None, None
    try:
        per = _read(path, f"per_position/{stream}/{layer}", (head,)).astype(np.float64)   # [input, key_pos]
    except KeyError:
        return None, None                       # no direct path from this site (Whisper's encoder)
    except Exception as exc:                    # a corrupt file: a message, not a traceback
        raise RunError(f"run {run.name!r}: dla.safetensors is unreadable ({type(exc).__name__}: "
                       f"{store.clean(exc)})") from None
    if not 0 <= index < per.shape[0]:
        return None, message(f"run {run.name!r}: DLA has {per.shape[0]} inputs; asked for {index}")
    row = per[index]
    info = (run.meta.get("analyses") or {}).get("circuit.dla", {})
    labels = _labels(run, stream, index, len(row))
    fig = go.Figure(go.Bar(x=labels, y=row, marker_color=np.where(row >= 0, "#b2182b", "#2166ac"),
                           hovertemplate="key %{x}<br>%{y:.4g} nats<extra></extra>"))
    fig.update_layout(title={"text": f"{stream} L{layer} H{head}: direct logit attribution by key position, input "
                             f"{index} (sum {row.sum():.4g} nats of {info.get('readout', 'the readout')})", "x": 0.01},
                      height=300, yaxis_title="nats", xaxis={"tickangle": -45, "type": "category"},
                      margin={"t": 50, "b": 90})
    return fig, None


def dla_panel(store, run: Run, stream: str, layer: int, head: int, index: int | None) -> html.Div:
    """The Head detail card ``detail-dla`` (hidden when the run has no DLA for this head)."""
    children, style = _dla_children(store, run, stream, layer, head, index)
    return html.Div(children, id="detail-dla", className="card", style=style)


def _dla_children(store, run, stream, layer, head, index) -> tuple[list, dict | None]:
    try:
        fig, msg = dla_positions(store, run, stream, layer, head, index)
    except RunError as exc:
        return [message(str(exc))], None
    if fig is None and msg is None:
        return [], HIDE
    return [html.H3("Direct logit attribution"), msg or html.Div(),
            dcc.Graph(id="detail-dla-graph", figure=fig or {}, config={"displayModeBar": False})], None


# ---- QK contribution matrix ----------------------------------------------------------------

def qk_info(run: Run) -> dict:
    return (run.meta.get("analyses") or {}).get("circuit.qk", {})


def qk_slices(store, run: Run, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(q_parts[:, i] [component, d_head], k_parts[:, j] [key component, d_head]) float64."""
    path = store.file(run.name, "qk.safetensors")
    if path is None:
        raise RunError(f"run {run.name!r} has no qk.safetensors")
    try:
        return (_read(path, "q_parts", (slice(None), i)).astype(np.float64),
                _read(path, "k_parts", (slice(None), j)).astype(np.float64))
    except IndexError as exc:
        raise RunError(f"run {run.name!r}: position out of range ({exc})") from None
    except Exception as exc:
        raise RunError(f"run {run.name!r}: qk.safetensors is unreadable ({type(exc).__name__}: "
                       f"{store.clean(exc)})") from None


def qk_shape(store, run: Run) -> tuple[int, int]:
    """(query positions, key positions) of the QK run."""
    path = store.file(run.name, "qk.safetensors")
    if path is None:
        raise RunError(f"run {run.name!r} has no qk.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        return f.get_slice("q_parts").get_shape()[1], f.get_slice("k_parts").get_shape()[1]


def contributions(q: np.ndarray, k: np.ndarray, scaling: float) -> np.ndarray:
    """[query component, key component] contributions scaling * q_a . k_b (sums to s_ij)."""
    return scaling * q @ k.T


def _top(size: np.ndarray, top: int) -> np.ndarray:
    return np.sort(np.argsort(-size, kind="stable")[:top])


def qk_matrix(m: np.ndarray, q_names: list, k_names: list, top: int = TOP_QK) -> pd.DataFrame:
    """The ``top`` query rows and key columns of ``m`` by sum of |contribution|, the rest of
    each side summed into ``other`` (the frame sums to ``m.sum()``)."""
    rows, cols = _top(np.abs(m).sum(1), top), _top(np.abs(m).sum(0), top)
    rest_r = np.setdiff1d(np.arange(m.shape[0]), rows)
    rest_c = np.setdiff1d(np.arange(m.shape[1]), cols)
    block = np.zeros((len(rows) + bool(len(rest_r)), len(cols) + bool(len(rest_c))))
    for a, ra in enumerate([[r] for r in rows] + ([list(rest_r)] if len(rest_r) else [])):
        for b, cb in enumerate([[c] for c in cols] + ([list(rest_c)] if len(rest_c) else [])):
            block[a, b] = m[np.ix_(ra, cb)].sum()
    index = [q_names[r] for r in rows] + ([OTHER] if len(rest_r) else [])
    columns = [k_names[c] for c in cols] + ([OTHER] if len(rest_c) else [])
    return pd.DataFrame(block, index=index, columns=columns)


def qk_pairs(m: np.ndarray, q_names: list, k_names: list, top: int = 10) -> pd.DataFrame:
    """The ``top`` (query component, key component) pairs by |contribution|."""
    order = np.argsort(-np.abs(m).ravel(), kind="stable")[:top]
    a, b = np.unravel_index(order, m.shape)
    return pd.DataFrame({"query component": [q_names[x] for x in a], "key component": [k_names[x] for x in b],
                         "contribution": m[a, b]})


def qk_matrix_figure(frame: pd.DataFrame, title: str) -> go.Figure:
    lim = float(np.abs(frame.values).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=frame.values, x=list(frame.columns), y=list(frame.index), colorscale="RdBu_r",
                               zmid=0.0, zmin=-lim, zmax=lim, colorbar={"title": "score"},
                               hovertemplate="query side %{y}<br>key side %{x}<br>%{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="query-side component")
    fig.update_xaxes(title_text="key-side component", tickangle=-45)
    fig.update_layout(title={"text": title, "x": 0.01}, height=560, margin={"l": 130, "b": 130})
    return fig


def qk_view(store, run: Run, i: int, j: int, top: int = TOP_QK) -> tuple[go.Figure, html.Table]:
    """(matrix figure, table of the largest pairs) for query i and key j of the QK run."""
    info = qk_info(run)
    q_names = list(info.get("components") or [])
    k_names = list(info.get("key_components") or q_names)
    t, s = qk_shape(store, run)
    if not (0 <= i < t and 0 <= j < s):
        raise RunError(f"run {run.name!r}: query {i} / key {j} outside {t} query and {s} key positions")
    q, k = qk_slices(store, run, i, j)
    if len(q_names) != q.shape[0] or len(k_names) != k.shape[0]:
        raise RunError(f"run {run.name!r}: meta.json names {len(q_names)}/{len(k_names)} components, "
                       f"qk.safetensors holds {q.shape[0]}/{k.shape[0]}")
    m = contributions(q, k, float(info.get("scaling", 1.0)))
    head = info.get("head", "?")
    stream = head.split("/")[0]
    index = int(info.get("input", 0))
    ql = _labels(run, stream, index, i + 1, side=0)[i]
    kl = _labels(run, stream, index, j + 1, side=1)[j]
    title = (f"{head}: score of query {ql} to key {kl} = {m.sum():.4g}, by upstream component "
             f"(top {top} each side, the rest in 'other')")
    pairs = qk_pairs(m, q_names, k_names)
    table = html.Table([html.Tr([html.Th(c) for c in pairs.columns])] +
                       [html.Tr([html.Td(r["query component"]), html.Td(r["key component"]),
                                 html.Td(f"{r['contribution']:.4g}")]) for _, r in pairs.iterrows()],
                       id="circuits-qk-pairs", className="metrics")
    return qk_matrix_figure(qk_matrix(m, q_names, k_names, top), title), table


def qk_controls(store, run: Run) -> list:
    """Query/key selectors, the matrix and the top pairs for the Circuits page's QK run."""
    info = qk_info(run)
    try:
        t, s = qk_shape(store, run)
        i, j = t - 1, min(int(info.get("key", 0)), s - 1)
        fig, table = qk_view(store, run, i, j)
        note = html.Div()
    except (RunError, KeyError, ValueError) as exc:
        return [message(str(exc))]
    stream, index = info.get("head", "?").split("/")[0], int(info.get("input", 0))
    opts = lambda labels: [{"label": x, "value": n} for n, x in enumerate(labels)]  # noqa: E731
    return [html.Div([control("Query position", dropdown("circuits-qk-query", opts(_labels(run, stream, index, t, 0)),
                                                         i, width="220px")),
                      control("Key position", dropdown("circuits-qk-key", opts(_labels(run, stream, index, s, 1)),
                                                       j, width="220px"))], className="controls"),
            note, html.Div([html.Div(dcc.Graph(id="circuits-qk-matrix", figure=fig), className="card grow"),
                            html.Div([html.H3("Largest pairs"), html.Div(table, id="circuits-qk-table")],
                                     className="card side")], className="row")]


def register(app: dash.Dash) -> None:
    """The callbacks of these panels: Head detail's DLA card, the Circuits page's QK matrix."""

    @app.callback(Output("detail-dla", "children"), Output("detail-dla", "style"),
                  Input("detail-stream", "value"), Input("detail-layer", "value"),
                  Input("detail-head", "value"), Input("detail-input", "value"),
                  State("detail-run", "value"), prevent_initial_call=True)
    def _detail_dla(stream, layer, head, index, name):
        try:
            run = current_store().run(name)
            stream, layer, head = pick_head(run, stream, layer, head)
        except RunError:
            raise PreventUpdate from None
        return _dla_children(current_store(), run, stream, layer, head, as_int(index))

    @app.callback(Output("circuits-qk-matrix", "figure"), Output("circuits-qk-table", "children"),
                  Input("circuits-qk-query", "value"), Input("circuits-qk-key", "value"),
                  State("circuits-run", "value"), prevent_initial_call=True)
    def _qk(i, j, name):
        store = current_store()
        try:
            fig, table = qk_view(store, store.run(name), as_int(i, 0), as_int(j, 0))
        except (RunError, ValueError) as exc:
            return {"layout": {"title": {"text": str(exc)}}}, message(str(exc))
        return fig, table
