"""A page whose whole body is built from one run chosen in a run picker.

Shared by the Head grid, Head detail, Flow, Patching & pruning and Export pages: the layout (title, run picker,
body, view store) and the callback that rebuilds the body when another run is picked.
Ids: ``<prefix>-run`` (picker), ``<prefix>-body``, ``<prefix>-view``.
"""
from __future__ import annotations

from typing import Callable

import dash
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from .components import page_body, page_title, run_picker
from .view import current_store, unchanged


def run_page(prefix: str, title: str, sub: str, build: Callable[..., tuple], run, *args) -> html.Div:
    """Layout: ``build(store, run, *args)`` -> ``(children, view)`` fills the body."""
    store = current_store()
    r, body, view = page_body(store, run, build, *args)
    return html.Div([page_title(title, sub),
                     html.Div(run_picker(prefix, store, r.name if r else None), className="controls"),
                     html.Div(body, id=f"{prefix}-body"),
                     dcc.Store(id=f"{prefix}-view", data=view)])


def register_run_switch(app: dash.Dash, prefix: str, build: Callable[..., tuple], *args,
                        url_keys: tuple[str, ...] = (), url_view: Callable[[dict], dict] | None = None) -> None:
    """Rebuild ``<prefix>-body`` when ``<prefix>-run`` changes (``build(store, run, *args)``);
    the URL (shell view) gets ``url_view(view)`` if given, else the run name and the
    ``url_keys`` of the new view."""

    @app.callback(Output(f"{prefix}-body", "children"), Output(f"{prefix}-view", "data"),
                  Output("shell-view", "data", allow_duplicate=True),
                  Input(f"{prefix}-run", "value"), State(f"{prefix}-view", "data"),
                  prevent_initial_call=True)
    def _run_changed(name, shown):
        if not name or unchanged(shown, run=name):
            raise PreventUpdate
        _, body, view = page_body(current_store(), name, build, *args)
        if url_view is not None:
            return body, view, url_view(view)
        return body, view, {"run": name, **{k: view.get(k) for k in url_keys}}
