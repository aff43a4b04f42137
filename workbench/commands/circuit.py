"""``workbench circuit``: circuits between heads on a task; writes a run folder.

``--analysis`` (``workbench.circuits``):

- ``dla``: direct logit attribution of the task metric's logits. heads.parquet gets
  ``dla.value`` (mean over inputs, nats) and ``dla.rank``; ``dla_components.parquet`` one
  row per (component, input); ``dla.safetensors`` ``values`` [component, input], ``total``,
  ``actual`` and ``per_position/<stream>/<layer>`` [head, input, key_pos].
- ``path``: path patching from every earlier head into ``--receivers`` (or the ``--top-k``
  heads of an exact patching sweep run first, or of ``--from-run`` DIR's ``patch.effect``).
  ``path.parquet`` one row per (sender, receiver, kind); ``path.safetensors`` ``effect``
  [sender, receiver, 3] and ``per_input``; heads.parquet gets ``path.receiver`` and
  ``path.max_abs_effect`` (largest |effect| of the head as a sender).
- ``qk``: QK attribution of ``--head`` on input ``--input``. ``qk_summary.parquet`` per
  component its share of the scores to ``--key`` (default 0, the sink position) via query
  and key; ``qk.safetensors`` ``q_parts``/``k_parts`` [component, pos, d_head] (a
  contribution matrix is ``scaling * q_parts[:, i] @ k_parts[:, j].T``), ``actual`` and
  ``query_side``/``key_side`` [component, query_pos, key_pos]; meta lists the component names
  of each side (``components``, ``key_components``: the encoder's for a cross-attention head).
- ``composition``: Q/K/V composition of every head pair from the weights (no task inputs).
  ``composition.parquet`` one row per (sender, receiver, kind); ``composition.safetensors``
  ``scores`` [head, head, 3]; heads.parquet gets ``composition.max_out`` /
  ``composition.max_in`` (largest excess over the random baseline as sender / receiver).
"""
from __future__ import annotations

import sys
import time

import pandas as pd
import torch

from ._task_args import add_task_args, base_meta, check_task_args, load_task

ANALYSES = ("dla", "path", "qk", "composition")


def register(sub) -> None:
    p = sub.add_parser("circuit", help="circuits between heads: DLA, path patching, QK attribution, composition")
    add_task_args(p)
    p.add_argument("--analysis", required=True, choices=ANALYSES)
    p.add_argument("--receivers", default=None, help="path: receiver heads, comma-separated stream/layer/head")
    p.add_argument("--top-k", type=int, default=5, help="path: receivers = top-k heads of exact patching (default 5)")
    p.add_argument("--from-run", default=None, help="path: take the top-k receivers from this patch run folder")
    p.add_argument("--ablation", default=None, choices=("resample", "zero", "mean"),
                   help="path: sender patch (default: resample for a task with corrupt prompts, else zero; "
                        "mean: its mean z over the clean inputs)")
    p.add_argument("--head", default=None, help="qk: the head, stream/layer/head")
    p.add_argument("--input", type=int, default=0, help="qk: input index (default 0)")
    p.add_argument("--key", type=int, default=0, help="qk: key position of the summary (default 0)")
    p.set_defaults(func=run)


def _heads_arg(text: str, flag: str) -> list:
    from .._types import Head
    from ..errors import UserError

    try:
        return [Head.parse(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def run(args) -> int:
    from ..errors import UserError
    from ..runs import save_run

    check_task_args(args)
    if args.analysis == "qk" and not args.head:
        raise UserError("--analysis qk needs --head stream/layer/head")
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    t0 = time.perf_counter()
    if args.analysis == "composition":
        from ..tasks._task import Task
        from ..zoo._resolve import load_checked

        model = load_checked(args.model, quiet=args.quiet)
        task = Task("none", _empty_batch(), None, None, "weights only: no inputs")
    else:
        model, task = load_task(args)
    heads, tables, tensors, info = {"dla": _dla, "path": _path, "qk": _qk, "composition": _composition}[
        args.analysis](model, task, args)
    meta = base_meta(model, task, args)
    meta["analyses"] = {f"circuit.{args.analysis}": {**info, "seconds": round(time.perf_counter() - t0, 3)}}
    save_run(args.out, heads, meta, tensors, force=args.force, tables=tables)
    if not args.quiet:
        print(f"circuit {args.analysis}: {model.name}, task {task.name} -> {args.out}", file=sys.stderr)
    return 0


def _empty_batch():
    from ..batch import Batch

    return Batch({}, {}, [])


def _frame(model) -> pd.DataFrame:
    hs = model.heads()
    return pd.DataFrame({"stream": [h.stream for h in hs], "layer": [h.layer for h in hs], "head": [h.head for h in hs]})


def _dla(model, task, args):
    from ..circuits.dla import dla

    r = dla(model, task.clean, task.metric)
    table = r.table()
    heads = _frame(model).merge(r.head_table(), on=["stream", "layer", "head"], how="left")
    info = {"readout": r.readout.name, "metric": task.metric.describe(), "components": [c.name for c in r.components],
            "max_abs_total_minus_actual": float((r.total - r.actual).abs().max())}
    return heads, {"dla_components": table}, {"dla": r.tensors()}, info


def _receivers(model, task, args):
    from ..circuits.path_patching import top_receivers
    from ..errors import UserError

    if args.receivers:
        return _heads_arg(args.receivers, "--receivers")
    if args.from_run:
        from pathlib import Path

        f = Path(args.from_run) / "heads.parquet"
        if not f.is_file():
            raise UserError(f"--from-run {args.from_run} has no heads.parquet; give a workbench patch run folder")
        return top_receivers(pd.read_parquet(f), args.top_k)
    from ..patching import patch

    res = patch(model, task.clean, task.metric, corrupt=task.corrupt,
                ablation="resample" if task.corrupt is not None else "zero")
    return top_receivers(res, args.top_k)


def _path(model, task, args):
    from ..circuits.path_patching import path_patching
    from ..errors import UserError

    ablation = args.ablation or ("resample" if task.corrupt is not None else "zero")
    if ablation == "resample" and task.corrupt is None:
        raise UserError(f"--ablation resample needs a task with corrupt prompts; {task.name} has none: use zero or mean")
    receivers = _receivers(model, task, args)
    r = path_patching(model, task.clean, task.metric, receivers, corrupt=task.corrupt, ablation=ablation)
    eff = r.tensor()
    heads = _frame(model)
    names = [h.name for h in r.senders]
    best = eff.abs().nan_to_num(0).flatten(1).max(1).values
    col = dict(zip(names, best.tolist()))
    key = heads.stream + "/" + heads.layer.astype(str) + "/" + heads["head"].astype(str)
    heads["path.max_abs_effect"] = key.map(col)
    heads["path.receiver"] = key.isin({h.name for h in receivers})
    info = {"senders": names, "receivers": [h.name for h in r.receivers], "kinds": ["q", "k", "v"],
            "ablation": r.ablation, "metric": task.metric.describe(), "path_seconds": round(r.seconds, 3)}
    return heads, {"path": r.table()}, {"path": {"effect": eff, "per_input": r.effects}}, info


def _qk(model, task, args):
    from ..circuits.qk_attribution import qk_attribution
    from ..errors import UserError

    head = _heads_arg(args.head, "--head")
    if len(head) != 1:
        raise UserError("--head takes one head, stream/layer/head")
    r = qk_attribution(model, task.clean, head[0], input=args.input)
    if not 0 <= args.key < r.actual.shape[1]:
        raise UserError(f"--key {args.key} is out of range: the input has {r.actual.shape[1]} positions")
    heads = _frame(model)
    heads["qk.selected"] = (heads.stream == head[0].stream) & (heads.layer == head[0].layer) & (heads["head"] == head[0].head)
    info = {"head": head[0].name, "input": args.input, "key": args.key, "scaling": r.scaling,
            "components": [c.name for c in r.components], "tokens": r.tokens,
            "key_components": [c.name for c in r.k_components], "causal": r.causal,
            "max_abs_sum_minus_actual": float((r.scores() - r.actual).abs().max())}
    tensors = {"q_parts": r.q_parts, "k_parts": r.k_parts, "actual": r.actual, "query_side": r.query_side(),
               "key_side": r.key_side()}
    return heads, {"qk_summary": r.summary(args.key)}, {"qk": tensors}, info


def _composition(model, task, args):
    from ..circuits.composition import composition

    table, scores, hs = composition(model)
    heads = _frame(model)
    key = heads.stream + "/" + heads.layer.astype(str) + "/" + heads["head"].astype(str)
    heads["composition.max_out"] = key.map(table.groupby("sender")["excess"].max())
    heads["composition.max_in"] = key.map(table.groupby("receiver")["excess"].max())
    base = table.groupby("kind")["baseline"].first().to_dict()
    info = {"heads": [h.name for h in hs], "kinds": ["q", "k", "v"], "baseline": base, "fold_norm": True}
    return heads, {"composition": table}, {"composition": {"scores": scores}}, info
