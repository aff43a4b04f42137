"""Work units run by another executor: worker processes that rebuild the sweep themselves.

This is the shape of a distributed executor (issue: "a distributed executor can be added
without touching the engine"): the executor gets only ``fn`` and the units; each worker
process loads the model and task from files, rebuilds the ``Sweep`` and runs
``sweep.run_unit(unit)``. Its results must equal the in-process run's.
"""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import torch

_SWEEP = None


def _build(model_dir: str, pairs: str, config: dict):
    import workbench as wb
    from workbench import tasks
    from workbench.patching import PatchConfig, Sweep

    model = wb.load(model_dir)
    task = tasks.build(model, pairs)
    return Sweep(model, task.clean, task.metric, corrupt=task.corrupt, config=PatchConfig(**config))


def _init(build) -> None:
    global _SWEEP
    torch.set_num_threads(1)
    _SWEEP = build()


def _run(unit):
    return _SWEEP.run_unit(unit)


class ProcessExecutor:
    """Runs units in ``workers`` spawned processes, each rebuilding the sweep with ``build``."""

    def __init__(self, build, workers: int = 2):
        self.build, self.workers = build, workers

    def map(self, fn, units):                      # fn (this process's sweep) is not shipped
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init, initargs=(self.build,)) as pool:
            yield from zip(units, pool.map(_run, units))


def test_units_run_in_worker_processes_equal_in_process(tmp_path):
    from tiny import tiny_hf

    import workbench as wb
    from workbench import tasks
    from workbench.patching import PatchConfig, Sweep, patch

    tiny_hf("llama").save_pretrained(tmp_path / "tiny-llama")
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"clean": [1, 2, 3, 9, 7], "corrupt": [1, 5, 3, 9, 7], "target": 4, "distractor": 6},
            {"clean": [3, 8, 2, 2, 5], "corrupt": [3, 8, 6, 2, 5], "target": 1, "distractor": 2},
            {"clean": [4, 4, 1, 7, 3], "corrupt": [9, 4, 1, 7, 3], "target": 8, "distractor": 5}]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    config = {"method": "exact", "shard_size": 2}
    model = wb.load(str(tmp_path / "tiny-llama"))
    task = tasks.build(model, str(pairs))
    here = patch(model, task.clean, task.metric, corrupt=task.corrupt, **config)
    build = partial(_build, str(tmp_path / "tiny-llama"), str(pairs), config)
    there = patch(model, task.clean, task.metric, corrupt=task.corrupt, executor=ProcessExecutor(build), **config)
    units = Sweep(model, task.clean, task.metric, corrupt=task.corrupt, config=PatchConfig(**config)).units()
    assert len(units) > 2                                                  # several units, 2 workers
    assert torch.isfinite(there.per_input).all() and there.per_input.abs().sum() > 0
    torch.testing.assert_close(there.per_input, here.per_input, atol=1e-6, rtol=0)
