"""``workbench prune``: Michel et al. head importance and iterative pruning curves on a task.

heads.parquet gets ``importance.michel`` (layer-normalised gate-gradient importance),
``importance.michel_raw``, ``prune.rank``, ``prune.step_importance``,
``prune.step_patching`` and ``prune.patch_effect``; ``prune_curve.parquet`` holds
``method, seed, step, n_removed, fraction_removed, metric`` and ``prune_heads_left.parquet``
the heads left per layer after each step.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ._task_args import (add_executor_args, add_task_args, at_least, base_meta, check_task_args, executor, load_task,
                         remove_units, units_folder, units_note)


def register(sub) -> None:
    p = sub.add_parser("prune", help="head importance (Michel et al. 2019) and pruning curves on a task")
    add_task_args(p)
    p.add_argument("--step", type=float, default=0.1, help="fraction of heads removed per step (default 0.1)")
    p.add_argument("--max-fraction", type=float, default=1.0, help="stop after removing this fraction (default 1)")
    p.add_argument("--orders", default="importance,patching,random",
                   help="comma-separated pruning orders (default importance,patching,random)")
    p.add_argument("--seeds", type=int, default=3, help="random orders, one per seed 0..N-1 (default 3)")
    add_executor_args(p)                       # the patching order's sweep
    p.set_defaults(func=run)


def check_args(args) -> list[str]:
    """The pruning orders; UserError for an unknown order or a step / fraction / seed count
    out of range (before the model loads)."""
    from ..analyses.pruning import ORDERS
    from ..errors import UserError

    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    bad = [o for o in orders if o not in ORDERS]
    if not orders or bad:
        raise UserError(f"unknown pruning order(s) {bad or args.orders!r} in --orders; use some of {', '.join(ORDERS)}")
    if not 0 < args.step <= 1:
        raise UserError(f"--step must be a fraction of the heads in (0, 1], got {args.step}")
    if not 0 <= args.max_fraction <= 1:
        raise UserError(f"--max-fraction must be in [0, 1], got {args.max_fraction}")
    at_least(args.seeds, "--seeds", 0)
    if "random" in orders and args.seeds == 0:
        raise UserError("--orders includes random but --seeds is 0; give --seeds 1 or more, or drop random")
    return orders


def run(args) -> int:
    import time

    from ..analyses.pruning import prune
    from ..patching import patch
    from ..runs import save_run

    orders = check_args(args)
    check_task_args(args)
    out = Path(args.out)
    model, task = load_task(args)
    if not args.quiet:
        print(f"pruning {model.name} on {task.name} ({len(task)} inputs), orders {', '.join(orders)}", file=sys.stderr)
    units_root = units_folder(out)
    t0 = time.perf_counter()
    effect, reused_s, reused = None, 0.0, 0
    try:
        if "patching" in orders:   # the patching order's sweep, kept in work units so a rerun resumes
            ex = executor(args.quiet, args)
            res = patch(model, task.clean, task.metric, method="exact", ablation="zero", direction="noising",
                        executor=ex, store=str(units_root / "patching"))
            effect = {h: float(e) for h, e in zip(res.heads, res.effect)}
            reused_s, reused = ex.reused_seconds, ex.reused
        res = prune(model, task.clean, task.metric, step=args.step, max_fraction=args.max_fraction, orders=orders,
                    seeds=tuple(range(args.seeds)), patch_effect=effect)
    except KeyboardInterrupt as exc:
        exc.workbench_note = units_note(units_root)
        raise
    meta = base_meta(model, task, args)
    meta["analyses"] = {"importance": {"method": "michel2019", "metric": task.metric.describe(),
                                       "normalisation": "L2 over each layer's heads"},
                        "prune": {**res.params, "metric": task.metric.describe(), "units_reused": reused,
                                  "seconds": round(time.perf_counter() - t0 + reused_s, 3)}}
    save_run(out, res.heads, meta, force=args.force,
             tables={"prune_curve": res.curve, "prune_heads_left": res.heads_left})
    remove_units(units_root, ["patching"])
    print(summary(res, task, out))
    return 0


def summary(res, task, out) -> str:
    c = res.curve
    lines = [f"{task.name}: metric {res.params['metric_unpruned']:.3f} unpruned -> {out}"]
    for (method, seed), rows in c.groupby(["method", "seed"], sort=False):
        pts = ", ".join(f"{f:.0%}: {m:.3f}" for f, m in zip(rows["fraction_removed"], rows["metric"]))
        lines.append(f"  {method}{'' if seed < 0 else f' (seed {seed})'}: {pts}")
    return "\n".join(lines)
