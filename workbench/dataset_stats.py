"""Dataset-scale head statistics: the ``entropy`` and ``sinks`` tables of ``workbench run``
over many prompts, as a job of independent work units whose results are sums and counts.

A unit is a chunk of ``chunk_size`` consecutive inputs. ``run_unit`` traces it in forward
batches of ``batch_size`` capturing ``Stats`` and reduces each batch at once to sums and
counts per head (``analyses._sums``): no per-input pattern or statistic leaves the unit, and
a unit's result has the same size whatever its number of inputs ([head] and [head, key_pos]
tensors per site). ``run`` folds the results one at a time as the executor yields them
(``patching.units.iter_units``), so the driver holds one merged reduction, never a list of
them, and its memory does not grow with the number of inputs. ``assemble`` turns the merged
sums into the same head tables (columns, rows, values up to float rounding) as the per-input
path (``entropy_table`` / ``sinks_table`` on the statistics of every input at once).

The job follows the executor contract documented in ``workbench.patching.units``:
``units()``, ``run_unit(unit)``, ``assemble(results)``, ``fingerprint()`` and ``spec()``, the
plain data (model, placement, prompt texts or prompt set, lengths, analysis parameters,
chunking) from which ``rebuild`` makes the same job in another process
(``workbench.executors``); a ``UnitStore`` under ``fingerprint()`` makes it resumable.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .batch import Batch
from .capture import Stats
from .patching.units import Unit, iter_units

DEFAULT_CHUNK = 64      # inputs per work unit


def mergeable(analyses) -> bool:
    """Whether every analysis in ``analyses`` has a mergeable reduction (``entropy``, ``sinks``)."""
    from .analyses._sums import MERGEABLE

    return bool(analyses) and all(a in MERGEABLE for a in analyses)


class DatasetStats:
    """Entropy / sinks head tables over the inputs of ``batch``, chunk by chunk.

    Args:
        model: a loaded text ``Model``.
        batch: its prepared inputs (``Model.prepare``), N inputs.
        params: {analysis: its parameters}, analyses among ``entropy`` and ``sinks``
            (instances of the analysis' params class, or mappings parsed as ``run`` does).
        chunk_size: inputs per work unit (the last unit has the rest).
        batch_size: inputs per forward inside a unit (memory: one batch's statistics).
        source: plain data saying where the model and inputs come from (``text_source``);
            needed only by ``spec()``.

    ``attn_output``: ``"sdpa"`` (default; the model's outputs bit for bit) or ``"fused"``
    (``Stats(attn_output="fused")``: the attention output from the statistics' own score
    blocks, equal to SDPA within float round-off; faster at long context on CPU).

    Raises:
        UserError: an analysis without a mergeable reduction, an audio model, a chunk or
            batch size below 1, or an unknown ``attn_output``.
    """

    def __init__(self, model, batch: Batch, params: Mapping, *, chunk_size: int = DEFAULT_CHUNK,
                 batch_size: int = 8, source: dict | None = None, attn_output: str = "sdpa"):
        from .analyses import registry
        from .errors import UserError

        if not mergeable(list(params)):
            raise UserError(f"dataset statistics reduce entropy and sinks only, not {sorted(params)}")
        if model.is_audio:
            raise UserError(f"{model.name} is an audio model: dataset statistics take text inputs")
        for name, v in (("chunk_size", chunk_size), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be an integer >= 1, got {v!r}")
        reg = registry()
        self.params = {n: p if isinstance(p, reg[n].params) else reg[n].parse_params(dict(p), from_text=True)
                       for n, p in sorted(params.items())}
        self.capture = Stats(attn_output=attn_output)      # UserError for an unknown attn_output
        self.model, self.batch, self.source = model, batch, source
        self.chunk_size, self.batch_size = chunk_size, batch_size

    # -- units -------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        """One unit per chunk of ``chunk_size`` inputs: ``Unit(shard=chunk number)``."""
        return [Unit(i) for i in range((len(self.batch) + self.chunk_size - 1) // self.chunk_size)]

    def inputs_of(self, unit: Unit) -> list[int]:
        """Indices of the unit's inputs."""
        lo = unit.shard * self.chunk_size
        return list(range(lo, min(lo + self.chunk_size, len(self.batch))))

    def run_unit(self, unit: Unit) -> dict[str, torch.Tensor]:
        """The unit's sums and counts (CPU tensors; keys in ``analyses._sums``)."""
        from .analyses._sums import merge, reduce_stats

        idx = self.inputs_of(unit)
        acc = None
        for i in range(0, len(idx), self.batch_size):
            part = idx[i:i + self.batch_size]
            sub = self.batch.select(part)
            with torch.no_grad():
                stats = self.model.run(sub, capture=[self.capture]).stats
            acc = merge(acc, reduce_stats(stats, sub.query_mask, part[0], self.params))
        return acc

    # -- assemble ----------------------------------------------------------------------
    def assemble(self, results: Mapping | Iterable) -> dict:
        """{analysis: ``Result``} (head table + summary, as ``workbench run`` writes them) from
        every unit's result: a {unit: result} mapping or an iterable of (unit, result) pairs,
        folded one at a time (a generator is never held whole).

        Raises:
            ValueError: results of units that are not this job's, a unit given twice or missing."""
        from .analyses._sums import merge

        pairs = results.items() if isinstance(results, Mapping) else results
        want, seen, acc = set(self.units()), set(), None
        for unit, res in pairs:
            if unit not in want or unit in seen:
                raise ValueError(f"unit {unit.id} is {'given twice' if unit in seen else 'not a unit of this job'}")
            seen.add(unit)
            acc = merge(acc, res)
        if seen != want:
            raise ValueError(f"missing results of units {sorted(u.id for u in want - seen)[:5]}")
        return self.finish(acc)

    def finish(self, sums: dict) -> dict:
        """{analysis: ``Result``} from the merged sums of every unit."""
        from .analyses import Result
        from .analyses._sums import tables
        from .analyses.entropy import entropy_summary
        from .analyses.sinks import sinks_summary

        items = self.batch.items

        def token(i: int, stream: str, pos: int) -> str:
            toks = items[i].get("tokens", {}).get(stream) if i < len(items) else None
            return toks[pos] if toks and pos < len(toks) else ""

        out = {}
        for name, table in tables(sums, self.params, token).items():
            summary = entropy_summary(table) if name == "entropy" else sinks_summary(table, self.params[name])
            out[name] = Result(table, summary=summary)
        return out

    def run(self, executor=None, store=None) -> dict:
        """Run every unit (``store`` ones reused) with ``executor`` (default in-process) and
        fold the results as they come; returns ``assemble``'s {analysis: Result}."""
        return self.assemble(iter_units(self.run_unit, self.units(), executor, store))

    # -- identity and rebuild ----------------------------------------------------------
    def fingerprint(self) -> str:
        """Model and weights, dtype, the inputs' token ids, analysis parameters and chunking
        (the forward batch size and the device change results by rounding only: not in it)."""
        h = hashlib.sha256()
        h.update(json.dumps({"job": "dataset_stats", "model": self.model.name,
                             "weights": self.model.meta.get("weights_sha256"),
                             "dtype": self.model.placement["dtype"], "chunk_size": self.chunk_size,
                             "params": {n: p.as_json() for n, p in self.params.items()},
                             **({"attn_output": self.capture.attn_output} if self.capture.attn_output != "sdpa"
                                else {})},
                            sort_keys=True, default=str).encode())
        for k, v in sorted(self.batch.model_inputs.items()):
            if torch.is_tensor(v):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def spec(self):
        """``executors.spec.JobSpec`` rebuilding this job with ``rebuild`` in another process.

        Raises:
            ValueError: the job was made without a ``source``."""
        from .executors.spec import JobSpec

        if self.source is None:
            raise ValueError("this job has no source (where its model and inputs come from): make it with "
                             "source=text_source(...) to run it in other processes")
        return JobSpec("workbench.dataset_stats:rebuild",
                       {"source": self.source, "params": {n: p.as_json() for n, p in self.params.items()},
                        "chunk_size": self.chunk_size, "batch_size": self.batch_size,
                        "attn_output": self.capture.attn_output})


def text_source(model: str, *, prompts: str | None, texts: list[str] | None, max_prompts: int, max_tokens: int,
                seed: int = 0, truncate: bool = False, device: str | None = None, dtype: str | None = None) -> dict:
    """Where a job's model and text inputs come from, as plain data: the model (a local folder
    made absolute; it must exist at that path where the job is rebuilt), its placement, and
    the inputs as ``job.text_inputs`` makes them: a prompt set (``prompts`` natural | random |
    repeated) or the prompt ``texts`` themselves (read from a file; carried, so a worker
    needs no file)."""
    return {"model": str(Path(model).resolve()) if Path(model).exists() else model, "device": device,
            "dtype": dtype, "prompts": prompts, "texts": texts, "max_prompts": max_prompts,
            "max_tokens": max_tokens, "seed": seed, "truncate": truncate}


def rebuild(source: dict, params: dict, chunk_size: int, batch_size: int, device: str | None = None,
            model=None, attn_output: str = "sdpa") -> DatasetStats:
    """The builder of ``DatasetStats.spec()``: load the model (or take ``model``), prepare the
    same inputs, make the same job. ``device`` is used where ``source`` names none."""
    from .job import text_inputs

    if model is None:           # once per worker process, shared with the patching jobs it runs
        from .executors.spec import load_model

        model = load_model(source["model"], source.get("device") or device, source.get("dtype"))
    batch, _ = text_inputs(model, prompts=source["prompts"], texts=source["texts"],
                           max_prompts=source["max_prompts"], max_tokens=source["max_tokens"],
                           seed=source["seed"], truncate=source["truncate"])
    return DatasetStats(model, batch, params, chunk_size=chunk_size, batch_size=batch_size, source=source,
                        attn_output=attn_output)
