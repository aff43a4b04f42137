"""Run folders: what every producer writes and every reader expects.

The layout, column conventions and version rules are ``workbench.schema`` (torch-free).

Writes are atomic: everything goes to a hidden temporary folder beside the target, which
is renamed into place at the end, so an interrupted write leaves no half folder. ``force=True``
replaces only a run folder the workbench wrote, or an empty folder, and does so crash-safely;
leftovers of a killed write are tidied by the next write beside it (see ``_safe_replace``).
Tensors are safetensors, tables parquet, metadata json: nothing is ever pickled.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ._safe_replace import RunExistsError, check_target, is_run_folder, new_tmp, put_in_place
from .schema import HEAD_KEYS, SCHEMA_VERSION


def save_run(
    out_dir: str | os.PathLike,
    heads: pd.DataFrame,
    meta: Mapping[str, Any],
    tensors: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    force: bool = False,
    tables: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write a run folder atomically and return its path.

    Args:
        out_dir: the folder to create.
        heads: per-head table with columns ``stream, layer, head`` plus metric columns.
        meta: json-serialisable metadata; ``schema_version`` is added.
        tensors: ``{file stem: {key: torch.Tensor}}``, each written to ``<stem>.safetensors``.
        force: replace an existing ``out_dir`` if it is a run folder the workbench wrote or
            an empty folder (anything else is refused and left as it is).
        tables: extra tables ``{name: DataFrame}``, each written to ``<name>.parquet``.

    Raises:
        RunExistsError: ``out_dir`` exists and ``force`` is False (nothing is touched).
        UserError: ``out_dir`` may not be written (``_safe_replace.check_target``): not a
            run folder or empty folder, the current folder, a file, an unwritable parent.
        ValueError: ``heads`` lacks a key column or has duplicate heads.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    missing = [c for c in HEAD_KEYS if c not in heads.columns]
    if missing:
        raise ValueError(f"heads table lacks key columns {missing}; it needs {HEAD_KEYS}")
    if heads.duplicated(HEAD_KEYS).any():
        raise ValueError("heads table has duplicate (stream, layer, head) rows")
    if tables and "heads" in tables:
        raise ValueError("an extra table may not be called 'heads'")
    check_target(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_tmp(out)
    try:
        table = heads.sort_values(HEAD_KEYS).reset_index(drop=True)
        table.to_parquet(tmp / "heads.parquet", index=False)
        for name, extra in (tables or {}).items():
            extra.to_parquet(tmp / f"{name}.parquet", index=False)
        for stem, tdict in (tensors or {}).items():
            if tdict:
                clean = {k: v.detach().contiguous().cpu() for k, v in tdict.items()}
                save_file(clean, str(tmp / f"{stem}.safetensors"))
        full_meta = {"schema_version": SCHEMA_VERSION, **meta}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str))
        _normal_permissions(tmp)
        put_in_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders; give the run folder the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def load_meta(run_dir: str | os.PathLike) -> dict:
    """Read ``meta.json``. Raises FileNotFoundError / ValueError naming the run when bad."""
    path = Path(run_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no meta.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid json: {exc}") from None


def load_heads(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``heads.parquet`` (one row per stream/layer/head)."""
    path = Path(run_dir) / "heads.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a complete run folder: no heads.parquet")
    return pd.read_parquet(path)


def load_tensor(run_dir: str | os.PathLike, stem: str, key: str):
    """Read one tensor lazily from ``<stem>.safetensors`` (only that slice is read)."""
    from safetensors import safe_open

    path = Path(run_dir) / f"{stem}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"run {run_dir} has no {stem}.safetensors")
    with safe_open(str(path), framework="pt") as f:
        if key not in f.keys():
            raise KeyError(f"{path.name} has no tensor {key!r}")
        return f.get_tensor(key)


def merge_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Outer-join per-head tables on ``stream, layer, head``; metric columns must not clash."""
    if not tables:
        raise ValueError("no tables to merge")
    out = tables[0]
    for t in tables[1:]:
        clash = (set(out.columns) & set(t.columns)) - set(HEAD_KEYS)
        if clash:
            raise ValueError(f"metric columns clash between analyses: {sorted(clash)}")
        out = out.merge(t, on=HEAD_KEYS, how="outer")
    return out.sort_values(HEAD_KEYS).reset_index(drop=True)


__all__ = ["HEAD_KEYS", "SCHEMA_VERSION", "RunExistsError", "is_run_folder", "load_heads", "load_meta", "load_tensor",
           "merge_tables", "save_run"]
