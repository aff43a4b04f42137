"""Job specs: how to rebuild a job (a patching ``Sweep``, a dataset-statistics job) in another
process from plain data, never from pickles of loaded objects.

A *job* is what an executor runs units of (contract in ``workbench.patching.units``). A
distributed executor ships the job's ``JobSpec`` to each worker, which calls
``spec.build()`` once (loading the model itself) and then ``job.run_unit(unit)`` per unit.

    JobSpec(builder="workbench.executors.spec:rebuild_sweep", args={...})   # JSON-able args

``builder`` names an importable function ``module:function``; ``build(device=None)`` calls
``function(**args)``, adding ``device=`` when one is given (a Ray worker given a GPU passes
``"cuda"``), so a builder takes ``device`` and uses it when ``args`` name none.

A sweep's spec is its *source* (where the model and inputs come from: ``task_source``) plus
its settings (``PatchConfig``, heads, whether corrupt inputs are patched in). A pairs file is
carried as its text (and its absolute path, used where it exists with the same text), so a
worker on another node needs neither the driver's files nor its working directory; a local
model folder must exist at the same absolute path on every node (a built-in name or hub id
loads anywhere it is installed / cached).

``identity(job)`` is what a worker's rebuilt job must share with the driver's: the job's
``fingerprint()`` and, for a mean-ablation sweep, a digest of the mean activations (they
come from reference inputs that the fingerprint does not cover).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class JobSpec:
    """How to rebuild a job: ``builder`` ("module:function") called with ``args`` (JSON-able).

    Raises:
        ValueError: ``builder`` is not "module:function" or ``args`` is not plain JSON data.
    """

    builder: str
    args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        mod, _, fn = self.builder.partition(":")
        if not (mod and fn):
            raise ValueError(f"builder {self.builder!r} is not 'module:function'")
        try:
            plain = json.loads(json.dumps(self.args))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job spec args must be plain JSON data: {exc}") from None
        if plain != self.args:
            raise ValueError("job spec args must be plain JSON data (str keys, lists, numbers, strings)")

    def to_json(self) -> str:
        return json.dumps({"builder": self.builder, "args": self.args}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        d = json.loads(text)
        return cls(d["builder"], d.get("args", {}))

    def build(self, device: str | None = None):
        """Import the builder and call it: the rebuilt job."""
        mod, _, fn = self.builder.partition(":")
        func = getattr(importlib.import_module(mod), fn)
        return func(**self.args, **({"device": device} if device is not None else {}))


def identity(job) -> str:
    """The job's fingerprint, plus a digest of a mean-ablation sweep's mean activations."""
    fp = job.fingerprint()
    means = getattr(job, "means", None)
    if not means:
        return fp
    h = hashlib.sha256(fp.encode())
    for head in sorted(means):
        h.update(head.name.encode())
        h.update(means[head].detach().float().cpu().contiguous().numpy().tobytes())
    return f"{fp}-{h.hexdigest()[:12]}"


def spec_of(job, source: dict | None) -> JobSpec:
    """The job's own ``spec()`` if it has one, else a ``Sweep``'s spec from ``source``.

    Raises:
        UserError: a sweep without a ``source`` (nothing says how to load its model and inputs).
        TypeError: a job that is neither.
    """
    from ..errors import UserError
    from ..patching.engine import Sweep

    if hasattr(job, "spec"):
        return job.spec()
    if isinstance(job, Sweep):
        if source is None:
            raise UserError("a sweep run on Ray workers is rebuilt there from plain data: give the executor a "
                            "source (workbench.executors.task_source(model, task, ...))")
        return sweep_spec(job, source)
    raise TypeError(f"{type(job).__name__} has no spec(): a distributed executor cannot rebuild it in a worker")


def sweep_spec(sweep, source: dict) -> JobSpec:
    """The spec of a patching ``Sweep`` whose model and inputs come from ``source``."""
    heads = None if sweep.heads == sweep.model.heads() else [[h.stream, h.layer, h.head] for h in sweep.heads]
    return JobSpec("workbench.executors.spec:rebuild_sweep",
                   {"source": source, "config": asdict(sweep.cfg), "heads": heads,
                    "corrupt": sweep.corrupt is not None})


def task_source(model: str, task: str | None = None, *, n: int | None = None, seed: int = 0,
                device: str | None = None, dtype: str | None = None) -> dict:
    """Where a sweep's model and inputs come from, as plain data (what ``patch``/``prune`` load).

    Args:
        model: built-in name, hub id or local HF folder (made absolute here).
        task: a built-in task name, a ``.jsonl`` pairs file (its text is carried), or None
            (the model kind's default task).
        n, seed: passed to ``tasks.build``; device, dtype: passed to ``workbench.load``.
    """
    src = {"model": str(Path(model).resolve()) if Path(model).exists() else model, "device": device,
           "dtype": dtype, "task": task, "task_file": None, "n": n, "seed": seed}
    if task is not None and Path(task).is_file():
        p = Path(task).resolve()
        src["task_file"] = {"name": p.name, "path": str(p), "text": p.read_text()}
    return src


_MODELS: dict = {}


def load_model(name: str, device: str | None = None, dtype: str | None = None):
    """``workbench.load(name, device=, dtype=)``, loaded once per process (a worker that runs
    several jobs on one model keeps it). Jobs never change a model's weights."""
    import workbench as wb

    key = (name, device, dtype)
    if key not in _MODELS:
        _MODELS[key] = wb.load(name, device=device, dtype=dtype)
    return _MODELS[key]


def load_source(source: dict, device: str | None = None):
    """(model, task) of ``source`` (``task_source``); ``device`` is used where it names none."""
    from ..tasks import DEFAULT_TASK, build

    model = load_model(source["model"], source.get("device") or device, source.get("dtype"))
    name = source.get("task") or DEFAULT_TASK.get(model.kind)
    tf = source.get("task_file")
    if tf is None:
        return model, build(model, name, n=source.get("n"), seed=source.get("seed", 0))
    path = Path(tf["path"])
    if not (path.is_file() and path.read_text() == tf["text"]):       # not on this node: the carried text
        path = Path(tempfile.mkdtemp(prefix="workbench-task-")) / tf["name"]
        path.write_text(tf["text"])
    return model, build(model, str(path), n=source.get("n"), seed=source.get("seed", 0))


def rebuild_sweep(source: dict, config: dict, heads: list | None = None, corrupt: bool = True,
                  device: str | None = None):
    """Builder of ``sweep_spec``: load the model and task, then the same ``Sweep``."""
    from .._types import Head
    from ..patching.engine import PatchConfig, Sweep

    model, task = load_source(source, device)
    return Sweep(model, task.clean, task.metric, corrupt=task.corrupt if corrupt else None,
                 heads=None if heads is None else [Head(*h) for h in heads], config=PatchConfig(**config))
