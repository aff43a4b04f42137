"""SIGTERM is handled like Ctrl-C (temporary folders removed, one line, exit 143); an
interrupted patch says that a rerun resumes, and the rerun says how many units it reused
and records the time of all units."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from workbench import runs
from workbench._signals import Terminated, exit_code, terminate_as_interrupt

WORKBENCH = str(Path(sys.executable).parent / "workbench")
HEADS = pd.DataFrame({"stream": ["self"], "layer": [0], "head": [0], "m.x": [1.0]})


def test_sigterm_during_a_write_removes_the_temporary_folder(tmp_path, monkeypatch):
    def term_self(self, path, *a, **k):
        os.kill(os.getpid(), signal.SIGTERM)      # a real signal, delivered while the run is written
        time.sleep(5)                              # the handler raises before this returns

    monkeypatch.setattr(pd.DataFrame, "to_parquet", term_self)
    before = signal.getsignal(signal.SIGTERM)
    with terminate_as_interrupt(), pytest.raises(Terminated) as e:
        runs.save_run(tmp_path / "run", HEADS, {})
    assert exit_code(e.value) == 143 and exit_code(KeyboardInterrupt()) == 130
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before          # the handler is only active inside


def _wait_for_reader(fifo: Path, proc, timeout=120.0) -> int:
    """Open the FIFO's write end once the CLI has opened it for reading (it then blocks
    in its input validation with the SIGTERM handler installed)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the CLI never opened the prompt file")


@pytest.mark.parametrize("sig,code,why", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_to_the_cli_gives_one_line_and_its_exit_status(tmp_path, sig, code, why):
    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    out = tmp_path / "run"
    proc = subprocess.Popen([WORKBENCH, "run", "minilm-l6", "--prompts", str(fifo), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fd = _wait_for_reader(fifo, proc)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(fd)
    assert proc.returncode == code, err
    assert [l for l in err.splitlines() if l.strip()] == [f"workbench: interrupted ({why}); nothing was written"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


def _unit_seconds(folder: Path) -> list[float]:
    from safetensors import safe_open

    out = []
    for f in sorted(folder.rglob("shard*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.append(float(h.metadata()["seconds"]))
    return out


def test_sigterm_during_patch_keeps_units_and_the_rerun_reuses_them(tmp_path):
    from tiny import tiny_hf

    tiny_hf("gpt2").save_pretrained(tmp_path / "tiny-gpt2")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9, 7, 5], "corrupt": [1, 5, 3, 9, 8, 5], "target": 4,
                                            "distractor": 6}) for _ in range(40)))
    out, units = tmp_path / "p", tmp_path / ".p.units"
    cmd = [WORKBENCH, "patch", str(tmp_path / "tiny-gpt2"), "--task", str(pairs), "--shard-size", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (units / "exact").is_dir() or not any(n.startswith("shard") for n in os.listdir(units / "exact")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 300, "no unit was finished"
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)          # frozen at once: the signal below arrives mid-sweep
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("workbench: interrupted (SIGTERM); ") and "rerun the same command to resume" in last
    assert str(units) in last
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    done = _unit_seconds(units)
    assert 1 <= len(done) < 80 and all(s > 0 for s in done)

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {len(done)} of 80 units reused" in res.stderr
    meta = json.loads((out / "meta.json").read_text())
    patch = meta["analyses"]["patch"]
    assert patch["units_reused"] == len(done)
    assert patch["seconds"] >= round(sum(done), 3)             # the recorded time covers the earlier units
    assert not units.exists()


def test_interrupted_prune_keeps_its_patching_units_and_the_rerun_reuses_them(tmp_path, capsys, monkeypatch):
    import workbench.analyses.pruning as pruning
    from clirun import cli
    from tiny import tiny_hf

    tiny_hf("gpt2").save_pretrained(tmp_path / "tiny-gpt2")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9], "corrupt": [1, 5, 3, 9], "target": 4,
                                            "distractor": 6}) for _ in range(2)))
    args = ["prune", tmp_path / "tiny-gpt2", "--task", pairs, "--step", "0.5", "--seeds", "1", "--out", tmp_path / "q"]
    real = pruning.prune

    def interrupted(*a, **k):
        raise KeyboardInterrupt          # Ctrl-C after the patching sweep, during the pruning curves

    monkeypatch.setattr(pruning, "prune", interrupted)
    capsys.readouterr()
    code, err = cli(capsys, *args)
    assert code == 130 and "rerun the same command to resume" in err.strip().splitlines()[-1], err
    units = tmp_path / ".q.units" / "patching"
    n = len(list(units.glob("shard*.safetensors")))
    assert n == 2                                               # one unit per layer (site) of the tiny model
    monkeypatch.setattr(pruning, "prune", real)
    code, err = cli(capsys, *args)
    assert code == 0, err
    assert f"resuming: {n} of {n} units reused" in err
    meta = json.loads((tmp_path / "q" / "meta.json").read_text())
    assert meta["analyses"]["prune"]["units_reused"] == n and not (tmp_path / ".q.units").exists()
