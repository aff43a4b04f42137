"""A small job for the executor tests (not a patching sweep): unit i returns i * base, units
named in ``fail`` raise every time, those in ``fail_once`` raise on their first run only (the
first process to claim the flag file ``<flags>/<unit id>`` fails). It follows the job contract
of ``workbench.patching.units`` (units, run_unit, assemble, fingerprint, spec), so a Ray worker
rebuilds it with ``build`` (tests/ on the workers' PYTHONPATH)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from workbench.executors.spec import JobSpec
from workbench.patching.units import Unit


class Arange:
    def __init__(self, n: int, base: float, fail=(), fail_once=(), flags: str | None = None):
        self.n, self.base, self.fail, self.fail_once, self.flags = n, base, list(fail), list(fail_once), flags

    def units(self) -> list[Unit]:
        return [Unit(i) for i in range(self.n)]

    def run_unit(self, unit: Unit) -> dict:
        if unit.shard in self.fail:
            raise ValueError(f"unit {unit.shard} always fails")
        if unit.shard in self.fail_once:
            flag = Path(self.flags) / f"{unit.id}"
            try:
                os.rename(flag, f"{flag}.taken")          # only one run ever claims it
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError(f"unit {unit.shard} fails once")
        return {"x": torch.full((3,), unit.shard * self.base), "pid": torch.tensor([os.getpid()])}

    def assemble(self, results: dict) -> torch.Tensor:
        return torch.stack([results[u]["x"] for u in self.units()])

    def fingerprint(self) -> str:
        return f"arange-{self.n}-{self.base}"

    def spec(self) -> JobSpec:
        return JobSpec("_ray_jobs:build", {"n": self.n, "base": self.base, "fail": self.fail,
                                           "fail_once": self.fail_once, "flags": self.flags})


def build(n, base, fail=(), fail_once=(), flags=None, device=None) -> Arange:
    return Arange(n, base, fail, fail_once, flags)


def build_other(n, base, **kw) -> Arange:
    """A builder that makes another job than its spec's driver (base + 1)."""
    return Arange(n, base + 1)
