"""Python API for run folders: ``open_run(DIR)`` and ``list_runs(DIR)``.

    import workbench as wb
    run = wb.open_run("runs/smollm2")          # head table + meta.json, nothing else read yet
    run.heads.nlargest(5, "sinks.alpha1")       # pandas, one row per (stream, layer, head)
    p = run.pattern("self", layer=3, input=0, head=1)   # [query, key]: only that head is read
    run.tensors["patch"]["effect"].shape        # header only; ``[...]`` reads a slice

Works for every folder ``workbench run``, ``patch``, ``prune`` and ``circuit`` write
(``workbench.schema`` describes the layout); torch-free unless ``framework="pt"``. Tensors are
read lazily through safetensors ``safe_open(...).get_slice``: indexing a ``LazyTensor`` reads
only the indexed rows from the memory-mapped file.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .errors import UserError
from .schema import HEAD_KEYS, HEADS_FILE, META_FILE, check_schema_version, metric_columns, pattern_key

FRAMEWORKS = ("numpy", "pt")


def run_kind(meta: Mapping[str, Any]) -> str:
    """``"patch"``, ``"prune"``, ``"circuit"`` or ``"run"``: which command wrote ``meta``."""
    analyses = meta.get("analyses") or {}
    if "patch" in analyses:
        return "patch"
    if "prune" in analyses:
        return "prune"
    if any(str(a).startswith("circuit.") for a in analyses):
        return "circuit"
    return "run"


class LazyTensor:
    """One tensor of a safetensors file; ``shape`` and ``dtype`` come from the header and
    ``t[i]`` / ``t[i:j]`` / ``t[...]`` read only the indexed part of the first axes."""

    def __init__(self, path: Path, key: str, framework: str):
        self.path, self.key, self.framework = path, key, framework
        with self._open() as f:
            sl = f.get_slice(key)
            self.shape, self.dtype = tuple(sl.get_shape()), sl.get_dtype()

    def _open(self):
        from safetensors import safe_open

        return safe_open(str(self.path), framework=self.framework)

    def __getitem__(self, index):
        with self._open() as f:
            return f.get_slice(self.key)[index]

    def load(self):
        """The whole tensor (numpy array or torch tensor)."""
        with self._open() as f:
            return f.get_tensor(self.key)

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def __repr__(self) -> str:
        return f"LazyTensor({self.path.name}:{self.key}, shape={list(self.shape)}, dtype={self.dtype})"


class TensorFile(Mapping):
    """``<stem>.safetensors`` as a read-only mapping ``{key: LazyTensor}`` (header read once)."""

    def __init__(self, path: Path, framework: str):
        from safetensors import safe_open

        self.path, self.framework = path, framework
        try:
            with safe_open(str(path), framework="numpy") as f:
                self._keys = sorted(f.keys())
        except Exception as exc:
            raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None

    def __getitem__(self, key: str) -> LazyTensor:
        if key not in self._keys:
            raise KeyError(f"{self.path.name} has no tensor {key!r}; it has {len(self._keys)} tensors, "
                           f"e.g. {self._keys[:3]}")
        return LazyTensor(self.path, key, self.framework)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TensorFile({self.path.name}, {len(self)} tensors)"


class RunFolder:
    """An opened run folder: ``meta`` (dict), ``heads`` (DataFrame, sorted by stream, layer,
    head), ``tables`` (names of extra parquet tables, read by ``table``) and ``tensors``
    (``{stem: TensorFile}``, read lazily). Use ``open_run`` to make one."""

    def __init__(self, path: Path, meta: dict, heads: pd.DataFrame, framework: str):
        self.path, self.meta, self.heads, self.framework = path, meta, heads, framework
        self.tables = sorted(p.stem for p in path.glob("*.parquet") if p.stem != "heads")
        self._tensors = {p.stem: None for p in sorted(path.glob("*.safetensors"))}

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """Which command wrote it: ``run``, ``patch``, ``prune`` or ``circuit``."""
        return run_kind(self.meta)

    @property
    def model(self) -> str:
        return str((self.meta.get("model") or {}).get("name", "?"))

    @property
    def metrics(self) -> list[str]:
        """Metric columns of ``heads`` (``"<analysis>.<metric>"``)."""
        return metric_columns(self.heads.columns)

    @property
    def tensors(self) -> dict[str, TensorFile]:
        """``{stem: TensorFile}`` for every ``<stem>.safetensors`` (headers read on first use)."""
        for stem, tf in self._tensors.items():
            if tf is None:
                self._tensors[stem] = TensorFile(self.path / f"{stem}.safetensors", self.framework)
        return dict(self._tensors)

    def table(self, name: str) -> pd.DataFrame:
        """Extra table ``<name>.parquet`` (``"heads"`` gives the head table). Raises UserError."""
        if name == "heads":
            return self.heads
        if name not in self.tables:
            raise UserError(f"run {self.name!r} has no table {name!r}; it has {self.tables or 'none'}")
        return pd.read_parquet(self.path / f"{name}.parquet")

    def head(self, stream: str, layer: int, head: int) -> dict[str, Any]:
        """The head-table row of one head as a dict. Raises UserError when absent."""
        h = self.heads
        rows = h[(h["stream"] == stream) & (h["layer"] == layer) & (h["head"] == head)]
        if rows.empty:
            raise UserError(f"run {self.name!r} has no head {stream}/{layer}/{head}")
        return rows.iloc[0].to_dict()

    def pattern(self, stream: str, layer: int, input: int = 0, head: int | None = None):
        """Saved attention pattern of input ``input``: ``[query, key]`` of one ``head`` (only that
        slice is read) or ``[head, query, key]`` when ``head`` is None; probabilities, float16.

        Raises:
            UserError: the run saved no patterns, or none for this stream/layer/input.
            IndexError: ``head`` is outside ``0..n_heads-1``."""
        files = self.tensors
        if "patterns" not in files:
            raise UserError(f"run {self.name!r} saved no patterns (workbench run save_patterns=0, or a "
                            f"{self.kind} run)")
        key = pattern_key(stream, layer, input)
        if key not in files["patterns"]:
            raise UserError(f"run {self.name!r} has no pattern {key!r}; saved inputs are "
                            f"{sorted({int(k.rsplit('/', 1)[1]) for k in files['patterns']})}")
        t = files["patterns"][key]
        if head is None:
            return t.load()
        if not 0 <= head < t.shape[0]:
            raise IndexError(f"{key} has {t.shape[0]} heads; asked for head {head}")
        return t[head]

    def __repr__(self) -> str:
        return (f"RunFolder({str(self.path)!r}, kind={self.kind!r}, model={self.model!r}, heads={len(self.heads)}, "
                f"tables={self.tables}, tensors={list(self._tensors)})")


def open_run(path: str | os.PathLike, *, framework: str = "numpy") -> RunFolder:
    """Open a run folder written by ``workbench run``, ``patch``, ``prune`` or ``circuit``.

    Args:
        path: the run folder.
        framework: ``"numpy"`` (torch-free) or ``"pt"`` (torch tensors) for tensor reads.
    Returns:
        ``RunFolder`` with ``meta``, ``heads`` (one row per stream/layer/head) and lazy ``tensors``.
    Raises:
        UserError (one line): not a run folder, unreadable meta.json / heads.parquet, a
        ``schema_version`` newer than this workbench reads, an unknown ``framework``.
    """
    if framework not in FRAMEWORKS:
        raise UserError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    folder = Path(path)
    if not (folder / META_FILE).is_file():
        raise UserError(f"{folder} is not a run folder (no {META_FILE}); give a folder written by "
                        "workbench run, patch, prune or circuit")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder / META_FILE} is unreadable: {' '.join(str(exc).split())}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{folder / META_FILE} is not a json object; the run folder is damaged")
    check_schema_version(meta, f"run {str(folder)!r}")
    if not (folder / HEADS_FILE).is_file():
        raise UserError(f"{folder} is an incomplete run folder: no {HEADS_FILE}")
    try:
        heads = pd.read_parquet(folder / HEADS_FILE)
    except Exception as exc:
        raise UserError(f"{folder / HEADS_FILE} is unreadable ({type(exc).__name__})") from None
    missing = [c for c in HEAD_KEYS if c not in heads.columns]
    if missing:
        raise UserError(f"{folder / HEADS_FILE} lacks the key columns {missing}; the run folder is damaged")
    return RunFolder(folder, meta, heads.sort_values(HEAD_KEYS).reset_index(drop=True), framework)


def list_runs(path: str | os.PathLike) -> pd.DataFrame:
    """One row per run folder directly inside ``path`` (hidden folders skipped): ``name``,
    ``kind``, ``model``, ``created``, ``heads``, ``analyses``, ``path`` and ``error`` (None, or
    why ``open_run`` refuses it), newest first.

    Raises:
        UserError: ``path`` is not a folder."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder that holds run folders")
    rows = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p / META_FILE).is_file():
            continue
        try:
            r = open_run(p)
            rows.append({"name": p.name, "kind": r.kind, "model": r.model, "created": r.meta.get("created"),
                         "heads": len(r.heads), "analyses": ",".join(sorted(r.meta.get("analyses") or {})),
                         "path": str(p), "error": None})
        except UserError as exc:
            rows.append({"name": p.name, "kind": None, "model": None, "created": None, "heads": None,
                         "analyses": None, "path": str(p), "error": str(exc)})
    cols = ["name", "kind", "model", "created", "heads", "analyses", "path", "error"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["created", "name"], ascending=[False, True], na_position="last").reset_index(drop=True)


__all__ = ["LazyTensor", "RunFolder", "TensorFile", "list_runs", "open_run", "run_kind"]
