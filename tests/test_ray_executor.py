"""Sweeps on Ray (issue 15): the same effects as in-process, a killed worker loses no finished
unit, a killed driver resumes, failed units are retried then reported, and without Ray
``--executor ray`` is a one-line error naming the extra.

A local Ray of 2 CPUs is started once for the module (tests/ on its workers' PYTHONPATH, for
the test job of ``_ray_jobs``) and shut down at the end. Ray is installed by ``make test``
(the ``ray`` extra): a missing Ray fails here, it is not skipped.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clirun import cli, one_line_error

HERE = Path(__file__).resolve().parent
ROWS = [{"clean": [1, 2, 3, 9, 7], "corrupt": [1, 5, 3, 9, 7], "target": 4, "distractor": 6},
        {"clean": [3, 8, 2, 2, 5], "corrupt": [3, 8, 6, 2, 5], "target": 1, "distractor": 2},
        {"clean": [4, 4, 1, 7, 3], "corrupt": [9, 4, 1, 7, 3], "target": 8, "distractor": 5}]


@pytest.fixture(scope="module")
def ray_address():
    import ray                                     # the ray extra is part of the test install

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, pairs file, loaded model, task) of a tiny random Llama."""
    from tiny import tiny_hf

    import workbench as wb
    from workbench import tasks

    root = tmp_path_factory.mktemp("ray")
    tiny_hf("llama").save_pretrained(root / "tiny-llama")
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in ROWS))
    model = wb.load(str(root / "tiny-llama"))
    return root / "tiny-llama", pairs, model, tasks.build(model, str(pairs))


def _ray_executor(source=None, **kw):
    from workbench.executors import RayExecutor

    return RayExecutor(source, **kw)


@pytest.mark.parametrize("config", [
    {"method": "exact", "shard_size": 1},
    {"method": "atp*", "shard_size": 2},
    {"method": "naive", "ablation": "mean"},
    {"method": "exact", "ablation": "zero", "direction": "denoising", "per_position": True},
], ids=["exact-resample", "atp-star", "naive-mean", "exact-zero-denoising-per-position"])
def test_tiny_sweep_on_ray_equals_in_process(ray_address, tiny, config):
    from workbench.executors import task_source
    from workbench.patching import patch

    folder, pairs, model, task = tiny
    here = patch(model, task.clean, task.metric, corrupt=task.corrupt, **config)
    ex = _ray_executor(task_source(str(folder), str(pairs)))
    there = patch(model, task.clean, task.metric, corrupt=task.corrupt, executor=ex, **config)
    assert ex.runs == len(ex.pids) > 0 and ex.restarts == 0
    assert os.getpid() not in set(ex.pids.values())                 # computed in the workers, not here
    assert torch.isfinite(there.per_input).all() and there.per_input.abs().sum() > 0
    # equal up to the float rounding of another torch thread count (1 per worker)
    torch.testing.assert_close(there.per_input, here.per_input, atol=1e-6, rtol=0)
    torch.testing.assert_close(there.base_metric, here.base_metric, atol=1e-6, rtol=0)
    if config.get("per_position"):
        for k in here.per_position:
            torch.testing.assert_close(there.per_position[k], here.per_position[k], atol=1e-6, rtol=0)


def test_smollm2_heads_on_ray_equal_in_process(ray_address, builtin):
    import workbench as wb
    from workbench import tasks
    from workbench.executors import task_source
    from workbench.patching import patch

    model = builtin("smollm2-135m")
    task = tasks.build(model, "ioi", n=4, seed=0)
    heads = [wb.Head("self", layer, h) for layer in (0, 9, 29) for h in (0, 4)]
    kw = dict(corrupt=task.corrupt, heads=heads, method="exact", shard_size=2)
    here = patch(model, task.clean, task.metric, **kw)
    ex = _ray_executor(task_source("smollm2-135m", "ioi", n=4, seed=0), workers=1)   # one more model load
    there = patch(model, task.clean, task.metric, executor=ex, **kw)
    assert ex.runs == 6 and os.getpid() not in ex.pids.values()       # 2 shards x 3 sites, in the worker
    assert there.heads == heads and there.per_input.abs().min() > 0
    torch.testing.assert_close(there.per_input, here.per_input, atol=1e-4, rtol=1e-4)


def test_killed_worker_loses_no_finished_unit(ray_address, tiny, tmp_path):
    from workbench.executors import task_source
    from workbench.patching import PatchConfig, Sweep, patch

    folder, pairs, model, task = tiny
    config = {"method": "exact", "shard_size": 1}
    units = Sweep(model, task.clean, task.metric, corrupt=task.corrupt, config=PatchConfig(**config)).units()
    killed = []

    def kill_after_second(i, n, unit):      # the worker that sent the 2nd result already runs its next unit
        if i == 1:
            killed.append(ex.pids[unit.id])
            os.kill(killed[0], signal.SIGKILL)

    ex = _ray_executor(task_source(str(folder), str(pairs)), progress=kill_after_second)
    there = patch(model, task.clean, task.metric, corrupt=task.corrupt, executor=ex, store=str(tmp_path / "u"),
                  **config)
    here = patch(model, task.clean, task.metric, corrupt=task.corrupt, **config)
    assert len(units) == 6 and killed
    assert ex.restarts == 1 and ex.runs == len(units) + 1             # only the killed worker's unit ran twice
    assert len(set(ex.pids.values()) - set(killed)) == 2                # the other worker and the new one
    assert sorted(p.name for p in (tmp_path / "u").glob("shard*.safetensors")) == \
        sorted(f"{u.id}.safetensors" for u in units)
    torch.testing.assert_close(there.per_input, here.per_input, atol=1e-6, rtol=0)


def test_failed_units_are_retried_then_reported(ray_address, tmp_path):
    from _ray_jobs import Arange

    from workbench.patching.units import UnitStore, UnitsFailed, run_units

    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "shard0001-all").touch()
    job = Arange(5, 2.0, fail=[3], fail_once=[1], flags=str(tmp_path / "flags"))
    store = UnitStore(tmp_path / "units", job.fingerprint())
    ex = _ray_executor(max_retries=2)
    with pytest.raises(UnitsFailed, match="1 work unit.*after 2 retries.*shard0003-all: ValueError: unit 3 always"):
        run_units(job.run_unit, job.units(), ex, store)
    assert ex.runs == 5 + 1 + 2                                       # unit 1 once more, unit 3 twice more
    assert (tmp_path / "flags" / "shard0001-all.taken").exists()
    assert sorted(p.stem for p in store.folder.glob("shard*.safetensors")) == \
        ["shard0000-all", "shard0001-all", "shard0002-all", "shard0004-all"]
    # the rerun (unit 3 fixed) computes only unit 3
    fixed = Arange(5, 2.0)
    ex2 = _ray_executor()
    results = run_units(fixed.run_unit, fixed.units(), ex2, UnitStore(tmp_path / "units", fixed.fingerprint()))
    assert ex2.reused == 4 and ex2.runs == 1
    assert fixed.assemble(results)[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_a_worker_that_rebuilds_another_job_stops_the_sweep(ray_address):
    from _ray_jobs import Arange

    from workbench.executors import JobSpec
    from workbench.patching.units import run_units

    job = Arange(3, 1.0)
    ex = _ray_executor(spec=JobSpec("_ray_jobs:build_other", {"n": 3, "base": 1.0}))
    with pytest.raises(RuntimeError, match="rebuilt a different job"):
        run_units(job.run_unit, job.units(), ex)
    ex = _ray_executor(spec=JobSpec("_ray_jobs:no_such_builder", {}))
    with pytest.raises(RuntimeError, match="could not rebuild the job.*no_such_builder"):
        run_units(job.run_unit, job.units(), ex)


def _workbench(*args, signal_after: tuple | None = None) -> subprocess.CompletedProcess:
    pre = [str(HERE / "_kill_driver.py"), *map(str, signal_after)] if signal_after else ["-m", "workbench.cli"]
    return subprocess.run([sys.executable, *pre, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(HERE)})


def test_terminated_then_killed_driver_resumes_from_its_finished_units(ray_address, tiny, tmp_path):
    import workbench as wb
    from workbench.patching import patch

    folder, pairs, model, task = tiny
    _ray_executor().close()          # this process's workers give their 2 CPUs back to the CLI's
    out, units = tmp_path / "p", tmp_path / ".p.units"
    cmd = ["patch", folder, "--task", pairs, "--method", "exact", "--shard-size", "1", "--out", out,
           "--executor", "ray", "--address", ray_address]
    stopped = _workbench(*cmd, signal_after=(1, "TERM"))               # SIGTERM: a clean stop, as in-process
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "interrupted (SIGTERM); no run folder was written; 1 finished work unit(s) are kept" in stopped.stderr
    killed = _workbench(*cmd, signal_after=(2, "KILL"))                # SIGKILL: no chance to clean up
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "resuming: 1 of 6 units reused" in killed.stderr
    assert not out.exists() and len(list((units / "exact").glob("shard*.safetensors"))) == 3
    done = _workbench(*cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"resuming: 3 of 6 units reused", done.stderr), done.stderr[-3000:]
    assert not units.exists()                                          # removed once the run folder is written
    effect = wb.open_run(out).tensors["patch"]["per_input"][:]
    here = patch(model, task.clean, task.metric, corrupt=task.corrupt, method="exact", shard_size=1)
    torch.testing.assert_close(torch.as_tensor(effect), here.per_input, atol=1e-6, rtol=0)


def test_without_ray_executor_ray_is_one_line_error_before_loading(monkeypatch, capsys, tiny, tmp_path):
    import workbench.zoo as zoo
    from workbench.errors import UserError

    folder, pairs, _, _ = tiny
    monkeypatch.setitem(sys.modules, "ray", None)                      # `import ray` raises ImportError

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(zoo, "load", no_load)
    for command in (["patch", folder, "--task", pairs], ["prune", folder, "--task", pairs],
                    ["run", folder, "--prompts", "natural"]):
        code, err = cli(capsys, *command, "--out", tmp_path / "x", "--executor", "ray")
        one_line_error(code, err, "--executor ray", "pip install '.[ray]'")
    with pytest.raises(UserError, match=r"executor='ray' needs Ray.*pip install '\.\[ray\]'"):
        _ray_executor()
    code, err = cli(capsys, "patch", folder, "--task", pairs, "--out", tmp_path / "x", "--workers", "2")
    one_line_error(code, err, "--workers", "--executor ray")


def test_dataset_statistics_over_200_prompts_on_ray_equal_the_single_process_table(ray_address, tmp_path):
    """``workbench run --executor ray``: entropy and sinks reduced to sums per unit on 2 Ray workers
    and merged on the driver give the table of a single-process run on the same prompts."""
    import pandas as pd
    from tiny import word_level_llama

    from workbench.cli import main

    folder, prompts = word_level_llama(tmp_path, 200)
    common = ["run", str(folder), "--prompts", str(prompts), "--max-tokens", "32", "--chunk-size", "40",
              "--save-patterns", "0", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "here")]) == 0
    assert main([*common, "--out", str(tmp_path / "there"), "--executor", "ray", "--address", ray_address,
                 "--workers", "2"]) == 0
    meta = json.loads((tmp_path / "there" / "meta.json").read_text())
    assert meta["reduction"]["units"] == 5 and len(meta["inputs"]["items"]) == 200
    a = pd.read_parquet(tmp_path / "here" / "heads.parquet")
    b = pd.read_parquet(tmp_path / "there" / "heads.parquet")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            assert (a[col] - b[col]).abs().max() <= 1e-6, col
        else:
            assert a[col].tolist() == b[col].tolist(), col
