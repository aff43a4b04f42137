"""Run a job's work units on a Ray cluster: one actor per worker, each rebuilding the job once.

``RayExecutor`` implements the executor seam of ``workbench.patching.units``
(``map(fn, units)`` yielding ``(unit, result)`` as units finish). ``fn`` is the driver job's
bound ``run_unit``; the executor takes the job (``fn.__self__``), turns it into a ``JobSpec``
(``executors.spec``: the job's own ``spec()``, or a patching ``Sweep`` plus the ``source`` its
model and inputs come from) and hands units to ``workers`` actors (``_worker.Worker``), the
next unit to whichever actor is free. Each actor rebuilds the job from the spec on its first
unit of it, loading the model once per process; the actors are kept for the next sweep of
this process (``close()`` stops them; Ray stops them with the driver). A worker whose rebuilt job has another identity
(fingerprint) than the driver's stops the sweep: the spec would not describe the driver's
sweep.

Each result comes back to the driver, which records it (``UnitStore``, atomically) before
the next one is taken, so:

- a worker that dies (killed, out of memory, node lost) loses only the unit it was running:
  a new actor replaces it and the unit is run again;
- a unit that fails (raises, or its worker dies) is retried up to ``max_retries`` times,
  then left out and reported with its error (``UnitsFailed``, raised once every other unit
  has finished and been recorded);
- a driver that is killed leaves its finished units in the store, and the rerun of the same
  sweep runs only the others.

Resources: each actor asks Ray for ``cpus_per_worker`` CPUs (its torch threads) and
``num_gpus_per_unit`` GPUs (fractions share a GPU); with GPUs and no device in the spec the
job is rebuilt on ``"cuda"``, the GPU Ray assigned it. ``address`` is passed to ``ray.init``
(None: ``$RAY_ADDRESS`` or a new local cluster of this machine's CPUs); a process where Ray
is already initialised uses that cluster. ``ray.init`` installs its own SIGTERM handler (exit
at once); the executor puts the caller's back, so the CLI still stops cleanly (exit 143,
finished units kept).
"""
from __future__ import annotations

import signal
import threading
from collections import deque

from ..errors import UserError
from ..patching.units import ReportingExecutor, UnitsFailed
from ._worker import JobBuildError, Worker
from .spec import JobSpec, identity, spec_of

EXTRA = "pip install '.[ray]'"
_POOLS: dict = {}     # (cluster, job, cpus, gpus) -> actors of this process


def require_ray():
    """The ``ray`` module; UserError naming the extra where it is not installed."""
    try:
        import ray
    except ImportError:
        raise UserError(f"executor='ray' needs Ray, an optional extra: {EXTRA} (or pip install 'workbench[ray]')",
                        cli=f"--executor ray needs Ray, an optional extra: {EXTRA} "
                            "(or pip install 'workbench[ray]')") from None
    return ray


class RayExecutor(ReportingExecutor):
    """Units as Ray actor calls; see the module docstring.

    Args:
        source: where a patching sweep's model and inputs come from (``spec.task_source``);
            not needed for a job with its own ``spec()``.
        spec: the job's ``JobSpec`` (default: from the job, see ``spec.spec_of``).
        address: Ray cluster address (``ray.init(address=...)``).
        workers: actors to start (default and at most: as many as the cluster's CPUs, or GPUs
            with ``num_gpus_per_unit``, fit; never more than the units).
        num_gpus_per_unit: GPUs each actor (which runs one unit at a time) asks for.
        cpus_per_worker: CPUs each actor asks for (and its torch threads).
        max_retries: reruns of a failed unit before it is reported.
        progress(i, n, unit): called as the i-th unit of n finishes; on_resume: see
            ``ReportingExecutor``.

    Attributes (after ``map``): ``runs`` unit runs started, ``restarts`` actors replaced,
    ``pids`` {unit id: process that computed it}.

    Raises:
        UserError: Ray is not installed, or a count is out of range.
    """

    def __init__(self, source: dict | None = None, *, spec: JobSpec | None = None, address: str | None = None,
                 workers: int | None = None, num_gpus_per_unit: float = 0.0, cpus_per_worker: float = 1.0,
                 max_retries: int = 2, progress=None, on_resume=None):
        super().__init__(progress, on_resume)
        require_ray()
        for name, val, lo in (("workers", workers, 1), ("num_gpus_per_unit", num_gpus_per_unit, 0),
                              ("cpus_per_worker", cpus_per_worker, 0), ("max_retries", max_retries, 0)):
            if val is not None and val < lo:
                raise UserError(f"{name} must be >= {lo}, got {val}")
        self.source, self.spec, self.address, self.workers = source, spec, address, workers
        self.num_gpus, self.cpus, self.max_retries = float(num_gpus_per_unit), float(cpus_per_worker), max_retries
        self.runs, self.restarts, self.pids = 0, 0, {}

    def connect(self):
        """Initialise Ray (unless this process already has) and return the module."""
        ray = require_ray()
        if not ray.is_initialized():
            main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
            finally:       # ray.init makes SIGTERM exit at once; keep the caller's (the CLI's: clean exit 143)
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
        return ray

    def _n_workers(self, ray, n_units: int) -> int:
        have = ray.cluster_resources()
        kind, each = ("GPU", self.num_gpus) if self.num_gpus > 0 else ("CPU", self.cpus)
        fit = int(have.get(kind, 0) // each) if each > 0 else n_units
        if fit < 1:
            raise UserError(f"the Ray cluster has {have.get(kind, 0):g} {kind}s, less than the {each:g} one "
                            "worker asks for; lower num_gpus_per_unit / cpus_per_worker or add nodes")
        return max(1, min(self.workers or fit, fit, n_units))   # an actor that cannot start would hold its unit

    def _pool(self, ray) -> list:
        """This process's actors for this executor's resources (kept between sweeps, so a worker
        process starts and imports once; each caches its models)."""
        ctx = ray.get_runtime_context()
        key = (ctx.gcs_address, ctx.get_job_id(), self.cpus, self.num_gpus)
        return _POOLS.setdefault(key, [])

    def _spawn(self, ray):
        actor = ray.remote(Worker).options(num_cpus=self.cpus, num_gpus=self.num_gpus, max_restarts=0)
        return actor.remote("cuda" if self.num_gpus > 0 else None, max(1, int(self.cpus)))

    def close(self) -> None:
        """Stop this executor's actors (a later ``map`` starts new ones)."""
        ray = require_ray()
        if ray.is_initialized():
            pool = self._pool(ray)
            for a in pool:
                ray.kill(a, no_restart=True)
            pool.clear()

    def map(self, fn, units):
        units = list(units)
        if not units:
            return
        job = getattr(fn, "__self__", None)
        spec = self.spec or spec_of(job, self.source)
        expected = identity(job) if job is not None else None
        ray = self.connect()
        pool = self._pool(ray)
        n = self._n_workers(ray, len(units))
        while len(pool) < n:
            pool.append(self._spawn(ray))
        spec_ref = ray.put(spec.to_json())
        queue, inflight, attempts, errors, done = deque(units), {}, {}, {}, 0

        def submit(i: int) -> None:
            if queue:
                u = queue.popleft()
                inflight[pool[i].run.remote(spec_ref, u)] = (i, u)
                self.runs += 1

        def failed(unit, exc) -> None:
            attempts[unit] = attempts.get(unit, 0) + 1
            if attempts[unit] <= self.max_retries:
                queue.append(unit)
            else:
                lines = str(exc).strip().splitlines()
                errors[unit] = lines[-1] if lines else type(exc).__name__

        try:
            for i in range(n):
                submit(i)
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                i, unit = inflight.pop(ref)
                try:
                    ident, pid, res = ray.get(ref)
                except ray.exceptions.RayActorError as exc:   # the worker died: a new one takes its place
                    pool[i] = self._spawn(ray)
                    self.restarts += 1
                    failed(unit, exc)
                except ray.exceptions.RayTaskError as exc:    # the unit raised
                    if isinstance(getattr(exc, "cause", None), JobBuildError):
                        raise RuntimeError(f"a Ray worker could not rebuild the job from its spec: {exc.cause}") \
                            from None
                    failed(unit, exc)
                except ray.exceptions.RayError as exc:        # its result was lost
                    failed(unit, exc)
                else:
                    if expected is not None and ident != expected:
                        raise RuntimeError(f"a Ray worker rebuilt a different job (identity {ident} != the driver's "
                                           f"{expected}): its spec does not describe this sweep")
                    self.pids[getattr(unit, "id", repr(unit))] = pid
                    submit(i)                                 # keep the worker busy while the driver records
                    done += 1
                    if self.progress is not None:
                        self.progress(done - 1, len(units), unit)
                    yield unit, res
                    continue
                submit(i)
        finally:
            for i, _ in inflight.values():                    # a sweep stopped early: stop its busy workers
                ray.kill(pool[i], no_restart=True)
            pool[:] = [a for i, a in enumerate(pool) if i not in {j for j, _ in inflight.values()}]
        if errors:
            raise UnitsFailed(errors, self.max_retries)
