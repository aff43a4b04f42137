"""Export page: download the head table (CSV, Parquet), extra tables, and the report."""
from __future__ import annotations

import dash
from dash import dash_table, dcc, html

from ..report import importance_report
from ..routes import download_url
from ..run import Run
from ..run_page import register_run_switch, run_page


def _links(run: str, table: str) -> html.Div:
    return html.Div([
        html.Span(f"{table}: ", style={"fontWeight": 600}),
        html.A("CSV", href=download_url(run, table, "csv"), id=f"export-{table}-csv",
               download=f"{run}-{table}.csv"),
        html.A("Parquet", href=download_url(run, table, "parquet"), id=f"export-{table}-parquet",
               download=f"{run}-{table}.parquet"),
    ], className="downloads")


def _column(heads, c: str) -> dict:
    if heads[c].dtype.kind == "f":
        return {"name": c, "id": c, "type": "numeric", "format": {"specifier": ".4~g"}}
    return {"name": c, "id": c}


def _records(heads) -> list[dict]:
    """Rows for the DataTable: NaN -> empty, non-scalar cells (lists, arrays) -> text."""
    def cell(v):
        if isinstance(v, (list, tuple, dict)) or getattr(v, "ndim", 0):
            return str(v)
        return None if v is None or (isinstance(v, float) and v != v) else v
    return [{k: cell(v) for k, v in row.items()} for row in heads.to_dict("records")]


def _body(store, run: Run) -> tuple[list, dict]:
    report = importance_report(run)
    heads = run.heads
    return [
        html.Div([html.H3("Tables"), _links(run.name, "heads"),
                  *[_links(run.name, t) for t in store.table_names(run.name)],
                  html.Div(html.A("Head-importance report (Markdown)", id="export-report",
                                  href=f"/download/{run.name}/report.md",
                                  download=f"{run.name}-head-importance.md"),
                           className="downloads"),
                  html.Div(html.A("Head report (HTML, works offline)", id="export-report-html",
                                  href=f"/download/{run.name}/report.html",
                                  download=f"{run.name}-report.html"), className="downloads")],
                 className="card"),
        html.Div([html.H3(f"Head table ({len(heads)} heads)"), dash_table.DataTable(
            id="export-preview", data=_records(heads),
            columns=[_column(heads, c) for c in heads.columns],
            page_size=15, sort_action="native", filter_action="native",
            style_table={"overflowX": "auto"}, style_cell={"fontSize": 12})], className="card"),
        html.Div(dcc.Markdown(report, id="export-report-preview"), className="card"),
    ], {"run": run.name}


def layout(run=None, **_q):
    return run_page("export", "Export", "head table, extra tables and the head-importance report", _body, run)


def register(app: dash.Dash) -> None:
    """Add this page and its callbacks to ``app`` (called by ``server.create_app``)."""
    dash.register_page(__name__, path="/export", name="Export",
                       title="workbench · export", order=5, layout=layout)
    register_run_switch(app, "export", _body)
