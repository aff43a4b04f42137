"""Which optional parts of a readable run are broken, for the Runs page's status column.

A run whose ``meta.json`` and ``heads.parquet`` load can still have a truncated
``patterns.safetensors`` or a corrupt ``flow.parquet``; the pages then hide only the panel
that needs that file, and the Runs page says which file it is
(``patterns.safetensors unreadable: ...``) instead of "ok". Only file headers are read (the
safetensors header, the parquet footer), and results are cached by file mtime/size.
"""
from __future__ import annotations

import threading

import pyarrow.parquet as pq

from . import _tensors
from .run import RunError

_CACHE: dict[tuple, str | None] = {}
_LOCK = threading.Lock()
_MAX_MESSAGE = 200


def run_problems(store, name: str) -> list[str]:
    """One line per unreadable ``*.safetensors`` / ``*.parquet`` file of run ``name``
    (``heads.parquet`` and ``meta.json`` are checked when the run loads); empty when all
    read. A file linked from outside RUNS_DIR counts as a problem and is not opened."""
    folder = store.resolve(name)
    out = []
    for entry in sorted(folder.iterdir()):
        fname = entry.name
        if fname.startswith(".") or fname == "heads.parquet" or \
                not fname.endswith((".safetensors", ".parquet")):
            continue
        try:
            path = store.file(name, fname)
        except RunError:
            out.append(f"{fname} links outside RUNS_DIR (refused)")
            continue
        if path is None:
            continue
        problem = _check(path)
        if problem:
            out.append(f"{fname} unreadable: {store.clean(problem)}")
    return out


def _check(path) -> str | None:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    try:
        if path.suffix == ".safetensors":
            _tensors.tensor_keys(path)
        else:
            pq.read_metadata(path)
        problem = None
    except Exception as exc:  # noqa: BLE001 - any failure to read is what we report
        problem = f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE]
    with _LOCK:
        if len(_CACHE) > 1024:
            _CACHE.clear()
        _CACHE[key] = problem
    return problem
