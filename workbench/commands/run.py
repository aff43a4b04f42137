"""``workbench run``: trace a model on real input and write a run folder."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def register(sub) -> None:
    from ._task_args import add_executor_args, add_placement_args

    p = sub.add_parser("run", help="trace a model on real input, run analyses, write a run folder")
    p.add_argument("model", help="built-in name (see `workbench models`), local HF folder or hub id")
    p.add_argument("--prompts", help="natural | random | repeated | FILE (one prompt per line, or .jsonl with 'text')")
    p.add_argument("--audio", nargs="+", default=[], metavar="FILE", help="audio files for audio models (WAV/FLAC/MP3)")
    p.add_argument("--analyses", default="entropy,sinks", help="comma-separated analyses (default: entropy,sinks)")
    p.add_argument("--param", action="append", default=[], metavar="ANALYSIS.KEY=VALUE",
                   help="override an analysis parameter, e.g. retrieval.grid=quick (repeatable; typed and "
                        "checked against the analysis' parameters before the model loads)")
    p.add_argument("--max-prompts", type=int, default=None,
                   help="number of prompts / clips (default: every line of a prompt FILE, else 16)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per prompt (default 128)")
    p.add_argument("--save-patterns", type=int, default=2, metavar="N",
                   help="keep full attention patterns of the first N inputs (default 2)")
    p.add_argument("--truncate", action="store_true",
                   help="cut inputs longer than the model's context to its length (default: refuse them)")
    p.add_argument("--max-save-gib", type=float, default=2.0, metavar="GIB",
                   help="refuse before tracing when the kept patterns would take more memory (default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="inputs per forward (default 8)")
    p.add_argument("--attn-output", choices=("sdpa", "fused"), default="sdpa",
                   help="sdpa (default): traced outputs equal the model's bit for bit; fused: each layer's "
                        "attention output from the statistics' own score blocks (one pass over the scores, "
                        "faster at long context on CPU; equal to SDPA within float round-off)")
    p.add_argument("--chunk-size", type=int, default=64, metavar="N",
                   help="inputs per work unit when the analyses reduce to sums (entropy, sinks): each unit's "
                        "statistics are summed where it runs and merged, so memory does not grow with the "
                        "number of prompts (default 64)")
    p.add_argument("--units", type=Path, default=None, metavar="DIR",
                   help="folder for finished work units, so an interrupted run resumes (default: .<out>.units "
                        "beside --out, removed when the run folder is written)")
    p.add_argument("--seed", type=int, default=0)
    add_placement_args(p)
    add_executor_args(p)            # the units of the dataset statistics (entropy, sinks of text prompts)
    p.add_argument("--out", required=True, type=Path, help="run folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..job import JobConfig, trace_job
    from ._task_args import check_executor_args, executor

    analyses = [a.strip() for a in args.analyses.split(",") if a.strip()]
    check_executor_args(args)
    if args.executor == "ray":
        from ..dataset_stats import mergeable
        from ..errors import UserError

        if args.audio or not mergeable(analyses):
            raise UserError("--executor ray runs the dataset statistics of text prompts (--analyses from entropy, "
                            f"sinks), not --analyses {args.analyses}{' on --audio' if args.audio else ''}; "
                            "run those without --executor ray")
    cfg = JobConfig(
        model=args.model, out=args.out, prompts=args.prompts, audio=args.audio,
        analyses=analyses, max_prompts=args.max_prompts,
        max_tokens=args.max_tokens, save_patterns=args.save_patterns, batch_size=args.batch_size, seed=args.seed,
        params=parse_params(args.param), params_from_text=True, force=args.force, quiet=args.quiet,
        command=shlex.join(["workbench", *sys.argv[1:]]), truncate=args.truncate, max_save_gib=args.max_save_gib,
        device=args.device, dtype=args.dtype, chunk_size=args.chunk_size, units=args.units,
        attn_output=args.attn_output,
        executor=executor(args.quiet, args) if args.executor == "ray" else None,
    )
    out, meta = trace_job(cfg)
    print(format_summary(meta, out))
    return 0


def parse_params(items: list[str]) -> dict:
    """``["retrieval.grid=quick", "sinks.epsilon=0.2"]`` -> {"retrieval": {"grid": "quick"}, ...};
    values stay text, typed later by each analysis (``Analysis.parse_params(from_text=True)``)."""
    from ..errors import UserError

    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        name, dot, param = key.partition(".")
        if not (eq and dot and name.strip() and param.strip()):
            raise UserError(f"--param {item!r} is not ANALYSIS.KEY=VALUE, e.g. retrieval.grid=quick")
        group = out.setdefault(name.strip(), {})
        if param.strip() in group:
            raise UserError(f"--param {name.strip()}.{param.strip()} is given twice")
        group[param.strip()] = value
    return out


def format_summary(meta: dict, out: Path) -> str:
    """A few lines per model: sink rate, strongest sinks, lowest/highest entropy heads."""
    m = meta["model"]
    n_heads = sum(s["n_heads"] for s in meta["sites"])
    lines = [f"{m['name']} ({m['family']}, {n_heads} heads, {len(meta['inputs']['items'])} inputs: "
             f"{meta['inputs']['prompt_set']}) -> {out}"]
    s = meta["summary"]
    if "sinks" in s:
        rate = ", ".join(f"{k} {v:.1f}%" for k, v in s["sinks"]["sink_rate_percent"].items())
        strong = ", ".join(f"{d['head']} ({d['alpha1']:.2f})" for d in s["sinks"]["strongest"])
        eps = meta["analyses"]["sinks"]["epsilon"]
        lines.append(f"  sink heads (alpha1 > {eps} on most inputs, sinks.is_sink): {rate}")
        if "per_input_rate_percent" in s["sinks"]:
            gu = ", ".join(f"{k} {v:.1f}%" for k, v in s["sinks"]["per_input_rate_percent"].items())
            lines.append(f"  sink rate per input (Gu et al. 2024, alpha1 > {eps}): {gu}")
        lines.append(f"  strongest first-token sinks: {strong}")
    if "entropy" in s:
        for key in ("lowest", "highest"):
            heads = ", ".join(f"{d['head']} ({d['mean_norm']:.2f})" for d in s["entropy"][key])
            lines.append(f"  {key} entropy heads (normalised): {heads}")
    return "\n".join(lines)
