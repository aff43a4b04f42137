"""``workbench patch``: activation patching of every head on a task; writes a run folder.

heads.parquet gets ``patch.effect`` (mean over pairs of metric(patched) - metric(base),
metric units), ``patch.effect_norm`` (resample: divided by the clean-vs-corrupt gap),
``patch.rank`` (by |effect|), ``patch.method``, ``patch.metric``, ``patch.ablation``,
``patch.direction``; further methods given with ``--method a,b`` add
``patch.effect_<method>`` columns. ``patch.safetensors`` holds the [stream, layer, head]
effect tensor, per-pair effects and, with ``--per-position``, effects per position.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ._task_args import add_task_args, base_meta, load_task, progress


def register(sub) -> None:
    p = sub.add_parser("patch", help="activation patching of every head on a task (exact, AtP, AtP*)")
    add_task_args(p)
    p.add_argument("--method", default="exact",
                   help="exact | naive | atp | atp-star, or several comma-separated (the first fills "
                        "patch.effect; default exact)")
    p.add_argument("--ablation", default="resample", choices=("zero", "mean", "resample"),
                   help="what is patched in (default resample: the paired input's activations)")
    p.add_argument("--direction", default="noising", choices=("noising", "denoising"),
                   help="noising: patch into the clean run; denoising: restore clean activations (default noising)")
    p.add_argument("--per-position", action="store_true", help="also patch each (head, query position)")
    p.add_argument("--update", default="z", choices=("z", "rank"), help="how the fast path applies a patch")
    p.add_argument("--shard-size", type=int, default=None, help="pairs per work unit (default: all)")
    p.add_argument("--units", default=None, help="folder recording finished work units, so an interrupted "
                                                 "run resumes (default: a hidden folder beside --out)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import UserError
    from ..patching import METHODS, patch
    from ..circuits.direct_patch import dla_patch      # --method dla: direct-path effects, one pass
    from ..patching.engine import _ALIASES
    from ..patching.units import InProcessExecutor
    from ..runs import RunExistsError, save_run

    methods = [_ALIASES.get(m.strip(), m.strip()) for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in (*METHODS, "dla")]
    if not methods or bad:
        raise UserError(f"unknown method(s) {bad or args.method!r}; use exact, naive, atp, atp-star, dla")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise RunExistsError(f"output folder {out} already exists; pass --force to replace it")
    model, task = load_task(args)
    if args.ablation == "resample" and task.corrupt is None:
        raise UserError(f"task {task.name} has no corrupt inputs; use --ablation zero|mean")
    units_root = Path(args.units) if args.units else out.parent / f".{out.name}.units"
    results = []
    for m in methods:
        units = units_root / m.replace("*", "_star")
        if not args.quiet:
            print(f"{m}: {task.name} on {model.name}, {len(task)} pairs, {args.ablation} {args.direction}",
                  file=sys.stderr)
        try:
            run_one = dla_patch if m == "dla" else patch
            res = run_one(model, task.clean, task.metric, corrupt=task.corrupt, method=m, ablation=args.ablation,
                        direction=args.direction, per_position=args.per_position, shard_size=args.shard_size,
                        update=args.update, executor=InProcessExecutor(progress(args.quiet)), store=str(units))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        results.append(res)
    main = results[0]
    table = main.table()
    for r in results[1:]:
        name = r.method.replace("*", "_star")
        table[f"patch.effect_{name}"] = r.effect.double().numpy()
        table[f"patch.rank_{name}"] = r.rank().numpy()
    meta = base_meta(model, task, args)
    meta["analyses"] = {"patch": {**main.meta(), "update": args.update, "task": task.name,
                                  "also": [{"method": r.method, "seconds": round(r.seconds, 3)} for r in results[1:]]}}
    tensors = {"patch": main.tensors()}
    for r in results[1:]:
        tensors[f"patch_{r.method.replace('*', '_star')}"] = r.tensors()
    save_run(out, table, meta, tensors, force=args.force)
    shutil.rmtree(units_root, ignore_errors=True)
    print(summary(main, task, out))
    return 0


def summary(res, task, out) -> str:
    t = res.table().sort_values("patch.rank").head(8)
    clean = float(res.clean_metric.mean())
    corrupt = "" if res.corrupt_metric is None else f", corrupt {float(res.corrupt_metric.mean()):.3f}"
    lines = [f"{task.name}: {res.metric['name']} clean {clean:.3f}{corrupt}; {res.method}, {res.ablation}, "
             f"{res.direction}, {len(res.heads)} heads in {res.seconds:.1f} s -> {out}",
             "  top heads by |effect|: " + ", ".join(
                 f"{s}/{l}/{h} ({e:+.3f})"
                 for s, l, h, e in zip(t["stream"], t["layer"], t["head"], t["patch.effect"]))]
    return "\n".join(lines)
