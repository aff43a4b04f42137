"""``workbench patch``: activation patching of every head on a task; writes a run folder.

heads.parquet gets ``patch.effect`` (mean over pairs of metric(patched) - metric(base),
metric units), ``patch.effect_norm`` (resample: divided by the clean-vs-corrupt gap),
``patch.rank`` (by |effect|), ``patch.method``, ``patch.metric``, ``patch.ablation``,
``patch.direction``; further methods given with ``--method a,b`` add
``patch.effect_<method>`` columns. ``patch.safetensors`` holds the [stream, layer, head]
effect tensor, per-pair effects and, with ``--per-position``, effects per position.
``--node q|k|v`` patches a head's query, key or value input instead of its output z
(``workbench.patching.nodes``; k and v per key/value head: one row per KV head, and
``patch.node`` says which node); with ``--per-position`` a k/v unit is (KV head, key
position), and zero / mean ``--direction denoising`` restores one node into a run with the
node of every unit ablated, as for z.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from ._task_args import (add_executor_args, add_task_args, at_least, base_meta, check_task_args, executor, load_task,
                         remove_units, units_folder, units_note)


def register(sub) -> None:
    p = sub.add_parser("patch", help="activation patching of every head on a task (exact, AtP, AtP*)")
    add_task_args(p)
    p.add_argument("--method", default="exact",
                   help="exact | naive | atp | atp-star | atp-star-verified, or several comma-separated (the "
                        "first fills patch.effect; default exact)")
    p.add_argument("--verify-k", type=int, default=40,
                   help="atp-star-verified: heads with the largest AtP* score patched exactly (default 40)")
    p.add_argument("--verify-sample", type=int, default=20,
                   help="atp-star-verified: other heads drawn at random and patched exactly to estimate the "
                        "false negatives (default 20)")
    p.add_argument("--ablation", default="resample", choices=("zero", "mean", "resample"),
                   help="what is patched in (default resample: the paired input's activations)")
    p.add_argument("--direction", default="noising", choices=("noising", "denoising"),
                   help="noising: patch into the clean run; denoising: restore clean activations (default noising)")
    p.add_argument("--per-position", action="store_true",
                   help="also patch each (head, query position); with --node k|v each (KV head, key position): "
                        "a key/value position feeds every later query (cross-attention: encoder positions)")
    p.add_argument("--node", default="z", choices=("z", "q", "k", "v"),
                   help="what is patched: z (head output, default), or the head's query, key or value input "
                        "(k, v: per key/value head under GQA); every --ablation and --direction applies")
    p.add_argument("--update", default="z", choices=("z", "rank"), help="how the fast path applies a patch")
    p.add_argument("--shard-size", type=int, default=None, help="pairs per work unit (default: all)")
    p.add_argument("--units", default=None, help="folder recording finished work units, so an interrupted "
                                                 "run resumes (default: a hidden folder beside --out)")
    add_executor_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError
    from ..patching import METHODS, patch
    from ..circuits.direct_patch import dla_patch      # --method dla: direct-path effects, one pass
    from ..patching.engine import _ALIASES
    from ..patching.verified import NAME as VERIFIED, STORES, false_negative_summary, verified_patch
    from ..runs import save_run

    methods = [_ALIASES.get(m.strip(), m.strip()) for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in (*METHODS, "dla", VERIFIED)]
    if not methods or bad:
        raise UserError(f"unknown method(s) {bad or args.method!r}; use exact, naive, atp, atp-star, "
                        "atp-star-verified, dla")
    if VERIFIED in methods and (args.verify_k < 1 or args.verify_sample < 0 or args.per_position):
        raise UserError(f"atp-star-verified needs --verify-k >= 1 and --verify-sample >= 0 (got {args.verify_k}, "
                        f"{args.verify_sample}) and patches whole heads (no --per-position)")
    if args.node != "z" and "dla" in methods:
        raise UserError("--method dla reads head outputs; use --node z with it")
    if args.node != "z":
        from ..patching.nodes import check_node

        check_node(args.node, cli=True)
    at_least(args.shard_size, "--shard-size", 1)
    if args.units and Path(args.units).exists() and not Path(args.units).is_dir():
        raise UserError(f"--units {args.units} is a file; give a folder for the finished work units")
    check_task_args(args)
    out = Path(args.out)
    model, task = load_task(args)
    if args.ablation == "resample" and task.corrupt is None:
        raise UserError(f"task {task.name} has no corrupt inputs; use --ablation zero|mean")
    units_root = Path(args.units) if args.units else units_folder(out)
    results = []
    try:
        for m in methods:
            units = units_root / m.replace("*", "_star")
            if not args.quiet:
                print(f"{m}: {task.name} on {model.name}, {len(task)} pairs, {args.ablation} {args.direction}",
                      file=sys.stderr)
            ex = executor(args.quiet, args)
            run_one = dla_patch if m == "dla" else patch
            if m == VERIFIED:
                run_one = partial(verified_patch, k=args.verify_k, sample=args.verify_sample,
                                  top=min(20, args.verify_k))
            node = {} if m == "dla" else {"node": args.node}
            res = run_one(model, task.clean, task.metric, corrupt=task.corrupt, method=m, ablation=args.ablation,
                        direction=args.direction, per_position=args.per_position, shard_size=args.shard_size,
                        update=args.update, executor=ex, store=str(units), **node)
            res.seconds += ex.reused_seconds        # the time of every unit, also those of an earlier run
            results.append((res, ex.reused))
    except KeyboardInterrupt as exc:
        exc.workbench_note = units_note(units_root)
        raise
    main, _ = results[0]
    table = main.table()
    for r, _ in results[1:]:
        name = r.method.replace("*", "_star")
        table[f"patch.effect_{name}"] = r.effect.double().numpy()
        table[f"patch.rank_{name}"] = r.rank().numpy()
    meta = base_meta(model, task, args)
    meta["analyses"] = {"patch": {**main.meta(), "update": args.update, "task": task.name,
                                  "units_reused": results[0][1],
                                  "also": [{"method": r.method, "seconds": round(r.seconds, 3), "units_reused": k}
                                           for r, k in results[1:]]}}
    tensors = {"patch": main.tensors()}
    from .._patch_patterns import prompt_patterns      # patterns of the first pairs, for the Head detail page
    tensors.update(prompt_patterns(model, task, meta))
    for r, _ in results[1:]:
        tensors[f"patch_{r.method.replace('*', '_star')}"] = r.tensors()
    save_run(out, table, meta, tensors, force=args.force)
    remove_units(units_root, [f"{m.replace('*', '_star')}/{s}" for m in methods if m == VERIFIED for s in STORES]
                 + [m.replace("*", "_star") for m in methods])
    print(summary(main, task, out))
    for r, _ in results:
        if r.method == VERIFIED and not args.quiet:
            print("  " + false_negative_summary(r.verification))
    return 0


def summary(res, task, out) -> str:
    t = res.table().sort_values("patch.rank").head(8)
    clean = float(res.clean_metric.mean())
    corrupt = "" if res.corrupt_metric is None else f", corrupt {float(res.corrupt_metric.mean()):.3f}"
    lines = [f"{task.name}: {res.metric['name']} clean {clean:.3f}{corrupt}; {res.method}, {res.ablation}, "
             f"{res.direction}, node {res.node}, {len(res.heads)} {'KV heads' if res.node in ('k', 'v') else 'heads'} "
             f"in {res.seconds:.1f} s -> {out}",
             "  top heads by |effect|: " + ", ".join(
                 f"{s}/{l}/{h} ({e:+.3f})"
                 for s, l, h, e in zip(t["stream"], t["layer"], t["head"], t["patch.effect"]))]
    return "\n".join(lines)
