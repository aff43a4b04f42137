"""Work units of a patching sweep, the executor seam that runs them, and the record of finished ones.

A sweep is a set of independent units, each (prompt shard x head group): for the exact
and naive methods a head group is, by default, the heads of one site (``sites_per_unit``
groups several sites of one stack of layers, whose variants then share pipelined
batches), for AtP / AtP* every head (one forward and backward serve them all). A unit's result is a
dict of tensors.

The executor seam
-----------------
A *job* (``engine.Sweep``; the dataset-statistics job of ``workbench run`` follows the same
contract) offers

- ``units() -> list``: independent units, hashable plain data (frozen dataclasses of ints,
  strings and tuples), each with an ``id`` that is unique in the job and safe as a file
  name. Their order is a hint (units of one shard are next to each other), not a contract.
- ``setup(shard)``: state shared by the units of one shard (base run, captured activations),
  built on a worker's first unit of that shard and cached, so a worker given units of one
  shard in a row builds it once. Only ``run_unit`` calls it; an executor never needs to.
- ``run_unit(unit) -> dict[str, Tensor]``: the unit's result, a pure function of the job and
  the unit: the same in any process that built (or rebuilt) the same job, in any order.
  Tensors are on the CPU or moved there by the caller; they are saved with safetensors.
- ``assemble(results: {unit: result}) -> result object``, on the driver, from every unit.
- ``fingerprint() -> str``: identifies what is computed (model, weights, inputs, metric,
  heads, settings); ``UnitStore`` keys finished units by it, and a rebuilt job must have
  the driver's.
- ``spec() -> executors.spec.JobSpec`` (optional): plain data a worker rebuilds the job from
  in another process (``spec.build()``); a ``Sweep`` gets its spec from the executor's
  ``source`` instead (``executors.spec.sweep_spec``).

An *executor* implements one method,

    executor.map(fn, units) -> iterable of (unit, result)

where ``fn`` is the driver job's bound ``run_unit`` (so ``fn.__self__`` is the job) and
``units`` those still to run. It yields each unit's result as soon as it has it, in any
order, every unit once; the driver (``run_units``) records each result before taking the
next, so whatever was yielded survives the executor or the driver being killed. A unit that
fails for good is raised as ``UnitsFailed`` once the others have been yielded. An executor
with a ``resumed(n_reused, n_total, seconds)`` method is told, before it runs anything, how
many units the store already held (``ReportingExecutor``). ``InProcessExecutor`` (the
default) calls ``fn`` here, one unit after another; ``workbench.executors.RayExecutor``
ships the job's spec to actors that rebuild it once each, and checks that their job's
fingerprint is the driver's. Adding an engine touches neither the engine nor the jobs.

``UnitStore`` records each finished unit as ``<folder>/<unit id>.safetensors`` (written to a
temporary file and renamed, so a unit is either complete or absent) under a fingerprint of
the sweep (model, inputs, metric, heads, method, ablation, direction, node, per_position; a
mean ablation's reference inputs: ``Sweep.store_key``); a rerun of the same
sweep loads finished units instead of recomputing them, a different sweep refuses the folder.
Each unit file records the seconds the unit took (safetensors metadata ``seconds``: the
time between the driver receiving it and the previous unit, so with parallel workers the
units' seconds add up to the sweep's wall time), so a resumed sweep can report the time of
all its units.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from ..errors import user_error


@dataclass(frozen=True, order=True)
class Unit:
    """One independent piece of a sweep: prompt ``shard`` and a group of sites with their heads.

    ``sites`` is ``((stream, layer, (head, ...)), ...)``; empty means every head (AtP / AtP*).
    """

    shard: int
    sites: tuple = ()

    @property
    def id(self) -> str:
        if not self.sites:
            return f"shard{self.shard:04d}-all"
        (s0, l0, h0), (s1, l1, _) = self.sites[0], self.sites[-1]
        if len(self.sites) == 1:
            return f"shard{self.shard:04d}-{s0}-{l0:03d}-h{'-'.join(str(h) for h in h0)}"
        digest = hashlib.sha256(repr(self.sites).encode()).hexdigest()[:8]
        return f"shard{self.shard:04d}-{s0}-{l0:03d}-to-{s1}-{l1:03d}-{len(self.sites)}sites-{digest}"

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(s, l) for s, l, _ in self.sites]


class Executor(Protocol):
    def map(self, fn: Callable[[Unit], dict], units: Sequence[Unit]) -> Iterable[tuple[Unit, dict]]: ...


class UnitsFailed(RuntimeError):
    """Units that still failed after their retries; ``errors`` maps each to its error's last
    line. Every other unit was finished and recorded: a rerun computes only these."""

    def __init__(self, errors: dict, retries: int):
        self.errors = errors
        shown = "; ".join(f"{getattr(u, 'id', u)}: {e}" for u, e in list(errors.items())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} work unit(s) failed after {retries} retries each (the others are "
                         f"recorded; rerunning resumes from them): {shown}{more}")


class ReportingExecutor:
    """What executors share: an optional ``progress(i, n, unit)`` callback and
    ``on_resume(n_reused, n_total, seconds)``, and the count (``reused``) and compute time
    (``reused_seconds``) of the units a rerun took from the store."""

    def __init__(self, progress: Callable[[int, int, Unit], None] | None = None,
                 on_resume: Callable[[int, int, float], None] | None = None):
        self.progress = progress
        self.on_resume = on_resume
        self.reused, self.reused_seconds = 0, 0.0

    def resumed(self, n_reused: int, n_total: int, seconds: float) -> None:
        """Called by ``run_units``: ``n_reused`` of ``n_total`` units came from the store and
        took ``seconds`` when they were computed."""
        self.reused += n_reused
        self.reused_seconds += seconds
        if self.on_resume is not None:
            self.on_resume(n_reused, n_total, seconds)


class InProcessExecutor(ReportingExecutor):
    """Run units one after another in this process (optionally reporting progress)."""

    def map(self, fn, units) -> Iterator[tuple[Unit, dict]]:
        for i, unit in enumerate(units):
            if self.progress is not None:
                self.progress(i, len(units), unit)
            yield unit, fn(unit)


class UnitStore:
    """Finished units of one sweep, kept in ``folder`` (created if needed).

    Temporary files a killed writer left (``.<unit id>.*.tmp``) are removed on opening.

    Raises:
        UserError: ``folder`` records a different sweep (another fingerprint).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for tmp in self.folder.glob(".shard*.tmp"):
            tmp.unlink(missing_ok=True)
        fp = self.folder / "sweep.json"
        if fp.is_file():
            have = json.loads(fp.read_text()).get("fingerprint")
            if have != fingerprint:
                raise user_error("unit folder {folder} holds finished units of a different sweep (another model, "
                                 "inputs, method or settings: fingerprint {have} != {fp}); rerun that sweep to "
                                 "finish it, delete the folder, or give another {store}",
                                 folder=self.folder, have=have, fp=fingerprint)
        else:
            fp.write_text(json.dumps({"fingerprint": fingerprint}))
        self.fingerprint = fingerprint

    def path(self, unit: Unit) -> Path:
        return self.folder / f"{unit.id}.safetensors"

    def done(self, unit: Unit) -> bool:
        return self.path(unit).is_file()

    def load(self, unit: Unit) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.path(unit)))

    def seconds(self, unit: Unit) -> float:
        """Seconds the stored unit took to compute (0 if not recorded)."""
        from safetensors import safe_open

        with safe_open(str(self.path(unit)), framework="pt") as f:
            return float((f.metadata() or {}).get("seconds", 0.0))

    def save(self, unit: Unit, result: dict, seconds: float = 0.0) -> None:
        from safetensors.torch import save_file

        fd, tmp = tempfile.mkstemp(prefix=f".{unit.id}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in result.items()}, tmp,
                      metadata={"seconds": repr(float(seconds))})
            os.replace(tmp, self.path(unit))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def run_units(fn: Callable[[Unit], dict], units: Sequence[Unit], executor=None,
              store: UnitStore | None = None) -> dict[Unit, dict]:
    """Run ``units`` (skipping those ``store`` already holds) and return every unit's result."""
    return dict(iter_units(fn, units, executor, store))


def iter_units(fn: Callable[[Unit], dict], units: Sequence[Unit], executor=None,
               store: UnitStore | None = None) -> Iterator[tuple[Unit, dict]]:
    """``run_units`` one result at a time: (unit, result) for the units ``store`` holds (loaded
    one by one), then for the others as the executor finishes them (each recorded in ``store``
    first). A caller that folds results as they come (``dataset_stats``) keeps none of them.

    Raises:
        RuntimeError: after the last result, when the executor returned none for some unit."""
    executor = executor or InProcessExecutor()
    todo = [u for u in units if store is None or not store.done(u)]
    reused = [u for u in units if store is not None and store.done(u)]
    if store is not None and hasattr(executor, "resumed"):
        executor.resumed(len(reused), len(units), sum(store.seconds(u) for u in reused))
    seen = set()
    for u in reused:
        seen.add(u)
        yield u, store.load(u)
    t = time.perf_counter()
    for unit, res in executor.map(fn, todo):
        now = time.perf_counter()
        if store is not None:
            store.save(unit, res, seconds=now - t)
        seen.add(unit)
        yield unit, res
        t = time.perf_counter()
    missing = [u.id for u in units if u not in seen]
    if missing:
        raise RuntimeError(f"the executor returned no result for units {missing[:5]}")
