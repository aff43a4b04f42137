"""Where a run folder may be written, how it replaces an old one, and what a crash leaves.

The workbench only ever replaces or deletes what it wrote itself:

- a *run folder* is a folder holding ``meta.json`` (a json object with an integer
  ``schema_version``) and otherwise only the files a run writes (``*.parquet``,
  ``*.safetensors``, the writer's marker), no sub-folders, no links;
- ``force`` replaces a run folder or an empty folder, never anything else (a folder with
  other files, a regular file, a link, the current folder or one of its parents);
- a new run is written into a hidden ``.<name>.tmp-XXXXXXXX`` folder beside the target
  (marked with ``.workbench-writing`` holding the writer's pid until it is in place). It
  replaces an old run in two renames: old -> hidden ``.<name>.old-XXXXXXXX``, new -> name,
  then the old one is removed. At every instant a complete run is at ``name`` or in
  ``.<name>.old-*``;
- ``recover`` (called before every write into a folder) puts a ``.<name>.old-*`` run back
  when nothing is at ``name`` (a replace killed between its renames), removes old runs a
  finished replace left, and removes ``.<any>.tmp-*`` folders whose writer is gone (killed)
  and that hold only run files. It says what it did, one line each, on stderr.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import UserError, user_error

MARKER = ".workbench-writing"
_RUN_FILE = re.compile(r"^(meta\.json|[A-Za-z0-9_.\-]+\.(parquet|safetensors))$")
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-[a-z0-9_]{8}$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-[0-9a-f]{8}$")
_STALE_S = 60.0   # a tmp folder without marker is only someone's if touched this recently


class RunExistsError(UserError):
    """The output folder exists and ``force`` was not given."""


def _only_run_files(folder: Path, *, marker_ok: bool = False) -> bool:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for e in entries:
        if marker_ok and e.name == MARKER and e.is_file(follow_symlinks=False):
            continue
        if not (e.is_file(follow_symlinks=False) and _RUN_FILE.match(e.name)):
            return False
    return True


def is_run_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder the workbench wrote (see the module docstring)."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir() or not _only_run_files(p, marker_ok=True):
        return False
    try:
        meta = json.loads((p / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("schema_version"), int)


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink() and not any(p.iterdir())


def check_target(out: str | os.PathLike, *, force: bool) -> Path:
    """Refuse (UserError, nothing touched) an output location the workbench may not write.

    Leftovers of interrupted writes beside ``out`` are recovered first (``recover``).

    Raises:
        RunExistsError: ``out`` exists and ``force`` is False.
        UserError: ``out`` is ``/``, the current folder or one of its parents, a file, a link,
            or a folder that is neither empty nor a run folder; or its parent is not a
            writable folder.
    """
    out = Path(out)
    full = Path(os.path.abspath(out))
    cwd = Path(os.path.abspath(os.getcwd()))
    if full == Path(full.anchor) or full == cwd or full in cwd.parents:
        raise UserError(f"output folder {out} is {'/' if full == Path(full.anchor) else 'the current folder or one of its parents'}; "
                        "give a new folder name for the run")
    parent = full.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create output folder {out}: {parent} is not a folder")
    why = None if os.access(parent, os.W_OK | os.X_OK) else "permission denied"
    if why is None:
        try:                                   # root passes os.access; a read-only mount does not
            os.rmdir(tempfile.mkdtemp(prefix=".workbench-probe-", dir=parent))
        except OSError as exc:
            why = exc.strerror or str(exc)
    if why is not None:
        raise UserError(f"cannot create output folder {out}: {parent} is not writable ({why}); "
                        "choose another location")
    if full.parent.is_dir():
        recover(full)
    if not (full.exists() or full.is_symlink()):
        return out
    if not force:
        err = user_error("output folder {out} already exists; choose another or pass {force} to replace it", out=out)
        raise RunExistsError(str(err), cli=err.cli)
    if full.is_symlink():
        raise user_error("{out} is a link; {force} replaces only run folders the workbench wrote, so it is left as it is",
                         out=out)
    if not full.is_dir():
        raise user_error("{out} is a file, not a run folder; {force} replaces only run folders the workbench wrote "
                         "(or empty folders), so it is left as it is", out=out)
    if not (_is_empty_dir(full) or is_run_folder(full)):
        raise user_error("{out} holds files the workbench did not write; {force} replaces only run folders (meta.json "
                         "with schema_version and run files) or empty folders, so it is left as it is", out=out)
    return out


def new_tmp(out: Path) -> Path:
    """A hidden, marked temporary folder beside ``out`` for a run being written."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / MARKER).write_text(f"{os.getpid()}\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def put_in_place(tmp: Path, out: Path) -> None:
    """Move the finished run ``tmp`` to ``out``, replacing an empty folder or an old run
    (checked by ``check_target``) so that a complete run is always at ``out`` or recoverable."""
    if not out.exists() or _is_empty_dir(out):
        os.replace(tmp, out)          # rename(2) replaces an empty folder atomically
    else:
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        try:
            os.replace(out, old)
            os.replace(tmp, out)
        except BaseException:
            if old.exists() and not out.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    (out / MARKER).unlink(missing_ok=True)   # the marker stays until here, so a killed writer's tmp is known


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that marked ``tmp`` still runs (unmarked: touched recently)."""
    try:
        pid = int((tmp / MARKER).read_text().strip())
    except FileNotFoundError:
        try:
            return time.time() - tmp.stat().st_mtime < _STALE_S
        except OSError:
            return True
    except (OSError, ValueError):
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _note(msg: str) -> None:
    print(f"workbench: note: {msg}", file=sys.stderr, flush=True)


def recover(out: str | os.PathLike) -> list[str]:
    """Tidy what interrupted writes left beside ``out`` (see the module docstring); returns
    the notes it printed. Touches only hidden folders named like the workbench's that hold
    only run files."""
    out = Path(os.path.abspath(out))
    notes: list[str] = []
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return notes
    for p in siblings:
        if _TMP.match(p.name) and p.is_dir() and not p.is_symlink() and _only_run_files(p, marker_ok=True) \
                and not _writer_alive(p):
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p}, an unfinished run folder left by an interrupted write")
    olds = [p for p in siblings if (m := _OLD.match(p.name)) and m["name"] == out.name and is_run_folder(p)]
    olds.sort(key=lambda p: p.stat().st_mtime)
    if olds and not (out.exists() or out.is_symlink()):
        keep = olds.pop()
        os.replace(keep, out)
        notes.append(f"restored the previous run at {out} (a replace of it was interrupted)")
    for p in olds:
        if is_run_folder(out):
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p}, an old run left by an interrupted replace of {out}")
        else:
            notes.append(f"{p} holds an earlier run of {out}; move it back or delete it")
    for n in notes:
        _note(n)
    return notes


__all__ = ["MARKER", "RunExistsError", "check_target", "is_run_folder", "new_tmp", "put_in_place", "recover"]
