"""Shared arguments and helpers of ``workbench patch`` and ``workbench prune``."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_task_args(p) -> None:
    p.add_argument("model", help="built-in name (see `workbench models`), local HF folder or hub id")
    p.add_argument("--task", help="ioi | ioi-abc | facts | induction (causal LMs), similarity (sentence encoders), "
                                  "speech (Whisper), or a .jsonl file of clean/corrupt pairs "
                                  "(default: ioi, similarity or speech by model kind)")
    p.add_argument("--n", type=int, default=None, metavar="N", help="number of prompt pairs (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    add_placement_args(p)
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_placement_args(p) -> None:
    """``--device`` and ``--dtype`` (``workbench.load(device=, dtype=)``), for run, patch and prune."""
    p.add_argument("--device", default=None, help="cpu (default) | cuda | cuda:N")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "auto"),
                   help="weights dtype (default float32; auto: the checkpoint's)")


def at_least(value, flag: str, lo) -> None:
    """UserError unless ``value`` (None: not given) is >= ``lo``."""
    from ..errors import UserError

    if value is not None and value < lo:
        raise UserError(f"{flag} must be >= {lo}, got {value}")


def check_task_args(args) -> None:
    """Everything of a patch/prune command line that needs no model: --n, the output folder
    (``check_target``), the model name (``check_source``), the task name or JSONL file."""
    from .._safe_replace import check_target
    from ..errors import UserError
    from ..tasks import TASKS
    from ..tasks.jsonl import check_pairs_file
    from ..zoo._resolve import check_source

    at_least(args.n, "--n", 1)
    at_least(args.seed, "--seed", 0)
    check_executor_args(args)
    check_target(args.out, force=args.force)
    check_source(args.model)
    if args.task is not None and args.task not in TASKS:
        if not (args.task.endswith(".jsonl") or Path(args.task).exists()):
            raise UserError(f"unknown task {args.task!r}; use one of {', '.join(TASKS)} or a .jsonl file of pairs")
        check_pairs_file(args.task, args.n)


def load_task(args):
    """(model, task); UserError for a model that does not load or a task that does not fit it."""
    from ..errors import UserError
    from ..tasks import DEFAULT_TASK, TASKS, build
    from ..zoo._resolve import load_checked

    model = load_checked(args.model, quiet=args.quiet, device=args.device, dtype=args.dtype)
    name = args.task or DEFAULT_TASK.get(model.kind)
    if name is None:
        raise UserError(f"{args.model} is a {model.kind} model: there is no default task; give --task FILE.jsonl")
    if name not in TASKS:
        return model, build(model, name, n=args.n, seed=args.seed)   # JSONL: raises UserError itself
    try:
        return model, build(model, name, n=args.n, seed=args.seed)
    except ValueError as exc:   # the built-in tasks' "does not fit this model / tokenizer"
        raise UserError(str(exc)) from None


def remove_units(units_root: Path, stores: list[str]) -> None:
    """Remove the unit files this command wrote (``<units_root>/<store>/``: sweep.json and
    unit files), then the folders if they are left empty; nothing else is touched."""
    import re

    own = re.compile(r"^(sweep\.json|shard\d{4}-.+\.safetensors|\.shard\d{4}-.+\.tmp)$")
    for name in stores:
        folder = units_root / name
        if not folder.is_dir() or folder.is_symlink():
            continue
        for f in folder.iterdir():
            if own.match(f.name) and f.is_file() and not f.is_symlink():
                f.unlink()
        _rmdir_if_empty(folder)
    _rmdir_if_empty(units_root)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def units_note(units_root: Path) -> str:
    """What an interrupted patch/prune leaves and how to resume."""
    n = sum(1 for _ in units_root.rglob("shard*.safetensors")) if units_root.is_dir() else 0
    if n == 0:
        return "no run folder was written and no work unit had finished"
    return (f"no run folder was written; {n} finished work unit(s) are kept in {units_root}: "
            "rerun the same command to resume from them")


def units_folder(out: Path) -> Path:
    """Where a sweep writing the run folder ``out`` keeps its finished work units by default:
    a hidden folder beside it, so a rerun of the same command finds them."""
    return out.parent / f".{out.name}.units"


def base_meta(model, task, args) -> dict:
    """``schema.base_meta`` for a task run: inputs are the task's clean prompts."""
    from ..schema import base_meta as meta

    return meta(model, {"task": task.name, "description": task.description, "n": len(task),
                        "items": task.clean.items, "task_meta": task.meta},
                command=shlex.join(["workbench", *sys.argv[1:]]), seed=args.seed)


def add_executor_args(p) -> None:
    """Where the work units run: ``--executor inprocess|ray`` and the Ray options (patch, prune, run)."""
    g = p.add_argument_group("executor", "where the work units run (results and resuming are the same either way)")
    g.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"),
                   help="inprocess (default): one unit after another here; ray: Ray actors, each loading the "
                        "model once (needs the ray extra: pip install '.[ray]')")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join, e.g. auto or HEAD_IP:6379 (default: $RAY_ADDRESS, else a new "
                        "local Ray on this machine)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray actors (default and at most: as many as the cluster's CPUs, or GPUs with "
                        "--num-gpus-per-unit, fit)")
    g.add_argument("--num-gpus-per-unit", type=float, default=None, metavar="N",
                   help="GPUs each Ray actor asks for; it runs one unit at a time on them (fractions share a "
                        "GPU; default 0: CPU)")
    g.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="reruns of a failed unit (or of one whose worker died) before it is reported (default 2)")


RAY_FLAGS = (("address", "--address"), ("workers", "--workers"), ("num_gpus_per_unit", "--num-gpus-per-unit"),
             ("max_retries", "--max-retries"))


def check_executor_args(args) -> None:
    """UserError, before the model loads, for Ray options without ``--executor ray``, counts out
    of range, GPUs per unit with a CPU ``--device``, or ``--executor ray`` without Ray installed."""
    from ..errors import UserError

    if getattr(args, "executor", "inprocess") != "ray":
        given = [flag for name, flag in RAY_FLAGS if getattr(args, name, None) is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply to --executor ray; add it or drop them")
        return
    at_least(args.workers, "--workers", 1)
    at_least(args.num_gpus_per_unit, "--num-gpus-per-unit", 0)
    at_least(args.max_retries, "--max-retries", 0)
    if (args.num_gpus_per_unit or 0) > 0 and args.device is not None and not str(args.device).startswith("cuda"):
        raise UserError(f"--num-gpus-per-unit gives each worker a GPU but --device is {args.device}; "
                        "drop --device (workers use their GPU) or give --device cuda")
    from ..executors.ray import require_ray

    require_ray()


def executor(quiet: bool, args=None):
    """The executor of a command: in-process (``args`` None or ``--executor inprocess``) or a
    ``RayExecutor`` from the command's options; either shows progress (unless ``quiet``) and
    says how many units a rerun reused; its ``reused_seconds`` is the time those units took
    when computed. A patch/prune sweep is rebuilt on Ray workers from the command's model,
    task, --n, --seed, --device and --dtype (``executors.task_source``)."""
    from ..patching.units import InProcessExecutor

    show = resumed = None
    if not quiet:
        def show(i, n, unit):              # a line rewritten in place: only on a terminal
            if not sys.stderr.isatty():
                return
            print(f"\r  unit {i + 1}/{n} {unit.id}", end="" if i + 1 < n else "\n", file=sys.stderr, flush=True)

        def resumed(k, n, seconds):
            if k:
                print(f"  resuming: {k} of {n} units reused from an interrupted run ({seconds:.1f} s of work), "
                      f"{n - k} to compute", file=sys.stderr, flush=True)
    if args is None or getattr(args, "executor", "inprocess") != "ray":
        return InProcessExecutor(show, resumed)
    from ..executors import RayExecutor, task_source

    source = None
    if hasattr(args, "task"):
        source = task_source(args.model, args.task, n=args.n, seed=args.seed, device=args.device, dtype=args.dtype)
    return RayExecutor(source, address=args.address, workers=args.workers,
                       num_gpus_per_unit=args.num_gpus_per_unit or 0.0,
                       max_retries=2 if args.max_retries is None else args.max_retries, progress=show,
                       on_resume=resumed)
