"""Figures and the HTML / Markdown text of ``workbench report``.

Figures reuse the dashboard's builders (``workbench.app.fig_*``, plain functions of tables):
head grids (the ranking metric, the taxonomy class, up to three more scores), the patching
heatmap, the pruning curve and token-importance flow. HTML is one self-contained file: plotly.js
from the installed plotly package is inlined once (no CDN), every figure is a div. Markdown has
the tables inline and each figure in ``<stem>_files/`` beside it twice: a PNG shown inline (so
the report renders on GitHub; drawn by kaleido, which drives an installed Chrome or Chromium)
and an interactive HTML file (sharing one ``plotly.min.js``). Without kaleido or a browser for
it, the Markdown says so and links the interactive files only.
"""
from __future__ import annotations

import html
import json
import re

import pandas as pd

from ._report_content import TAXONOMY, Report, is_numeric
from .schema import HEAD_KEYS, SCHEMA_VERSION, analysis_of

GENERATOR = "workbench report"
MAX_EXTRA_GRIDS = 3
KALEIDO_ATTEMPTS = 3          # browser sessions tried for the Markdown report's PNGs


def figures(rep: Report) -> list[tuple[str, object]]:
    """[(title, plotly Figure)] for the report (no model, no torch)."""
    from .app.fig_flow import flow_matrix, token_layer_figure
    from .app.fig_grid import head_grid_figure
    from .app.fig_patching import effect_heatmap, prune_curve_figure

    run, meta, heads = rep.run, rep.run.meta, rep.run.heads
    out = []
    if rep.other is not None:
        base = rep.primary.removeprefix("diff.")
        out.append((f"difference {base}: {run.name} - {rep.other.name}",
                    head_grid_figure(heads, base, compare=rep.other.heads, meta=meta)))
        return out
    if rep.primary is not None:
        if analysis_of(rep.primary) == "patch":
            out.append((f"patching heatmap: {rep.primary}", effect_heatmap(heads, rep.primary, meta)))
        else:
            out.append((f"head grid: {rep.primary}", head_grid_figure(heads, rep.primary, meta=meta)))
    tax = next((c for c in TAXONOMY if c in heads.columns), None)
    if tax is not None:
        out.append((f"head grid: {tax}", head_grid_figure(heads, tax, meta=meta)))
    extra = [c for c in heads.columns if c not in HEAD_KEYS and c != rep.primary and is_numeric(heads[c])
             and heads[c].notna().any() and heads[c].nunique() > 1 and "rank" not in c and "step_" not in c]
    for c in extra[:MAX_EXTRA_GRIDS]:
        out.append((f"head grid: {c}", head_grid_figure(heads, c, meta=meta)))
    if "prune_curve" in run.tables:
        out.append(("pruning curve", prune_curve_figure(run.table("prune_curve"))))
    table = next((t for t in ("flow", "rollout") if t in run.tables), None)   # flow's table, else rollout's
    if table is not None:
        flow = run.table(table)
        quantity = next((q for q in (table, "rollout", "flow", "attention") if q in flow.columns), None)
        if quantity is not None and len(flow):
            first = flow.iloc[0]
            values, tokens, layers = flow_matrix(flow, str(first["stream"]), int(first["input"]), quantity)
            out.append((f"{quantity} per layer, input {int(first['input'])}",
                        token_layer_figure(values, tokens, layers=layers, colorbar=quantity)))
    align = alignment(run)
    if align is not None:
        out.append(align)
    return out


def alignment(run, index: int = 0, k: int = 3) -> tuple[str, object] | None:
    """(title, figure) of the word alignment of input ``index`` from the ``k`` best
    cross-attention heads (the dashboard's Flow page figure: averaged z-scored cross-attention,
    DTW path, words on their own time axis, spectrogram), or None when the run has no cross
    stream or saved no cross pattern of that input. Heads: the alignment analysis's best
    (``alignment.score``) when the run has it, else the best by peak x monotonicity on the input."""
    import numpy as np

    from .app import alignment as al
    from .app.fig_flow import alignment_figure
    from .schema import pattern_key

    heads = run.heads
    cross = heads[heads["stream"] == "cross"]
    items = (run.meta.get("inputs") or {}).get("items") or []
    tokens = ((items[index].get("tokens") or {}).get("decoder") if len(items) > index else None) or []
    files = run.tensors
    if cross.empty or not tokens or "patterns" not in files:
        return None
    layers = sorted({int(x) for x in cross["layer"]})
    if any(pattern_key("cross", layer, index) not in files["patterns"] for layer in layers):
        return None
    site = {layer: files["patterns"][pattern_key("cross", layer, index)].load().astype(np.float32)
            for layer in layers}                                        # [head, token, frame] each
    if "alignment.score" in cross.columns and cross["alignment.score"].notna().any():
        scored = cross.dropna(subset=["alignment.score"])
        scores = {(int(layer), int(h)): float(v) for layer, h, v in
                  zip(scored["layer"], scored["head"], scored["alignment.score"])}
        how = "alignment.score"
    else:
        scores = {(layer, h): al.alignment_score(site[layer][h], tokens) for layer in layers
                  for h in range(site[layer].shape[0])}
        how = "peak x monotonicity"
    chosen = al.best_heads(scores, k=k)
    matrix = al.average_heads([site[layer][h] for layer, h in chosen])
    predicted = al.predicted_tokens(tokens)
    words = al.word_timings(predicted, matrix)
    mel = files["inputs"]["mel/%d" % index].load() if "inputs" in files and f"mel/{index}" in files["inputs"] \
        else None
    names = ", ".join(f"L{layer}H{h}" for layer, h in chosen)
    title = f"word alignment, input {index}: cross heads {names} (best by {how})"
    return title, alignment_figure(matrix, predicted, words, mel, title=title)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _items(prov: dict) -> list[tuple[str, str]]:
    model = prov["model"]
    inputs = prov["inputs"]
    return [("run", f"{prov['run']} ({prov['kind']}), schema_version {prov['schema_version']}"),
            ("model", f"{model.get('name')} ({model.get('family', '?')}, {model.get('source', '?')}, "
                      f"{model.get('dtype', '?')})"),
            ("inputs", ", ".join(f"{k}: {_fmt(v)}" for k, v in inputs.items() if not isinstance(v, (dict, list)))),
            ("analyses", json.dumps(prov["analyses"], default=str, sort_keys=True)[:2000]),
            ("command", str(prov["command"])), ("seed", _fmt(prov["seed"])), ("created", _fmt(prov["created"])),
            ("git commit", _fmt(prov["git_commit"])),
            ("packages", ", ".join(f"{k} {v}" for k, v in prov["packages"].items() if v))]


def _title(rep: Report) -> str:
    vs = f" vs {rep.other.name}" if rep.other is not None else ""
    return f"Head report: {rep.run.name}{vs} ({rep.run.model})"


def _ranking_note(rep: Report) -> str:
    if rep.primary is None:
        return "no numeric metric to rank by; heads in table order"
    how = "|value|" if rep.other is not None or analysis_of(rep.primary.removeprefix("diff.")) in (
        "patch", "importance", "prune", "dla", "path", "atp") else "value"
    return f"ranked by {how} of {rep.primary} (largest first; n/a: the metric does not apply to the head)"


def to_html(rep: Report) -> str:
    """One self-contained HTML document (plotly.js inlined)."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    figs = figures(rep)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='generator' content='{GENERATOR}'><meta name='workbench-schema-version' "
             f"content='{SCHEMA_VERSION}'><title>{e(_title(rep))}</title><style>{_CSS}</style>"
             f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
             f"<h1>{e(_title(rep))}</h1>", "<h2>Provenance</h2><table class='prov'>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _items(rep.provenance)]
    if rep.other is not None:
        parts += [f"<tr><th>compared with</th><td>{e(v)}</td></tr>" for k, v in _items(rep.provenance["compared_with"])
                  if k in ("run", "inputs", "command", "created")]
    parts.append("</table><h2>Figures</h2>")
    for i, (title, fig) in enumerate(figs):
        parts.append(f"<div class='figure' data-title='{e(title)}'><h3>{e(title)}</h3>"
                     + _untitled(fig).to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}")
                     + "</div>")
    parts.append(f"<h2>Ranked heads</h2><p>{e(_ranking_note(rep))}</p>")
    parts.append(_html_table(rep.heads, "ranked-heads"))
    parts.append("<h2>Per-layer summary</h2>" + _html_table(rep.layers, "layers"))
    parts.append("<h2>Methods</h2><ul>" + "".join(
        f"<li><b>{e(n)}</b>: {e(what)}. <i>{e(cite)}</i></li>" for n, what, cite in rep.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _untitled(fig):
    """A copy of ``fig`` without its own title (the HTML report heads each figure with an h3;
    the Markdown report's PNG and HTML files keep the title, as they are viewed alone)."""
    import plotly.graph_objects as go

    out = go.Figure(fig)
    if out.layout.title.text:
        out.update_layout(title_text=None, margin_t=min(out.layout.margin.t or 40, 40))
    return out


def _html_table(df: pd.DataFrame, css_id: str) -> str:
    return df.to_html(index=False, escape=True, na_rep="n/a", table_id=css_id, border=0,
                      float_format=lambda v: f"{v:.4g}")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def markdown_figures(rep: Report) -> list[tuple[str, str, object]]:
    """[(file stem, title, Figure)] of the Markdown report, stems ``NN-<slug>``."""
    return [(f"{i + 1:02d}-{slug(t)}", t, f) for i, (t, f) in enumerate(figures(rep))]


def to_markdown(rep: Report, figure_dir: str, figs: list[tuple[str, str, object]], images: str | None) -> str:
    """The Markdown text. ``figs``: ``markdown_figures(rep)``, written as ``<stem>.html`` (and,
    unless ``images`` says why not, ``<stem>.png``) in ``figure_dir``, a folder name relative
    to the Markdown file."""
    lines = [f"<!-- {GENERATOR}, schema_version {SCHEMA_VERSION} -->", f"# {_md(_title(rep))}", "",
             "## Provenance", ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in _items(rep.provenance)]
    if rep.other is not None:
        lines += [f"- **compared with {k}**: {_md(v)}" for k, v in _items(rep.provenance["compared_with"])
                  if k in ("run", "inputs", "command", "created")]
    lines += ["", "## Figures", ""]
    if images is not None:
        lines += [f"No static images: {_md(images)}. The figures are interactive HTML files beside this report.", ""]
    for stem, t, _ in figs:
        if images is None:
            lines += [f"### {_md(t)}", "", f"![{_md(t)}]({figure_dir}/{stem}.png)", "",
                      f"[interactive version]({figure_dir}/{stem}.html)", ""]
        else:
            lines.append(f"- [{_md(t)}]({figure_dir}/{stem}.html)")
    lines += ["", "## Ranked heads", "", _ranking_note(rep), "", _md_table(rep.heads), "",
              "## Per-layer summary", "", _md_table(rep.layers), "", "## Methods", ""]
    lines += [f"- **{n}**: {_md(what)}. *{_md(cite)}*" for n, what, cite in rep.notes]
    return "\n".join(lines) + "\n"


def write_images(figs: list[tuple[str, str, object]], folder) -> str | None:
    """Write ``<stem>.png`` of every figure into ``folder`` with kaleido (one browser session).

    Returns None, or why no image was written (kaleido missing, or no Chrome / Chromium for it);
    other errors propagate."""
    if not figs:
        return None
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
    except ImportError:
        return "kaleido is not installed (it is in the workbench's app extra)"
    for attempt in range(1, KALEIDO_ATTEMPTS + 1):
        try:
            pio.write_images([f for _, _, f in figs], [folder / f"{stem}.png" for stem, _, _ in figs],
                             format="png", width=[_width(f) for _, _, f in figs],
                             height=[_height(f) for _, _, f in figs])
            return None
        except RuntimeError as exc:
            # kaleido's page script not loaded yet when the figure is sent (seen on a loaded machine):
            # JavascriptError "kaleido_scopes is not defined"; a fresh browser session draws it
            if type(exc).__name__ == "JavascriptError" and attempt < KALEIDO_ATTEMPTS:
                continue
            if type(exc).__name__ != "JavascriptError" and "chrome" in str(exc).lower():
                return "kaleido found no Chrome or Chromium to draw them (install chromium)"
            raise
    return None


def _width(fig) -> int:
    return int(fig.layout.width or 900)


def _height(fig) -> int:
    return int(fig.layout.height or 500)


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(_md(_fmt(v)) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "font-size:12px;margin-bottom:1em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}"
        ".prov td,.prov th{text-align:left}.figure{margin-bottom:1.5em}")

__all__ = ["GENERATOR", "alignment", "figures", "markdown_figures", "slug", "to_html", "to_markdown", "write_images"]
