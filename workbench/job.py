"""The main job: trace a model on real input, run analyses, write a run folder.

``trace_job`` is what ``workbench run`` calls; it is plain Python so notebooks and tests
use it too. Inputs are validated before the model loads; the run folder is written
atomically at the end (see ``runs.save_run``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batch import Batch
from .capture import Pattern, Stats
from .errors import UserError, user_error
from .runs import merge_tables, save_run
from .schema import MEL_FRAMES_PER_SECOND, base_meta


DEFAULT_SET_SIZE = 16   # inputs of a built-in prompt set / bundled clips when max_prompts is not given


@dataclass
class JobConfig:
    """What to run. ``prompts``: natural | random | repeated | a file path; ``audio``:
    audio files (empty = the bundled speech clips for audio models); ``params``: {analysis:
    {name: value}}, checked by each analysis' ``parse_params``; ``truncate``: cut inputs longer
    than the model's context (``max_position_embeddings``) instead of refusing them;
    ``max_save_gib``: refuse before tracing when keeping the patterns of ``save_patterns``
    inputs would take more (``_budget.pattern_bytes``).

    Text inputs whose analyses all reduce to mergeable sums (``entropy``, ``sinks``) are
    traced as a ``dataset_stats.DatasetStats`` job: work units of ``chunk_size`` inputs run by
    ``executor`` (default in-process), recorded in ``units`` (default: a hidden folder beside
    ``out``, removed once the run folder is written) so an interrupted run resumes; memory does
    not grow with the number of inputs. Other analyses keep every input's statistics.

    Raises:
        UserError: a count out of range (naming the argument)."""

    model: str
    out: Path
    prompts: str | None = None
    audio: list[str] = field(default_factory=list)
    analyses: list[str] = field(default_factory=lambda: ["entropy", "sinks"])
    params: dict = field(default_factory=dict)      # {analysis: {key: value}} overriding defaults
    max_prompts: int | None = None  # None: every line of a prompt FILE, else 16 (built-in sets, bundled clips)
    max_tokens: int = 128
    save_patterns: int = 2
    batch_size: int = 8
    seed: int = 0
    force: bool = False
    quiet: bool = False
    command: str = ""
    truncate: bool = False      # cut inputs longer than the model's context to its length
    max_save_gib: float = 2.0   # refuse before tracing when saved patterns would need more
    params_from_text: bool = False  # params values are text typed by a person (the CLI)
    device: str | None = None   # load(device=): "cpu" (default) | "cuda" | "cuda:N"
    dtype: str | None = None    # load(dtype=): "float32" (default) | "bfloat16" | "float16" | "auto"
    chunk_size: int = 64        # inputs per work unit of the dataset-statistics job
    executor: object = None     # runs that job's units (``patching.units`` seam); None: in-process
    units: Path | None = None   # where its finished units are kept; None: beside ``out``
    attn_output: str = "sdpa"   # Stats(attn_output=): "sdpa" (outputs bit for bit) | "fused" (one pass, faster)

    def __post_init__(self) -> None:
        if self.max_prompts is None and (self.prompts in (None, "natural", "random", "repeated") or self.audio):
            self.max_prompts = DEFAULT_SET_SIZE
        for name, lo in (("max_prompts", 1), ("max_tokens", 2), ("batch_size", 1), ("save_patterns", 0), ("seed", 0),
                         ("chunk_size", 1)):
            v = getattr(self, name)
            if name == "max_prompts" and v is None:       # a prompt FILE: all of its lines
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise user_error("{%s} must be an integer >= {lo}, got {v!r}" % name, lo=lo, v=v)
        if not self.max_save_gib > 0:
            raise user_error("{max_save_gib} must be > 0 GiB, got {v!r}", v=self.max_save_gib)
        Stats(attn_output=self.attn_output)          # UserError for an unknown value, before any compute
        self.out = Path(self.out)


def _text_inputs(cfg: JobConfig, model, texts: list[str] | None) -> tuple[Batch, str]:
    return text_inputs(model, prompts=cfg.prompts, texts=texts, max_prompts=cfg.max_prompts,
                       max_tokens=cfg.max_tokens, seed=cfg.seed, truncate=cfg.truncate)


def text_inputs(model, *, prompts: str | None, texts: list[str] | None, max_prompts: int, max_tokens: int,
                seed: int = 0, truncate: bool = False) -> tuple[Batch, str]:
    """(the text batch, what the prompt set is): ``prompts`` natural | random | repeated
    (None: natural) or the prompt ``texts`` read from the file ``prompts``. Inputs longer than
    the model's context are refused (UserError), or cut with ``truncate``."""
    from ._budget import check_context, context_limit
    from .inputs import PROMPT_SETS, prompt_set

    limit = context_limit(model)
    n_tok = min(max_tokens, limit) if truncate and limit else max_tokens
    kind = prompts or "natural"
    if kind in PROMPT_SETS:  # exactly n_tok tokens each (Gu et al. 2024); items record the protocol
        batch = prompt_set(model.tokenizer, kind, max_prompts=max_prompts, max_tokens=n_tok,
                           seed=seed).prepare(model)
    else:
        batch, kind = model.prepare(texts, max_tokens=n_tok), str(Path(kind).resolve())
    check_context(model, batch.query_mask["self"].sum(-1).tolist(), truncate=truncate)
    return batch, kind


def _registry():
    from .analyses import registry

    return registry()


@dataclass
class Checked:
    """What ``validate`` read: typed parameters per analysis, prompt texts, audio arrays."""

    params: dict
    texts: list[str] | None
    waves: list


def validate(cfg: JobConfig) -> Checked:
    """Check everything that needs no model, before it loads: analyses and their parameters,
    the model name, prompt and audio files, the output folder. Raises UserError."""
    from ._safe_replace import check_target
    from .inputs import load_audio, read_prompt_file
    from .zoo._resolve import check_source

    known = _registry()
    unknown = [a for a in cfg.analyses if a not in known]
    if unknown or not cfg.analyses:
        raise user_error("unknown analyses {unknown}; choose {analyses} from {known}", unknown=unknown,
                         known=", ".join(known))
    extra = [n for n in cfg.params if n not in cfg.analyses]
    if extra:
        raise user_error("{params} for {name!r}, which is not among {analyses} {chosen}", name=extra[0],
                         chosen=",".join(cfg.analyses))
    # typed frozen parameters (UserError naming the analysis, parameter, expected type and value)
    params = {n: known[n].parse_params(dict(cfg.params.get(n, {})), from_text=cfg.params_from_text)
              for n in cfg.analyses}
    if cfg.prompts and cfg.audio:
        raise user_error("give either {prompts} (text models) or {audio} (audio models), not both")
    from .dataset_stats import mergeable

    if cfg.executor is not None and (cfg.audio or not mergeable(cfg.analyses)):
        raise UserError(f"executor runs the units of the dataset statistics of text prompts (analyses from entropy, "
                        f"sinks), not analyses {cfg.analyses}{' on audio' if cfg.audio else ''}; pass executor=None")
    check_source(cfg.model, need_tokenizer=not cfg.audio)
    check_target(cfg.out, force=cfg.force)
    if cfg.units is not None and Path(cfg.units).exists() and not Path(cfg.units).is_dir():
        raise user_error("{units} {path} is a file; give a folder for the finished work units", path=cfg.units)
    texts = None
    if cfg.prompts and cfg.prompts not in ("natural", "random", "repeated"):
        try:
            texts = read_prompt_file(cfg.prompts)[: cfg.max_prompts]
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None
    try:
        waves = [load_audio(p) for p in cfg.audio]
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return Checked(params, texts, waves)


def _audio_inputs(cfg: JobConfig, model, waves: list) -> tuple[Batch, str]:
    from .inputs import builtin_clips, load_audio

    if cfg.prompts:
        raise user_error("{model} is an audio model: give {audio} FILE (WAV/FLAC/MP3), not {prompts}", model=cfg.model)
    paths = list(cfg.audio) or [str(p) for p in builtin_clips()][: cfg.max_prompts]
    waves = waves or [load_audio(p) for p in paths]
    return model.prepare_audio(waves, paths=paths), "audio files" if cfg.audio else "bundled speech clips"


def chunked_stats(model, batch: Batch, batch_size: int, quiet: bool, attn_output: str = "sdpa"):
    """Stats at every site over ``batch`` in chunks of ``batch_size`` inputs (progress bar on a
    terminal; ``Stats(attn_output=)``); returns a Trace-like object with stats concatenated along batch."""
    from tqdm.auto import tqdm

    from .capture import HeadStats
    from .trace import Trace

    parts = []
    idx = list(range(len(batch)))
    chunks = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    bar = tqdm(chunks, desc=f"tracing {model.name}", unit="chunk", disable=quiet or not sys.stderr.isatty())
    for ch in bar:
        parts.append(model.run(batch.select(ch), capture=[Stats(attn_output=attn_output)]).stats)
    stats = {k: HeadStats(**{f: torch.cat([p[k].to_dict()[f] for p in parts]) for f in parts[0][k].to_dict()})
             for k in parts[0]}
    return Trace(output=None, stats=stats, query_mask=batch.query_mask, batch=batch, sites=model.sites)


def kept_patterns(model, batch: Batch, n: int) -> dict:
    """Patterns of the first ``n`` inputs, cropped to real tokens / audio frames, float16:
    {"pattern/<stream>/<layer>/<i>": [head, query, key]}, and their value-output norms
    {"value_norm/<stream>/<layer>/<i>": [head, key]} (``_value_norms``)."""
    if n == 0:
        return {}
    from .analyses._context import KEY_STREAM

    sub = batch.select(list(range(min(n, len(batch)))))
    tr = model.run(sub, capture=[Pattern()])
    out = {}
    for (stream, layer), p in tr.pattern.items():
        for i in range(p.shape[0]):
            q = int(sub.query_mask[stream][i].sum())
            k = int(sub.query_mask[KEY_STREAM[stream]][i].sum())
            out[f"pattern/{stream}/{layer}/{i}"] = p[i, :, :q, :k].to(torch.float16).clone()
    from ._value_norms import value_norms      # value_norm/...: ||v_j W_O[h]|| per key (Kobayashi et al. 2020)
    out.update(value_norms(model, sub))
    return out


def audio_tensors(model, batch: Batch, waves: list | None) -> dict:
    """Log-mel (cropped to the audio) and the waveform per input, for the dashboard."""
    out = {}
    feats = batch.model_inputs.get("input_features")
    for i, item in enumerate(batch.items):
        if feats is not None:
            n_mel = int(round(item["duration_s"] * MEL_FRAMES_PER_SECOND))
            out[f"mel/{i}"] = feats[i, :, :n_mel].to(torch.float16).clone()
        if waves is not None:
            out[f"audio/{i}"] = torch.as_tensor(waves[i], dtype=torch.float32)
    return out


def trace_job(cfg: JobConfig) -> tuple[Path, dict]:
    """Run the main job; returns (run folder, summary).

    Raises UserError (one line) on bad input, before the model loads where the input can be
    checked without it, and before tracing otherwise (an analysis that does not apply, inputs
    longer than the model's context, patterns over ``max_save_gib``); nothing is written then.
    """
    from ._budget import check_pattern_budget
    from .dataset_stats import mergeable
    from .zoo._resolve import load_checked

    t0 = time.perf_counter()
    checked = validate(cfg)
    from .cuda import backends_used, requested

    backend = requested()           # a bad $WORKBENCH_BACKEND is refused before the model loads
    waves = checked.waves
    model = load_checked(cfg.model, quiet=cfg.quiet, device=cfg.device, dtype=cfg.dtype)
    t_load = time.perf_counter() - t0
    if model.is_audio:
        batch, prompt_set = _audio_inputs(cfg, model, waves)
        waves = waves or None
    else:
        if cfg.audio:
            raise user_error("{model} is a text model: give {prompts} natural|random|repeated|FILE, not {audio}",
                             model=cfg.model)
        batch, prompt_set = _text_inputs(cfg, model, checked.texts)
    from .analyses import Context

    reg = _registry()
    for name in cfg.analyses:
        why = reg[name].applies(model)
        if why:
            raise UserError(f"analysis {name!r} does not apply to {cfg.model}: {why}")
    check_pattern_budget(model, batch, cfg.save_patterns, cfg.max_save_gib)
    t1 = time.perf_counter()
    backends_used(reset=True)
    results, timings, reduction = {}, {}, None
    params = {name: checked.params[name].as_json() for name in cfg.analyses}
    if not model.is_audio and mergeable(cfg.analyses):     # sums per chunk of inputs, merged as they come
        results, reduction = _dataset_stats(cfg, model, batch, checked)
    else:
        ctx = Context(model, batch)
        ctx._stats = chunked_stats(model, batch, cfg.batch_size, cfg.quiet, cfg.attn_output)
        for name in cfg.analyses:
            ctx.params = checked.params[name]
            ts = time.perf_counter()
            results[name] = reg[name].run(ctx)
            timings[name] = round(time.perf_counter() - ts, 3)
    t_trace = time.perf_counter() - t1
    tensors: dict = {}
    pats = kept_patterns(model, batch, cfg.save_patterns)
    if pats:
        tensors["patterns"] = pats
    if model.is_audio:
        from .inputs import load_audio

        if waves is None:
            waves = [load_audio(it["path"]) for it in batch.items]
        tensors["inputs"] = audio_tensors(model, batch, waves)
    for r in results.values():
        for stem, td in r.tensors.items():
            tensors.setdefault(stem, {}).update(td)
    heads = merge_tables([r.table for r in results.values()])
    summary = {name: r.summary for name, r in results.items()}
    meta = {
        **base_meta(model, {"prompt_set": prompt_set, "max_tokens": None if model.is_audio else cfg.max_tokens,
                            "truncate": cfg.truncate, "items": batch.items}, command=cfg.command, seed=cfg.seed),
        "analyses": params, "summary": summary,
        "backend": {"requested": backend, "ran": backends_used()},   # workbench.cuda ops: which backend ran
        "attn_output": cfg.attn_output,      # sdpa: the model's outputs bit for bit; fused: within round-off
        "timings_s": {"load": round(t_load, 3), "trace_and_analyses": round(t_trace, 3), **timings},
    }
    if reduction is not None:
        meta["reduction"] = reduction
    extra = {f"{stem}": t for r in results.values() for stem, t in r.tables.items()}
    out = save_run(cfg.out, heads, meta, tensors, force=cfg.force, tables=extra)
    if reduction is not None:
        from .commands._task_args import remove_units

        remove_units(_units_root(cfg), ["stats"])
    return out, meta


def _units_root(cfg: JobConfig) -> Path:
    from .commands._task_args import units_folder

    return Path(cfg.units) if cfg.units is not None else units_folder(cfg.out)


def _dataset_stats(cfg: JobConfig, model, batch: Batch, checked: Checked) -> tuple[dict, dict]:
    """The analyses' results from a ``DatasetStats`` job (resumable from ``units``), and what
    meta.json records of how they were reduced."""
    from .commands._task_args import executor as default_executor, units_note
    from .dataset_stats import DatasetStats, text_source
    from .patching.units import UnitStore

    source = text_source(cfg.model, prompts=cfg.prompts, texts=checked.texts, max_prompts=cfg.max_prompts,
                         max_tokens=cfg.max_tokens, seed=cfg.seed, truncate=cfg.truncate, device=cfg.device,
                         dtype=cfg.dtype)
    job = DatasetStats(model, batch, {n: checked.params[n] for n in cfg.analyses}, chunk_size=cfg.chunk_size,
                       batch_size=cfg.batch_size, source=source, attn_output=cfg.attn_output)
    root = _units_root(cfg)
    ex = cfg.executor if cfg.executor is not None else default_executor(cfg.quiet)
    try:
        results = job.run(ex, UnitStore(root / "stats", job.fingerprint()))
    except KeyboardInterrupt as exc:
        exc.workbench_note = units_note(root)
        raise
    units = job.units()
    return results, {"kind": "sums per chunk of inputs, merged (workbench.dataset_stats)",
                     "chunk_size": cfg.chunk_size, "units": len(units),
                     "units_reused": int(getattr(ex, "reused", 0)), "executor": type(ex).__name__}
