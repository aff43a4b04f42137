"""Runs page: every run under RUNS_DIR; pick one to open, or two of one model to compare.

The status column says "ok", why a run cannot be opened, or which of its files are
unreadable ("patterns.safetensors unreadable: ..."): such a run still opens, and only the
panels that need the broken file show a message.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, dash_table, dcc, html

from ..components import message, no_runs, page_title
from ..view import current_store, href

COLUMNS = ("name", "model", "family", "kind", "prompt set", "inputs", "analyses", "created",
           "status")


def _rows(store) -> list[dict]:
    rows = []
    for s in store.summaries(check_files=True):
        if s.run is None:
            rows.append({"name": s.name, "status": s.error, "openable": False})
            continue
        r, m = s.run, s.run.meta
        rows.append({"name": s.name, "model": r.model, "family": m["model"].get("family", ""),
                     "kind": r.kind, "prompt set": m["inputs"].get("prompt_set", ""),
                     "inputs": len(r.items), "analyses": ", ".join(sorted(m.get("analyses", {}))),
                     "created": str(m.get("created", ""))[:19].replace("T", " "),
                     "status": "; ".join(s.problems) or "ok", "openable": True})
    return rows


def layout(**_query) -> html.Div:
    store = current_store()
    rows = _rows(store)
    table = dash_table.DataTable(
        id="runs-table", data=rows, columns=[{"name": c, "id": c} for c in COLUMNS],
        row_selectable="multi", selected_rows=[], sort_action="native", page_size=25,
        style_cell={"textAlign": "left", "fontSize": 13, "maxWidth": 420,
                    "overflow": "hidden", "textOverflow": "ellipsis", "whiteSpace": "normal"},
        style_header={"fontWeight": 600},
        style_data_conditional=[{"if": {"filter_query": '{status} != "ok"'},
                                 "backgroundColor": "#fde8e8", "color": "#8a1f1f"}])
    return html.Div([
        page_title("Runs", f"{len(rows)} run folder(s) in RUNS_DIR"),
        no_runs(store) if not any(r["openable"] for r in rows) else None,
        html.Div(table, className="card"),
        html.Div(id="runs-actions", className="card",
                 children=message("Select one run to open it, or two runs of the same model "
                                  "to compare them.", "info")),
    ])


def _actions(rows: list[dict], selected: list[int]) -> list:
    picked = [{"name": str(r.get("name", "")), "model": str(r.get("model", "")),
               "status": str(r.get("status", "")), "openable": r.get("openable")}
              for r in (rows[i] for i in selected if 0 <= i < len(rows)) if isinstance(r, dict)]
    bad = [r for r in picked if r["openable"] is not True]
    if bad:
        return [message(f"{r['name']}: {r['status']}") for r in bad]
    if not picked:
        return [message("Select one run to open it, or two runs of the same model to compare "
                        "them.", "info")]
    if len(picked) == 1:
        name = picked[0]["name"]
        pages = (("Head grid", "/grid"), ("Head detail", "/detail"), ("Flow", "/flow"),
                 ("Patching & pruning", "/patching"), ("Export", "/export"))
        return [html.Span(f"{name}: "), *[dcc.Link(t, href=href(p, run=name), id=f"runs-open-{i}",
                                                   style={"marginRight": "16px"})
                                          for i, (t, p) in enumerate(pages)]]
    if len(picked) > 2:
        return [message("Pick at most two runs to compare.", "info")]
    a, b = picked
    if a["model"] != b["model"]:
        return [message(f"{a['name']} ({a['model']}) and {b['name']} ({b['model']}) are runs of "
                        "different models; a head-by-head difference needs the same model.")]
    return [dcc.Link(f"Compare {a['name']} − {b['name']} in the head grid",
                     href=href("/grid", run=a["name"], compare=b["name"]), id="runs-compare")]


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/", name="Runs",
                       title="workbench · runs", order=0, layout=layout)

    @app.callback(Output("runs-actions", "children"), Input("runs-table", "selected_rows"),
                  State("runs-table", "data"), prevent_initial_call=True)
    def _select(selected, rows):
        return _actions(rows or [], selected or [])

