"""Executors that run a job's work units elsewhere than this process, and the job specs they
rebuild jobs from (the seam is documented in ``workbench.patching.units``).

    from workbench.executors import RayExecutor, task_source
    ex = RayExecutor(task_source("smollm2-135m", "ioi", n=64), address="auto", num_gpus_per_unit=1)
    workbench.patching.patch(model, task.clean, task.metric, corrupt=task.corrupt, executor=ex)

Ray is the optional ``ray`` extra (``pip install '.[ray]'``); it is imported only when a
``RayExecutor`` is made.
"""
from .ray import RayExecutor, require_ray
from .spec import JobSpec, identity, spec_of, task_source

__all__ = ["JobSpec", "RayExecutor", "identity", "require_ray", "spec_of", "task_source"]
