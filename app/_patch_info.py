"""What a patching / pruning run did, from its ``meta.json``: the card at the top of the
Patching page.

Names the task and what its metric measures (``inputs.task``, ``inputs.description``), the
metric, method, ablation and direction (``analyses.patch``), the metric on the clean and on
the corrupt prompts (means over pairs; ``clean_metric_mean`` / ``corrupt_metric_mean``), the
number of pairs (``inputs.n``) and example prompts: the first clean prompts and their corrupt
partners (``inputs.corrupt_items``, else the task's own ``task_meta.corrupt`` texts), each
linking to the Head detail page when the run saved their patterns.
"""
from __future__ import annotations

from dash import dcc, html

from .metrics import format_value
from .run import Run
from .view import href

EXAMPLES = 2


def _number(v) -> str:
    return "n/a" if v is None else format_value(float(v))


def _text(item) -> str:
    if isinstance(item, dict):
        return str(item.get("text") or " ".join(map(str, (item.get("tokens") or {}).get("self", []))) or "?")
    return str(item)


def task_card(run: Run, with_patterns: bool, with_corrupt: bool) -> html.Div | None:
    """The card, or None for a run that is not a task run (no ``inputs.task``)."""
    inputs = run.meta.get("inputs") or {}
    task = inputs.get("task")
    if not task:
        return None
    analyses = run.meta.get("analyses") or {}
    patch = analyses.get("patch") or {}
    metric = patch.get("metric") or {}
    metric_name = metric.get("name") if isinstance(metric, dict) else metric
    n = inputs.get("n", len(run.items))
    facts = [("task", task), ("metric", metric_name or "n/a"),
             ("method", ", ".join(str(patch[k]) for k in ("method", "ablation", "direction") if patch.get(k)) or
              ", ".join(sorted(analyses)) or "n/a"),
             ("pairs", n), ("metric on clean prompts", _number(patch.get("clean_metric_mean"))),
             ("metric on corrupt prompts", _number(patch.get("corrupt_metric_mean")))]
    rows = [html.Tr([html.Th(k), html.Td(str(v))]) for k, v in facts]
    clean = run.items[:EXAMPLES]
    corrupt = inputs.get("corrupt_items") or ((inputs.get("task_meta") or {}).get("corrupt") or [])[:EXAMPLES]
    examples = []
    for i, item in enumerate(clean):
        index = int(item.get("index", i))
        link = (lambda prompt: dcc.Link("patterns →", href=href("/detail", run=run.name, input=index, prompt=prompt),
                                        id=f"patching-open-{prompt}-{i}", style={"marginLeft": "8px"}))
        line = [html.B(f"pair {index}: "), html.Span("clean "), html.Code(_text(item)),
                link("clean") if with_patterns else None]
        if i < len(corrupt):
            line += [html.Br(), html.Span("corrupt ", style={"marginLeft": "52px"}), html.Code(_text(corrupt[i])),
                     link("corrupt") if with_corrupt else None]
        examples.append(html.Li(line))
    return html.Div([
        html.H3(f"Task: {task}"),
        html.P(inputs.get("description") or "", className="sub"),
        html.Table(html.Tbody(rows), className="metrics", id="patching-task-facts", style={"width": "auto"}),
        html.P(f"Example prompts (first {len(clean)} of {n})", style={"margin": "8px 0 2px"}),
        html.Ul(examples, id="patching-examples", style={"fontSize": "13px"}),
        html.P("Click any cell of a heatmap below to open that head's pattern.", className="sub"),
    ], className="card", id="patching-task")
