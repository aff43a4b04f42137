"""Read-only access to the run folders under RUNS_DIR, safe against hostile run names.

Every page and route goes through ``RunStore``: run names from URLs are checked against a
strict pattern *and* the resolved path must be a direct child of RUNS_DIR, so ``..``,
absolute paths, encoded separators and symlinks pointing outside cannot escape. Every file
read inside a run (``meta.json``, tables, safetensors) is resolved too (``RunStore.file``):
a symlinked file pointing outside RUNS_DIR is refused, never read. Loaded
runs are cached by file modification time, so a run re-written by ``workbench run --force``
is picked up on the next request. Anything unreadable becomes ``RunError`` (a message for
the page); other runs keep working.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.runs import load_heads, load_meta

from . import _tensors
from .health import run_problems
from .run import Run, RunError, validate_heads, validate_meta

RUN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+@-]{0,199}$")
TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_CACHE_SIZE = 32


@dataclass(frozen=True)
class RunSummary:
    """One row of the Runs page; ``error`` is set (and ``run`` None) for unreadable runs;
    ``problems`` names the optional files of a readable run that cannot be read."""

    name: str
    run: Run | None
    error: str | None
    problems: tuple[str, ...] = ()


class RunStore:
    """Run folders that are direct, non-hidden children of ``runs_dir``."""

    def __init__(self, runs_dir: str | Path):
        root = Path(runs_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"runs folder {root} does not exist or is not a folder")
        self.root = root.resolve()
        self._cache: OrderedDict[tuple, Run] = OrderedDict()
        self._inputs: dict[tuple, set[int]] = {}
        self._lock = threading.Lock()

    # ---- names and paths -------------------------------------------------------------
    def resolve(self, name: object) -> Path:
        """The folder of run ``name``. Raises RunError for bad names or missing runs."""
        if not isinstance(name, str) or not RUN_NAME_RE.match(name) or ".." in name:
            raise RunError(f"{str(name)[:80]!r} is not a valid run name (letters, digits, "
                           "'_', '-', '.', no path separators)")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise RunError(f"run {name!r} is outside the runs folder")
        if not path.is_dir():
            raise RunError(f"no run named {name!r} in RUNS_DIR")
        return path

    def file(self, name: object, filename: str) -> Path | None:
        """The real path of ``<run>/<filename>`` when it is a regular file inside RUNS_DIR,
        None when absent (or not a regular file). Raises RunError for a bad run name or when
        the file is a link that leads outside RUNS_DIR (it is never read)."""
        path = self.resolve(name) / filename
        if not os.path.lexists(path):
            return None
        real = path.resolve()
        if not real.is_relative_to(self.root):
            raise RunError(f"run {name!r}: {filename} links outside RUNS_DIR; refused")
        return real if real.is_file() else None

    def names(self) -> list[str]:
        """Candidate run names, sorted (hidden folders such as in-progress writes skipped)."""
        out = []
        for p in self.root.iterdir():
            if p.name.startswith(".") or not RUN_NAME_RE.match(p.name):
                continue
            try:
                if p.is_dir() and p.resolve().parent == self.root:
                    out.append(p.name)
            except OSError:
                continue
        return sorted(out)

    # ---- runs -------------------------------------------------------------------------
    def run(self, name: object) -> Run:
        """Load (or reuse) run ``name``. Raises RunError with a readable message."""
        path = self.resolve(name)
        meta_p, heads_p = self.file(name, "meta.json"), self.file(name, "heads.parquet")
        if meta_p is None:
            raise RunError(f"run {name!r} is not a complete run folder: no meta.json")
        if heads_p is None:
            raise RunError(f"run {name!r} is incomplete: no heads.parquet")
        key = (str(path), _stamp(meta_p), _stamp(heads_p))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            run = _load(str(name), path)
        except RunError as exc:  # messages name RUNS_DIR, not the server's folder layout
            raise RunError(str(exc).replace(str(self.root), "RUNS_DIR")) from None
        with self._lock:
            self._cache[key] = run
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return run

    def summaries(self, *, check_files: bool = False) -> list[RunSummary]:
        """Every run folder; with ``check_files`` also the unreadable optional files of
        readable runs (``health.run_problems``: safetensors headers, parquet footers)."""
        out = []
        for name in self.names():
            try:
                run = self.run(name)
            except RunError as exc:
                out.append(RunSummary(name, None, str(exc)))
                continue
            try:
                problems = tuple(run_problems(self, name)) if check_files else ()
            except (OSError, RunError) as exc:
                problems = (self.clean(exc),)
            out.append(RunSummary(name, run, None, problems))
        return out

    def ok_names(self) -> list[str]:
        return [s.name for s in self.summaries() if s.run is not None]

    # ---- tensors ----------------------------------------------------------------------
    def pattern(self, name: str, stream: str, layer: int, index: int, head: int,
                stem: str = "patterns") -> np.ndarray:
        """One head's attention pattern ``[query, key]`` (float32); only that slice is read.
        ``stem``: ``patterns``, or ``patterns_corrupt`` (a patch run's corrupt prompts)."""
        key = f"pattern/{stream}/{int(layer)}/{int(index)}"
        return self._rows(name, stem, key, int(head)).astype(np.float32)

    def site_patterns(self, name: str, stream: str, layer: int, index: int,
                      stem: str = "patterns") -> np.ndarray:
        """All heads of one site ``[head, query, key]`` (float32); for small sites only."""
        path = self.file(name, f"{stem}.safetensors")
        key = f"pattern/{stream}/{int(layer)}/{int(index)}"
        if path is None:
            raise RunError(f"run {name!r} has no {stem}.safetensors (patterns were not saved)")
        try:
            return _tensors.read_tensor(path, key).astype(np.float32)
        except KeyError:
            raise RunError(f"run {name!r}: {stem}.safetensors has no tensor {key!r}") from None
        except Exception as exc:
            raise self._unreadable(name, stem, exc) from None

    def site_shape(self, name: str, stream: str, layer: int, index: int,
                   stem: str = "patterns") -> list[int] | None:
        """Shape ``[head, query, key]`` of one saved site pattern (header only), or None."""
        path = self.file(name, f"{stem}.safetensors")
        if path is None:
            return None
        try:
            return _tensors.tensor_shape(path, f"pattern/{stream}/{int(layer)}/{int(index)}")
        except KeyError:
            return None
        except Exception as exc:
            raise self._unreadable(name, stem, exc) from None

    def value_norm(self, name: str, stream: str, layer: int, index: int, head: int,
                   stem: str = "patterns") -> np.ndarray | None:
        """``||v_j W_O[h]||`` per key ``[key]`` of one head (``value_norm/...`` saved beside
        the patterns, Kobayashi et al. 2020), or None when the run did not save them."""
        key = f"value_norm/{stream}/{int(layer)}/{int(index)}"
        if self._has(name, stem, key) is None:
            return None
        return self._rows(name, stem, key, int(head)).astype(np.float32)

    def has_patterns(self, name: str, stem: str = "patterns") -> bool:
        """Whether the run has a patterns file (True for one linking outside RUNS_DIR too:
        reading it then raises RunError, which the page shows)."""
        try:
            return self.file(name, f"{stem}.safetensors") is not None
        except RunError:
            return True

    def pattern_inputs(self, name: str, stem: str = "patterns") -> set[int]:
        """Input indices with at least one saved pattern (reads only the file header)."""
        path = self.file(name, f"{stem}.safetensors")
        if path is None:
            return set()
        key = (str(path), _stamp(path))
        with self._lock:
            if key in self._inputs:
                return self._inputs[key]
        try:
            keys = _tensors.tensor_keys(path)
        except Exception as exc:
            raise self._unreadable(name, stem, exc) from None
        found = {int(k.rsplit("/", 1)[1]) for k in keys
                 if k.startswith("pattern/") and k.rsplit("/", 1)[1].isdigit()}
        with self._lock:
            if len(self._inputs) > 256:
                self._inputs.clear()
            self._inputs[key] = found
        return found

    def mel(self, name: str, index: int) -> np.ndarray | None:
        """Log-mel spectrogram ``[mel bin, mel frame]`` (100 frames/s), or None if not saved."""
        return self._optional(name, "inputs", f"mel/{int(index)}")

    def audio(self, name: str, index: int) -> np.ndarray | None:
        """Waveform ``[sample]`` at 16 kHz (float32), or None if not saved."""
        return self._optional(name, "inputs", f"audio/{int(index)}")

    def position_effects(self, name: str) -> dict[tuple[str, int], np.ndarray]:
        """Per-(head, position) patching effects of a ``workbench patch --per-position`` run:
        {(stream, layer): float32 [head, input, pos]} from ``patch.safetensors``
        (``effect_pos/<stream>/<layer>``); empty when the run has none."""
        path = self.file(name, "patch.safetensors")
        if path is None:
            return {}
        try:
            keys = [k for k in _tensors.tensor_keys(path) if k.startswith("effect_pos/")]
            out = {}
            for k in keys:
                _, stream, layer = k.split("/")
                out[(stream, int(layer))] = _tensors.read_tensor(path, k).astype(np.float32)
            return out
        except Exception as exc:
            raise RunError(f"run {name!r}: patch.safetensors is unreadable "
                           f"({type(exc).__name__}: {self._clean(exc)})") from None

    def _rows(self, name: str, stem: str, key: str, index: int) -> np.ndarray:
        path = self.file(name, f"{stem}.safetensors")
        if path is None:
            raise RunError(f"run {name!r} has no {stem}.safetensors (patterns were not saved)")
        try:
            return _tensors.read_rows(path, key, index)
        except KeyError:
            raise RunError(f"run {name!r}: {stem}.safetensors has no tensor {key!r}") from None
        except IndexError as exc:
            raise RunError(f"run {name!r}: {exc}") from None
        except Exception as exc:  # corrupt file: a message, not a traceback
            raise self._unreadable(name, stem, exc) from None

    def _unreadable(self, name: str, stem: str, exc: BaseException) -> RunError:
        """A corrupt tensor file: a one-line message naming the run and file, not a traceback."""
        return RunError(f"run {name!r}: {stem}.safetensors is unreadable "
                        f"({type(exc).__name__}: {self._clean(exc)})")

    def _has(self, name: str, stem: str, key: str) -> Path | None:
        """The run's ``<stem>.safetensors`` when it holds tensor ``key``, else None."""
        path = self.file(name, f"{stem}.safetensors")
        if path is None:
            return None
        try:
            return path if key in _tensors.tensor_keys(path) else None
        except Exception as exc:
            raise self._unreadable(name, stem, exc) from None

    def _optional(self, name: str, stem: str, key: str) -> np.ndarray | None:
        path = self._has(name, stem, key)
        if path is None:
            return None
        try:
            return _tensors.read_tensor(path, key).astype(np.float32)
        except Exception as exc:
            raise self._unreadable(name, stem, exc) from None

    def clean(self, text: object) -> str:
        """``text`` with the server's RUNS_DIR path replaced by the word RUNS_DIR."""
        return str(text).replace(str(self.root), "RUNS_DIR")

    def _clean(self, exc: BaseException) -> str:
        return self.clean(exc)

    # ---- extra tables -----------------------------------------------------------------
    def table_names(self, name: str) -> list[str]:
        """Names of ``<name>.parquet`` tables in the run besides ``heads``."""
        path = self.resolve(name)
        return sorted(p.stem for p in path.glob("*.parquet")
                      if p.stem != "heads" and TABLE_NAME_RE.match(p.stem))

    def table(self, name: str, table: str) -> pd.DataFrame | None:
        """Extra table ``<table>.parquet`` (``heads`` gives the head table), or None if absent."""
        if table == "heads":
            return self.run(name).heads
        if not isinstance(table, str) or not TABLE_NAME_RE.match(table):
            raise RunError(f"{str(table)[:60]!r} is not a valid table name")
        path = self.file(name, f"{table}.parquet")
        if path is None:
            return None
        try:
            return pd.read_parquet(path)
        except Exception as exc:
            raise RunError(f"run {name!r}: {table}.parquet is unreadable "
                           f"({type(exc).__name__}: {self._clean(exc)})") from None


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _load(name: str, folder: Path) -> Run:
    """Read with ``workbench.runs`` (the producer's readers) once ``RunStore.file`` has
    checked both files; errors become RunError."""
    try:
        meta = load_meta(folder)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"run {name!r}: meta.json is unreadable ({exc})") from None
    meta = validate_meta(name, meta)
    try:
        heads = load_heads(folder)
    except Exception as exc:
        raise RunError(f"run {name!r}: heads.parquet is unreadable "
                       f"({type(exc).__name__}: {exc})") from None
    return Run(name=name, meta=meta, heads=validate_heads(name, heads))
