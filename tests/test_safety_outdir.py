"""--force and save_run(force=True) replace only what the workbench wrote; replacing is
crash-safe; leftovers of killed writes are recovered by the next write beside them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from clirun import cli, one_line_error
from workbench import runs
from workbench.errors import UserError

HEADS = pd.DataFrame({"stream": ["self"], "layer": [0], "head": [0], "m.x": [1.0]})


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def a_run(path: Path, value: float = 1.0) -> Path:
    return runs.save_run(path, HEADS.assign(**{"m.x": [value]}), {"tag": value})


COMMANDS = [["run", "minilm-l6"], ["patch", "minilm-l6", "--task", "similarity"], ["prune", "minilm-l6"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_force_refuses_a_folder_with_other_files(tmp_path, capsys, command):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    (out / "meta.json").write_text("{}")            # not a workbench meta.json (no schema_version)
    before = snapshot(out)
    one_line_error(*cli(capsys, *command, "--out", out, "--force"), "did not write", "--force")
    assert snapshot(out) == before


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_force_refuses_a_regular_file(tmp_path, capsys, command):
    out = tmp_path / "results.csv"
    out.write_text("a,b\n1,2\n")
    one_line_error(*cli(capsys, *command, "--out", out, "--force"), "is a file")
    assert out.read_text() == "a,b\n1,2\n"


@pytest.mark.parametrize("target", [".", "..", "/"])
def test_force_refuses_the_cwd_its_parents_and_root(tmp_path, capsys, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    one_line_error(*cli(capsys, "run", "minilm-l6", "--out", target, "--force"), "new folder name")
    assert (work / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def test_force_refuses_a_run_folder_with_a_user_file_added(tmp_path):
    out = a_run(tmp_path / "run")
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write.*force=True"):
        runs.save_run(out, HEADS, {}, force=True)
    assert (out / "my_notes.txt").read_text() == "mine"


def test_python_api_names_the_argument_not_the_flag(tmp_path):
    out = a_run(tmp_path / "run")
    with pytest.raises(runs.RunExistsError) as e:
        runs.save_run(out, HEADS, {})
    assert "force=True" in str(e.value) and "--force" not in str(e.value)
    assert isinstance(e.value, UserError)


def test_force_replaces_a_run_folder_and_an_empty_folder(tmp_path):
    out = a_run(tmp_path / "run", 1.0)
    runs.save_run(out, HEADS.assign(**{"m.x": [2.0]}), {"tag": 2.0}, force=True)
    assert runs.load_meta(out)["tag"] == 2.0
    empty = tmp_path / "empty"
    empty.mkdir()
    runs.save_run(empty, HEADS, {"tag": 3}, force=True)
    assert runs.load_meta(empty)["tag"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]


def test_unwritable_parent_is_refused_before_the_model_loads(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:            # root writes into a 0555 folder; /sys refuses everyone
            ro = Path("/sys")
            if not ro.is_dir():
                pytest.skip("no read-only folder for root here")
        one_line_error(*cli(capsys, "run", "minilm-l6", "--out", ro / "sub" / "x"), "not writable")
        assert not (ro / "sub").exists()
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_parent_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_error(*cli(capsys, "run", "minilm-l6", "--out", tmp_path / "f" / "x"), "not a folder")


def test_interrupt_between_the_renames_keeps_the_old_run(tmp_path, monkeypatch):
    out = a_run(tmp_path / "run", 1.0)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        runs.save_run(out, HEADS, {"tag": 2.0}, force=True)
    monkeypatch.setattr(os, "replace", real)
    assert runs.load_meta(out)["tag"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys
    import pandas as pd
    from workbench import runs
    heads = pd.DataFrame({"stream": ["self"], "layer": [0], "head": [0], "m.x": [1.0]})
    real, n = os.replace, [0]
    def dying(src, dst):
        n[0] += 1
        if n[0] == 2:
            os._exit(9)          # as if SIGKILLed between the two renames
        return real(src, dst)
    os.replace = dying
    runs.save_run(sys.argv[1], heads, {"tag": 2.0}, force=True)
""")


def test_a_kill_between_the_renames_is_recovered_by_the_next_command(tmp_path):
    out = a_run(tmp_path / "run", 1.0)
    res = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(out)], capture_output=True, text=True)
    assert res.returncode == 9, res.stderr
    assert not out.exists()                                        # the state a crash leaves
    assert [p.name.startswith(".run.old-") for p in tmp_path.iterdir()].count(True) == 1
    # the next command into the same folder restores the old run before anything else
    res = subprocess.run([sys.executable, "-m", "workbench.cli", "run", "minilm-l6", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "restored the previous run" in res.stderr and "already exists" in res.stderr
    assert runs.load_meta(out)["tag"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


KILL_WHILE_WRITING = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from workbench import _safe_replace
    tmp = _safe_replace.new_tmp(Path(sys.argv[1]))
    (tmp / "heads.parquet").write_bytes(b"PAR1 half written")
    os._exit(9)
""")


def test_tmp_folders_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    res = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(tmp_path / "a")], capture_output=True, text=True)
    assert res.returncode == 9, res.stderr
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".a.tmp-")]
    mine = tmp_path / ".b.tmp-abcdefgh"                # same name pattern, but a user's file inside
    mine.mkdir()
    (mine / "diary.txt").write_text("private")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / ".c.tmp-zzzzzzzz"                # a writer that is still running
        busy.mkdir()
        (busy / ".workbench-writing").write_text(f"{alive.pid}\n")
        (busy / "heads.parquet").write_bytes(b"x")
        runs.save_run(tmp_path / "other", HEADS, {})       # a later run into the same parent
        assert not left.exists()
        assert (mine / "diary.txt").read_text() == "private"
        assert (busy / "heads.parquet").exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_finished_replace_leaves_no_old_folder_and_meta_is_recognised(tmp_path):
    out = a_run(tmp_path / "run", 1.0)
    assert runs.is_run_folder(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["schema_version"] == runs.SCHEMA_VERSION
    stale = tmp_path / ".run.old-0123abcd"              # old run left by a kill after the 2nd rename
    a_run(stale, 0.5)
    runs.save_run(out, HEADS, {"tag": 2.0}, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert runs.load_meta(out)["tag"] == 2.0
