"""The worker a distributed executor keeps per process: it rebuilds a job from its spec the
first time it sees that spec (models are cached per process, so the next job on the same
model does not load it again) and runs units of it. Plain Python (no Ray import), so any
engine can wrap it as an actor."""
from __future__ import annotations

import os


class JobBuildError(RuntimeError):
    """The worker could not rebuild the job from its spec (not a failure of one unit)."""


class Worker:
    """Runs units of the job of a ``JobSpec`` (as JSON) on ``device`` (None: what the spec
    says) with ``threads`` torch threads."""

    def __init__(self, device: str | None = None, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device, self.pid = device, os.getpid()
        self.spec_json, self.job, self.identity = None, None, None

    def _job(self, spec_json: str):
        from .spec import JobSpec, identity

        if spec_json != self.spec_json:
            self.spec_json, self.job = None, None
            try:
                job = JobSpec.from_json(spec_json).build(device=self.device)
                self.identity = identity(job)
            except Exception as exc:
                raise JobBuildError(f"{type(exc).__name__}: {exc}") from exc
            self.spec_json, self.job = spec_json, job
        return self.job

    def run(self, spec_json: str, unit) -> tuple[str, int, dict]:
        """(the rebuilt job's identity, this process's id, the unit's result as CPU tensors)."""
        res = self._job(spec_json).run_unit(unit)
        return self.identity, self.pid, {k: v.detach().cpu().contiguous() for k, v in res.items()}
