"""Small shared pieces of page layout: messages, run pickers, metric tables."""
from __future__ import annotations

import logging
from typing import Callable

from dash import dcc, html

from .metrics import format_value, label
from .run import RunError
from .store import RunStore

log = logging.getLogger("workbench.app")


def message(text: str, kind: str = "error") -> html.Div:
    """A coloured box with a plain-text message (errors never show a traceback)."""
    return html.Div(text, className=f"msg msg-{kind}", role="alert" if kind == "error" else None)


def safe(build: Callable[..., tuple], *args, view: dict | None = None) -> tuple[list, dict]:
    """``build(*args)`` -> ``(children, view)``, or a message if it fails, so a bad run never
    breaks the page.

    RunError messages are shown as they are; anything else (a run whose files are readable
    but inconsistent) is logged with its traceback on the server and summarised in the page.
    """
    try:
        return build(*args)
    except RunError as exc:
        return [message(str(exc))], dict(view or {})
    except Exception as exc:  # noqa: BLE001 - the page must survive any one bad run
        log.exception("could not build %s", getattr(build, "__qualname__", build))
        text = f"could not draw this view: {type(exc).__name__}: {exc}"
        store = next((a for a in args if isinstance(a, RunStore)), None)
        return [message(store.clean(text) if store else text)], dict(view or {})


def attempt(read: Callable, *args, default=None) -> tuple:
    """``(read(*args), None)``, or ``(default, message box)`` when a file it needs is unreadable
    (RunError): the panel that needs the file shows why, the rest of the page stays."""
    try:
        return read(*args), None
    except RunError as exc:
        return default, message(str(exc))


def page_body(store: RunStore, requested, build: Callable[..., tuple], *args) -> tuple:
    """``(run or None, children, view)`` for the requested run: ``build(store, run, *args)``
    returns the page body and the view it shows; a missing or unreadable run, or a failing
    build, gives a message instead (and a view holding just the run name)."""
    from .view import one, pick_run

    run, err = pick_run(store, requested)
    if run is None:
        return None, ([message(err)] if err else [no_runs(store)]), {"run": one(requested)}
    children, view = safe(build, store, run, *args, view={"run": run.name})
    return run, children, view


def no_runs(store: RunStore) -> html.Div:
    return message("No readable runs in RUNS_DIR (the folder given to `workbench serve`). "
                   "Create one with `workbench run smollm2-135m --out RUNS_DIR/smollm2`.", "info")


def run_picker(prefix: str, store: RunStore, value: str | None, *, label_text: str = "Run",
               clearable: bool = False, exclude: str | None = None, same_model: str | None = None
               ) -> html.Div:
    """A labelled dropdown of readable runs; id ``<prefix>-run`` (or ``<prefix>-compare``)."""
    opts = []
    for s in store.summaries():
        if s.run is None or s.name == exclude:
            continue
        if same_model is not None and s.run.model != same_model:
            continue
        opts.append({"label": f"{s.name}  ({s.run.model})", "value": s.name})
    suffix = "compare" if exclude is not None else "run"
    return control(label_text, dcc.Dropdown(id=f"{prefix}-{suffix}", options=opts, value=value,
                                            clearable=clearable, style={"minWidth": "280px"}))


def control(text: str, component, width: str | None = None) -> html.Div:
    style = {"width": width} if width else None
    return html.Div([html.Label(text, className="ctl-label"), component], className="ctl",
                    style=style)


def dropdown(cid: str, options: list, value, *, clearable: bool = False, multi: bool = False,
             width: str = "140px") -> dcc.Dropdown:
    opts = [o if isinstance(o, dict) else {"label": str(o), "value": o} for o in options]
    return dcc.Dropdown(id=cid, options=opts, value=value, clearable=clearable, multi=multi,
                        style={"minWidth": width})


def metrics_table(row: dict, cid: str) -> html.Table:
    """Two-column table of a head's metrics (``stream/layer/head`` first); each name has a
    tooltip with the metric's definition, unit and source; a metric that does not apply
    to the head reads "n/a"."""
    from ._definitions import tooltip

    keys = [k for k in row if k not in ("stream", "layer", "head")]
    body = [html.Tr([html.Th(label(k), title=tooltip(k)), html.Td(format_value(row[k]))]) for k in keys]
    return html.Table([html.Tbody(body)], id=cid, className="metrics")


def page_title(text: str, sub: str | None = None) -> html.Div:
    return html.Div([html.H2(text), html.P(sub, className="sub") if sub else None],
                    className="page-title")
