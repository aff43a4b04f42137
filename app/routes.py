"""Plain Flask routes beside the Dash pages: downloads and audio.

- ``/download/<run>/<table>.csv`` and ``.parquet``: the head table (``heads``) or any extra
  ``<table>.parquet`` of the run;
- ``/download/<run>/report.md``: the head-importance report;
- ``/download/<run>/report.html``: the self-contained HTML report of ``workbench report``;
- ``/media/<run>/audio/<index>.wav``: an input's waveform as 16-bit WAV.

Run and table names go through ``RunStore`` validation; failures are a short text reply
(404), never a traceback or a file outside RUNS_DIR.
"""
from __future__ import annotations

import io

from flask import Flask, Response

from ..run_folder import RunFolder
from .report import importance_report
from .run import RunError
from .store import RunStore
from .wav import wav_bytes

FORMATS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def _attachment(body: bytes, mimetype: str, filename: str) -> Response:
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "Cache-Control": "no-store"})


def _not_found(message: str) -> Response:
    return Response(message + "\n", status=404, mimetype="text/plain")


def download_url(run: str, table: str, fmt: str) -> str:
    return f"/download/{run}/{table}.{fmt}"


def audio_url(run: str, index: int) -> str:
    return f"/media/{run}/audio/{int(index)}.wav"


class StoreRun(RunFolder):
    """A run as ``workbench report`` reads it, with every file read through ``RunStore`` (names
    validated, links out of RUNS_DIR refused)."""

    def __init__(self, store: RunStore, name: str):
        run = store.run(name)
        super().__init__(store.resolve(name), run.meta, run.heads, "numpy")
        self.tables = store.table_names(name)
        self._tensors = {}
        self._store = store

    def table(self, name: str):
        table = self._store.table(self.name, name)
        if table is None:
            raise RunError(f"run {self.name!r} has no table {name!r}")
        return table


def register_routes(server: Flask, store: RunStore) -> None:
    """Add the download and media routes to ``server``."""

    @server.route("/download/<run>/report.md")
    def _report(run: str):
        try:
            text = importance_report(store.run(run))
        except RunError as exc:
            return _not_found(str(exc))
        return _attachment(text.encode(), "text/markdown; charset=utf-8",
                           f"{run}-head-importance.md")

    @server.route("/download/<run>/report.html")
    def _report_html(run: str):
        from .._report_content import build
        from .._report_render import to_html
        from ..errors import UserError

        try:
            text = to_html(build(StoreRun(store, run)))
        except (RunError, UserError) as exc:
            return _not_found(store.clean(exc))
        return _attachment(text.encode(), "text/html; charset=utf-8", f"{run}-report.html")

    @server.route("/download/<run>/<table>.<fmt>")
    def _download(run: str, table: str, fmt: str):
        if fmt not in FORMATS:
            return _not_found(f"unknown format {fmt[:20]!r}; use csv or parquet")
        try:
            df = store.table(run, table)
        except RunError as exc:
            return _not_found(str(exc))
        if df is None:
            return _not_found(f"run {run!r} has no table {table!r}")
        if fmt == "csv":
            body = df.to_csv(index=False).encode()
        else:
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            body = buf.getvalue()
        return _attachment(body, FORMATS[fmt], f"{run}-{table}.{fmt}")

    @server.route("/media/<run>/audio/<int:index>.wav")
    def _audio(run: str, index: int):
        try:
            wave = store.audio(run, index)
        except RunError as exc:
            return _not_found(str(exc))
        if wave is None:
            return _not_found(f"run {run!r} saved no audio for input {index}")
        return Response(wav_bytes(wave), mimetype="audio/wav",
                        headers={"Cache-Control": "private, max-age=3600"})
