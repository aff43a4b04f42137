"""What ``workbench report`` says about a run folder, independent of the output format:
ranked heads, per-layer summaries, provenance, method notes, and per-head differences of two
runs. Torch-free; tables follow ``workbench.schema`` (HEAD_KEYS + ``"<analysis>.<metric>"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from .errors import UserError
from .run_folder import RunFolder
from .schema import HEAD_KEYS, SCHEMA_VERSION, analysis_of, metric_columns

EFFECT_PREFIXES = ("patch", "importance", "prune", "dla", "path", "atp")
PREFERRED = ("patch.effect", "importance.michel", "dla.value", "path.effect", "retrieval.score", "sinks.alpha1",
             "entropy.mean_norm", "entropy.mean_nats")
TAXONOMY = ("taxonomy.type", "taxonomy.class")

# analysis (column prefix or meta.json analyses key) -> (what it measures, citation)
NOTES = {
    "entropy": ("mean over query rows of H_i = -sum_j A_ij ln A_ij in nats; normalised by ln(visible keys)",
                "Zhai et al. 2023, 'Stabilizing Transformer Training by Preventing Attention Entropy Collapse'"),
    "sinks": ("alpha1: mean attention on the first token; is_sink: alpha1 > epsilon (0.3)",
              "Gu et al. 2024, 'When Attention Sink Emerges in Language Models'; Xiao et al. 2023 (StreamingLLM)"),
    "retrieval": ("fraction of needle tokens copied while the head attends to them (needle in a haystack)",
                  "Wu et al. 2024, 'Retrieval Head Mechanistically Explains Long-Context Factuality'"),
    "taxonomy": ("one type per head from measured scores (retrieval, induction, local, sink, global, other)",
                 "Olsson et al. 2022, 'In-context Learning and Induction Heads'; Gu et al. 2024; Wu et al. 2024"),
    "rollout": ("head-mean attention, 0.5 A + 0.5 I, multiplied over layers",
                "Abnar & Zuidema 2020, 'Quantifying Attention Flow in Transformers'"),
    "flow": ("max-flow from each input token through the layer graph",
             "Abnar & Zuidema 2020, 'Quantifying Attention Flow in Transformers'"),
    "alignment": ("cross-attention heads whose DTW path follows word timings",
                  "Radford et al. 2022, 'Robust Speech Recognition via Large-Scale Weak Supervision' (Whisper)"),
    "patch": ("activation patching: metric(patched) - metric(base) per head; atp is the first-order estimate, "
              "atp* its corrected magnitude",
              "Meng et al. 2022; Wang et al. 2022; Nanda 2023 (attribution patching); Kramár et al. 2024 (AtP*)"),
    "importance": ("E_x |dL/dxi_h| of a gate xi_h on each head's output, L2-normalised per layer",
                   "Michel et al. 2019, 'Are Sixteen Heads Really Better than One?'"),
    "prune": ("metric while heads are removed in order of importance / patching effect / at random",
              "Michel et al. 2019, 'Are Sixteen Heads Really Better than One?'"),
    "dla": ("direct logit attribution: each head's output through the final norm and unembedding",
            "Elhage et al. 2021, 'A Mathematical Framework for Transformer Circuits'; Wang et al. 2022"),
    "path": ("path patching: a sender head's effect through one receiver's q/k/v only",
             "Wang et al. 2022, 'Interpretability in the Wild'; Goldowsky-Dill et al. 2023"),
    "composition": ("Q-/K-/V-composition scores of head pairs from the weights",
                    "Elhage et al. 2021, 'A Mathematical Framework for Transformer Circuits'"),
    "qk": ("a head's pre-softmax scores split into [query component, key component] contributions",
           "Elhage et al. 2021, 'A Mathematical Framework for Transformer Circuits'"),
    "hidden_sinks": ("keys after the first whose column mean alpha_k exceeds 0.1 (sinks other than the first token)",
                     "Yu et al. 2024, 'Unveiling and Harnessing Hidden Attention Sinks' (ACT)"),
    "massive": ("residual-stream entries with |h| > 100 and >= 1000 x the hidden state's median |h|, and the "
                "attention heads put on their positions",
                "Sun et al. 2024, 'Massive Activations in Large Language Models'"),
    "encoder_heads": ("audio encoder head type (local / vertical / global) from attention by frame offset",
                      "Yang et al. 2020, 'Understanding Self-Attention of Self-Supervised Audio Transformers'"),
    "kv_plan": ("full KV cache for retrieval-like heads, sinks + recent window for sink / local (streaming) heads",
                "Xiao et al. 2024 (DuoAttention); Tang et al. 2024 (RazorAttention); Xiao et al. 2023 (StreamingLLM)"),
    "faithfulness": ("Spearman correlation of raw attention, rollout and flow token importance with blank-out "
                     "and input-gradient importance",
                     "Abnar & Zuidema 2020, 'Quantifying Attention Flow in Transformers'"),
    "act": ("hidden-sink columns scaled by beta = 0.4 with the mass given to the row's other keys; "
            "change of the metric",
            "Yu et al. 2024, 'Unveiling and Harnessing Hidden Attention Sinks' (ACT)"),
}


@dataclass
class Report:
    """One report's content. ``heads``: ranked head table (``rank`` first, then HEAD_KEYS and
    every metric column); ``layers``: per (stream, layer) mean of each numeric metric plus the
    count of each taxonomy class; ``compare``: for ``--compare``, the other run's name."""

    run: RunFolder
    primary: str | None
    heads: pd.DataFrame
    layers: pd.DataFrame
    provenance: dict
    notes: list[tuple[str, str, str]]
    other: RunFolder | None = None
    extras: dict = field(default_factory=dict)


def is_numeric(s: pd.Series) -> bool:
    return bool(ptypes.is_numeric_dtype(s) and not ptypes.is_bool_dtype(s))


def primary_metric(heads: pd.DataFrame) -> str | None:
    """The column heads are ranked by: an effect (patch, importance, dla ...) first, else a score."""
    cols = [c for c in metric_columns(heads.columns) if is_numeric(heads[c]) and heads[c].notna().any()]
    for c in PREFERRED:
        if c in cols:
            return c
    effects = [c for c in cols if analysis_of(c) in EFFECT_PREFIXES and "rank" not in c and "step_" not in c]
    return (effects or cols or [None])[0]


def by_magnitude(column: str | None) -> bool:
    """Effects are ranked by |value|; scores by value."""
    return column is not None and analysis_of(column.removeprefix("diff.")) in EFFECT_PREFIXES


def ranked(heads: pd.DataFrame, primary: str | None) -> pd.DataFrame:
    """``heads`` sorted by ``primary`` (|value| for effects), NaN last, with ``rank`` 1.. first."""
    out = heads.copy()
    if primary is not None:
        key = out[primary].astype(float)
        key = key.abs() if by_magnitude(primary) else key
        out = out.loc[key.sort_values(ascending=False, na_position="last").index]
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)


def per_layer(heads: pd.DataFrame) -> pd.DataFrame:
    """Per (stream, layer): number of heads, mean of every numeric metric (``mean <col>``) and
    the number of heads of each taxonomy class (``n <class>``)."""
    num = [c for c in metric_columns(heads.columns) if is_numeric(heads[c])]
    g = heads.groupby(["stream", "layer"], sort=True)
    out = g.size().rename("heads").to_frame()
    if num:
        out = out.join(g[num].mean().add_prefix("mean "))
    tax = next((c for c in TAXONOMY if c in heads.columns), None)
    if tax is not None:
        out = out.join(heads.groupby(["stream", "layer"])[tax].value_counts().unstack(fill_value=0).add_prefix("n "))
    return out.reset_index()


def provenance(run: RunFolder) -> dict:
    """The report's provenance block from ``meta.json``."""
    m = run.meta
    inputs = m.get("inputs") or {}
    return {"run": run.name, "kind": run.kind, "schema_version": m.get("schema_version"),
            "model": m.get("model") or {}, "inputs": {k: v for k, v in inputs.items() if k != "items"}
            | {"n_items": len(inputs.get("items") or [])},
            "analyses": m.get("analyses") or {}, "command": m.get("command"), "seed": m.get("seed"),
            "created": m.get("created"), "git_commit": m.get("git_commit"), "packages": m.get("packages") or {}}


def method_notes(run: RunFolder) -> list[tuple[str, str, str]]:
    """(analysis, what it measures, citation) for every analysis of the run that has a note."""
    names = [analysis_of(c) for c in metric_columns(run.heads.columns)]
    names += [str(a).removeprefix("circuit.") for a in (run.meta.get("analyses") or {})]
    seen = []
    for n in names:
        if n in NOTES and n not in seen:
            seen.append(n)
    return [(n, *NOTES[n]) for n in seen]


def differences(a: RunFolder, b: RunFolder) -> pd.DataFrame:
    """Per head: every numeric metric both runs have as ``a.<col>``, ``b.<col>`` and
    ``diff.<col>`` = a - b, plus both runs' taxonomy class; heads of either run (outer join).

    Raises:
        UserError: the runs are of different models or share no numeric metric."""
    if a.model != b.model:
        raise UserError(f"cannot compare runs of different models: {a.name} is {a.model}, {b.name} is {b.model}")
    shared = [c for c in metric_columns(a.heads.columns) if c in b.heads.columns
              and is_numeric(a.heads[c]) and is_numeric(b.heads[c])]
    if not shared:
        raise UserError(f"runs {a.name} and {b.name} share no numeric metric column to compare")
    tax = [c for c in TAXONOMY if c in a.heads.columns and c in b.heads.columns]
    left = a.heads[HEAD_KEYS + shared + tax].rename(columns={c: f"a.{c}" for c in shared + tax})
    right = b.heads[HEAD_KEYS + shared + tax].rename(columns={c: f"b.{c}" for c in shared + tax})
    out = left.merge(right, on=HEAD_KEYS, how="outer")
    for c in shared:
        out[f"diff.{c}"] = out[f"a.{c}"].astype(float) - out[f"b.{c}"].astype(float)
    cols = HEAD_KEYS + [x for c in shared for x in (f"diff.{c}", f"a.{c}", f"b.{c}")] + \
        [x for c in tax for x in (f"a.{c}", f"b.{c}")]
    return out[cols].sort_values(HEAD_KEYS).reset_index(drop=True)


def build(run: RunFolder, other: RunFolder | None = None) -> Report:
    """The report of ``run`` (or of ``run`` compared with ``other``)."""
    primary = primary_metric(run.heads)
    if other is None:
        heads = ranked(run.heads, primary)
        layers = per_layer(run.heads)
    else:
        diff = differences(run, other)
        shared = [c.removeprefix("diff.") for c in diff.columns if c.startswith("diff.")]
        key = "diff." + primary_metric(run.heads[HEAD_KEYS + shared])   # the ranking metric both runs have
        if key.startswith("diff.") and not by_magnitude(key):
            diff["_abs"] = diff[key].abs()          # a difference is ranked by its size either way
            heads = ranked(diff, "_abs").drop(columns="_abs")
        else:
            heads = ranked(diff, key)
        primary = key
        layers = per_layer(diff[HEAD_KEYS + [c for c in diff.columns if c.startswith("diff.")]])
    prov = provenance(run)
    if other is not None:
        prov["compared_with"] = provenance(other)
    return Report(run, primary, heads, layers, prov, method_notes(run), other)


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN -> None, numpy scalars -> python."""
    out = []
    for row in df.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v)
                    for k, v in row.items()})
    return out


__all__ = ["NOTES", "Report", "SCHEMA_VERSION", "build", "differences", "method_notes", "per_layer",
           "primary_metric", "provenance", "ranked", "records"]
