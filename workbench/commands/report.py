"""``workbench report RUN_DIR [--compare RUN_DIR2] --format html|md|csv|parquet|json --out FILE``.

Ranked heads with every metric and taxonomy class, per-layer summaries, figures, provenance
from ``meta.json`` and method notes (``workbench._report_content`` / ``_report_render``).
CSV and Parquet hold the ranked head table (``rank``, HEAD_KEYS, metric columns, and a
``schema_version`` column; Parquet also carries the provenance as file metadata
``workbench``); JSON holds everything as one object. ``--out`` must not exist (nor, for
Markdown, its ``<stem>_files`` figure folder): the report never replaces a file. Files are
written to a temporary name beside ``--out`` and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

FORMATS = {"html": ".html", "md": ".md", "csv": ".csv", "parquet": ".parquet", "json": ".json"}


def register(sub) -> None:
    p = sub.add_parser("report", help="head-importance report of a run folder (html, md, csv, parquet, json)")
    p.add_argument("run_dir", type=Path, help="run folder (from workbench run, patch, prune or circuit)")
    p.add_argument("--compare", type=Path, default=None, metavar="RUN_DIR2",
                   help="a second run of the same model: report per-head differences RUN_DIR - RUN_DIR2")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="html | md | csv | parquet | json (default: from the --out suffix)")
    p.add_argument("--out", type=Path, required=True, help="file to create (must not exist)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError

    fmt = args.format or {v: k for k, v in FORMATS.items()}.get(args.out.suffix.lower())
    if fmt not in FORMATS:
        raise UserError(f"unknown report format {args.format or args.out.suffix!r}; use --format "
                        f"{' | '.join(FORMATS)} (or an --out ending in {', '.join(FORMATS.values())})")
    write_report(args.run_dir, args.out, fmt, compare=args.compare, cli=True)
    print(f"report ({fmt}) -> {args.out}")
    return 0


def write_report(run_dir, out, fmt: str, *, compare=None, cli: bool = False) -> Path:
    """Write the report of ``run_dir`` (compared with ``compare`` when given) to ``out``.

    Raises:
        UserError (one line): not a run folder, runs of different models, unknown ``fmt``,
        ``out`` (or Markdown's figure folder) already exists, its folder is missing."""
    from .._report_content import build
    from ..errors import UserError
    from ..run_folder import open_run

    if fmt not in FORMATS:
        raise UserError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    flag = "--out" if cli else "out"
    figure_dir = out.with_name(out.stem + "_files")
    if os.path.lexists(out):
        raise UserError(f"{out} exists; the report never replaces a file: choose another {flag} or remove it")
    if fmt == "md" and os.path.lexists(figure_dir):
        raise UserError(f"{figure_dir} exists (the Markdown report's figure folder); choose another {flag}")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} is not a folder; create it or choose another {flag}")
    rep = build(open_run(run_dir), open_run(compare) if compare is not None else None)
    {"html": _html, "md": _markdown, "csv": _csv, "parquet": _parquet, "json": _json}[fmt](rep, out, figure_dir)
    return out


def _table(rep):
    from ..schema import SCHEMA_VERSION

    t = rep.heads.copy()
    t["schema_version"] = SCHEMA_VERSION
    return t


def _atomic(out: Path, write) -> None:
    """``write(tmp_path)`` then rename to ``out``; the temporary file is removed on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        if os.path.lexists(out):            # appeared while we worked: still never replaced
            raise FileExistsError(f"{out} appeared while the report was written; nothing replaced")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _html(rep, out, _figure_dir) -> None:
    from .._report_render import to_html

    text = to_html(rep)
    _atomic(out, lambda p: p.write_text(text, encoding="utf-8"))


def _markdown(rep, out, figure_dir) -> None:
    from .._report_render import markdown_figures, to_markdown, write_images

    figs = markdown_figures(rep)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{figure_dir.name}.", dir=out.parent))
    try:
        for stem, _, fig in figs:
            fig.write_html(str(tmp_dir / f"{stem}.html"), include_plotlyjs="directory", full_html=True)
        if figs and not (tmp_dir / "plotly.min.js").exists():
            from plotly.offline import get_plotlyjs

            (tmp_dir / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
        images = write_images(figs, tmp_dir)
        text = to_markdown(rep, figure_dir.name, figs, images)
        os.chmod(tmp_dir, 0o755)
        os.rename(tmp_dir, figure_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        _atomic(out, lambda p: p.write_text(text, encoding="utf-8"))
    except BaseException:
        shutil.rmtree(figure_dir, ignore_errors=True)
        raise


def _csv(rep, out, _figure_dir) -> None:
    _atomic(out, lambda p: _table(rep).to_csv(p, index=False))


def _parquet(rep, out, _figure_dir) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._report_render import GENERATOR
    from ..schema import SCHEMA_VERSION

    table = pa.Table.from_pandas(_table(rep), preserve_index=False)
    extra = {"generator": GENERATOR, "schema_version": SCHEMA_VERSION, "provenance": rep.provenance}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"workbench": json.dumps(extra, default=str).encode()})
    _atomic(out, lambda p: pq.write_table(table, p))


def _json(rep, out, _figure_dir) -> None:
    from .._report_content import records
    from .._report_render import GENERATOR
    from ..schema import SCHEMA_VERSION

    doc = {"generator": GENERATOR, "schema_version": SCHEMA_VERSION, "provenance": rep.provenance,
           "ranked_by": rep.primary, "heads": records(rep.heads), "layers": records(rep.layers),
           "methods": [{"analysis": n, "measures": what, "cite": cite} for n, what, cite in rep.notes]}
    text = json.dumps(doc, indent=1, default=str, allow_nan=False)
    _atomic(out, lambda p: p.write_text(text, encoding="utf-8"))
