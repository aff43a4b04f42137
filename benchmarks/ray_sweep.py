"""All-heads exact patching on smollm2-135m over IOI pairs: in-process vs Ray (1 and 2 workers),
and what a killed worker costs. Prints one table.

    .venv/bin/python benchmarks/ray_sweep.py [--pairs 64] [--workers 1,2] [--kill-after 10]

Rows, all in one process on the same task (resample noising, one unit per layer):

- ``in-process``: ``patch(...)`` with the default executor (torch's default threads, or
  ``--inprocess-threads``; on a machine shared with other jobs, more threads than free cores
  make torch far slower, so compare with 1 thread there).
- ``ray, N workers``: a local Ray of this machine's CPUs (``ray.init`` time shown apart),
  ``RayExecutor(workers=N)`` from cold: each actor starts a process, imports torch and
  transformers, loads the model and rebuilds the sweep (1 torch thread each), then runs units.
- ``ray, 2 workers, 1 killed``: the same, with one worker SIGKILLed as the driver receives
  unit ``--kill-after``; Ray replaces it (a new process loads the model) and its running unit
  is rerun. ``lost`` is its time minus the unkilled 2-worker row's.
- ``ray, 2 workers, resumed``: a driver stopped after ``--kill-after`` units, then the same
  sweep rerun by a new executor (cold actors) from its unit folder; time of the rerun.

On a 2-core machine Ray cannot be faster than in-process (which already uses both cores);
what the table shows is Ray's overhead per sweep and per unit. ``max |diff|`` compares each
row's per-pair effects with in-process (different thread counts round differently).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--kill-after", type=int, default=10, help="units received before the kill / stop")
    ap.add_argument("--inprocess-threads", type=int, default=None,
                    help="torch threads of the in-process row (default: torch's; the Ray workers use 1 each)")
    args = ap.parse_args(argv)

    import ray
    import torch

    import workbench as wb
    from workbench import tasks
    from workbench.executors import RayExecutor, task_source
    from workbench.patching import InProcessExecutor, patch

    model = wb.load("smollm2-135m")
    task = tasks.build(model, "ioi", n=args.pairs, seed=0)
    kw = dict(corrupt=task.corrupt, method="exact")
    rows = []

    def row(name, seconds, res, units, **extra):
        diff = float((res.per_input - ref.per_input).abs().max()) if rows else 0.0
        rows.append({"run": name, "seconds": seconds, "units": units, "max_diff": diff, **extra})
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)

    seen, threads = [], torch.get_num_threads()
    if args.inprocess_threads:
        torch.set_num_threads(args.inprocess_threads)
    t = time.perf_counter()
    ref = patch(model, task.clean, task.metric, executor=InProcessExecutor(lambda i, n, u: seen.append(u)), **kw)
    row(f"in-process ({torch.get_num_threads()} thr.)", time.perf_counter() - t, ref, len(seen))
    torch.set_num_threads(threads)
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_init = time.perf_counter() - t
    source = task_source("smollm2-135m", "ioi", n=args.pairs, seed=0)
    times = {}
    for w in [int(x) for x in args.workers.split(",")]:
        ex = RayExecutor(source, workers=w)
        t = time.perf_counter()
        res = patch(model, task.clean, task.metric, executor=ex, **kw)
        times[w] = time.perf_counter() - t
        row(f"ray, {w} worker{'s' * (w > 1)}", times[w], res, ex.runs)
        ex.close()

    with tempfile.TemporaryDirectory() as tmp:
        killed = []

        def kill(i, n, unit):
            if i == args.kill_after - 1 and not killed:
                killed.append(ex.pids[unit.id])
                os.kill(killed[0], signal.SIGKILL)

        ex = RayExecutor(source, workers=2, progress=kill)
        t = time.perf_counter()
        res = patch(model, task.clean, task.metric, executor=ex, store=str(Path(tmp) / "killed"), **kw)
        dt = time.perf_counter() - t
        row("ray, 2 workers, 1 killed", dt, res, ex.runs, lost=dt - times.get(2, float("nan")),
            restarts=ex.restarts)
        ex.close()

        class Stop(Exception):
            pass

        def stop(i, n, unit):
            if i == args.kill_after:
                raise Stop
        ex = RayExecutor(source, workers=2, progress=stop)
        t = time.perf_counter()
        try:
            patch(model, task.clean, task.metric, executor=ex, store=str(Path(tmp) / "resumed"), **kw)
        except Stop:
            pass
        first = time.perf_counter() - t
        ex.close()
        ex = RayExecutor(source, workers=2)
        t = time.perf_counter()
        res = patch(model, task.clean, task.metric, executor=ex, store=str(Path(tmp) / "resumed"), **kw)
        dt = time.perf_counter() - t
        row("ray, 2 workers, resumed", dt, res, ex.runs, lost=first + dt - times.get(2, float("nan")),
            reused=ex.reused)
        ex.close()
    ray.shutdown()

    print(f"\nsmollm2-135m, IOI, {args.pairs} pairs, exact resample noising, all {len(ref.heads)} heads; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}; ray.init {t_init:.1f} s (not "
          "in the rows)")
    print(f"{'run':<28} {'seconds':>8} {'unit runs':>9} {'vs in-process':>13} {'lost':>7} {'max |diff|':>10}")
    for r in rows:
        lost = f"{r['lost']:.1f}" if "lost" in r else ""
        print(f"{r['run']:<28} {r['seconds']:>8.1f} {r['units'] or '':>9} {r['seconds'] / rows[0]['seconds']:>12.2f}x "
              f"{lost:>7} {r['max_diff']:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
