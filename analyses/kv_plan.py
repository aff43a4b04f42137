"""A KV-cache plan from the head taxonomy, and its measured cost.

In the spirit of DuoAttention (Xiao et al. 2024: retrieval heads keep the full KV cache,
"streaming" heads keep only attention sinks + a recent window) and RazorAttention (Tang et
al. 2024: full cache only for retrieval heads, >70% KV reduction). Heads typed ``sink`` or
``local`` by ``taxonomy`` are streaming; every other type (retrieval, induction, global,
other) keeps the full cache.

Choices made here:
- GQA: the cache is per key/value head, so a KV head is streaming only if *all* query
  heads sharing it are streaming; otherwise the whole group keeps full KV.
- Streaming attention: keys k with k < ``n_sink`` (4, StreamingLLM) or q - k < ``window``
  (64 tokens) stay; the head's probabilities over the other keys are dropped and each row
  renormalised (= softmax over the kept keys), via ``EditPattern`` at every layer at once.
- Memory saved at context length T: sum over streaming KV heads of (T - min(T, n_sink +
  window)), divided by (all KV heads x T); reported at the evaluation length and at 4096.
- Measured: mean next-token cross-entropy (nats) on natural passages (``max_tokens`` 256)
  with and without the plan, and NIAH accuracy (``retrieval``'s quick grid, needles
  beyond the window) with and without it.
Causal LMs only (encoders keep no KV cache): ValueError otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench._types import Head
from workbench.capture import EditPattern

from ._context import Analysis, Context, Params, Result, param

STREAMING_TYPES = ("sink", "local")


@dataclass(frozen=True)
class KvPlanParams(Params, analysis="kv_plan"):
    n_sink: int = param(4, lo=0, doc="first tokens kept by streaming heads")
    window: int = param(64, lo=1, doc="recent tokens kept by streaming heads")
    retrieval_grid: str | None = param("quick", choices=("quick", "default", "none"), doc="NIAH grid for the taxonomy")
    niah_grid: str = param("quick", choices=("quick", "default"), doc="NIAH grid for the accuracy check")
    n_texts: int = param(8, lo=1, doc="natural passages for the loss check")
    max_tokens: int = param(256, lo=2, doc="tokens per passage for the loss check")


def applies(model) -> str | None:
    if model.kind != "causal":
        return f"a KV-cache plan needs a causal LM with a KV cache; {model.name} is a {model.kind} model"
    return None


def window_fn(n_sink: int, window: int):
    """``EditPattern`` function keeping sink keys and the recent window, rows renormalised."""
    def fn(pattern: torch.Tensor, offset: int) -> torch.Tensor:
        tq, tk = pattern.shape[-2:]
        q = torch.arange(tq, device=pattern.device)[:, None] + offset
        k = torch.arange(tk, device=pattern.device)[None, :]
        keep = (k < n_sink) | (q - k < window)
        a = pattern * keep
        return a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    return fn


def plan(model, types: pd.DataFrame, streaming_types=STREAMING_TYPES) -> pd.DataFrame:
    """Per head: ``kv_plan.streaming`` (its KV group is restricted) from ``taxonomy.type``."""
    rows = []
    for site in model.sites:
        t = types[(types["stream"] == site.stream) & (types["layer"] == site.layer)].set_index("head")["taxonomy.type"]
        group = site.n_heads // site.n_kv_heads
        for kv in range(site.n_kv_heads):
            heads = range(kv * group, (kv + 1) * group)
            stream_ok = all(t.get(h, "other") in streaming_types for h in heads)
            for h in heads:
                rows.append({"stream": site.stream, "layer": site.layer, "head": h, "kv_plan.kv_head": kv,
                             "kv_plan.streaming": bool(stream_ok), "kv_plan.type": t.get(h, "other")})
    return pd.DataFrame(rows)


def memory_saved(table: pd.DataFrame, t: int, n_sink: int, window: int) -> float:
    kv = table.drop_duplicates(["stream", "layer", "kv_plan.kv_head"])
    frac_stream = float(kv["kv_plan.streaming"].mean())
    return frac_stream * (t - min(t, n_sink + window)) / t


@torch.no_grad()
def lm_loss(model, batch, edits=()) -> float:
    """Mean next-token cross-entropy (nats) over the real tokens of ``batch``."""
    logits = model.run(batch, edits=list(edits)).logits.float()
    ids = batch.model_inputs["input_ids"]
    mask = batch.model_inputs["attention_mask"][:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return float(ce[mask].mean())


def _run(ctx: Context) -> Result:
    from workbench.inputs import natural_passages

    from . import retrieval as rmod
    from .taxonomy import taxonomy_table

    model, p = ctx.model, ctx.params
    reason = applies(model)
    if reason:
        raise ValueError(reason)
    n_sink, window = p.n_sink, p.window
    types = taxonomy_table(model, ctx.batch, retrieval_grid=p.retrieval_grid)
    table = plan(model, types)
    heads = [Head(r.stream, r.layer, r.head) for r in table.itertuples() if r._5]
    edit = [EditPattern(tuple(heads), window_fn(n_sink, window), f"window(sink={n_sink},recent={window})")] if heads else []
    text = model.prepare(natural_passages(p.n_texts, min_chars=800, max_chars=2000), max_tokens=p.max_tokens)
    t_eval = int(text.model_inputs["attention_mask"].sum(1).max())
    base, planned = lm_loss(model, text), lm_loss(model, text, edit)
    g = rmod.GRIDS[p.niah_grid]
    prompts = rmod.grid_prompts(model, g["lengths"], g["depths"], g["needles"])
    acc0 = float(rmod.run_niah(model, prompts, score=False)[0]["retrieved"].mean())
    acc1 = float(rmod.run_niah(model, prompts, edit, score=False)[0]["retrieved"].mean())
    summary = {
        "n_sink": n_sink, "window": window, "streaming_types": list(STREAMING_TYPES),
        "streaming_heads": len(heads), "heads": len(table),
        "kv_heads_streaming": int(table.drop_duplicates(["stream", "layer", "kv_plan.kv_head"])["kv_plan.streaming"].sum()),
        "kv_heads": int(len(table.drop_duplicates(["stream", "layer", "kv_plan.kv_head"]))),
        "memory_saved_at_eval": memory_saved(table, t_eval, n_sink, window), "eval_tokens": t_eval,
        "memory_saved_at_4096": memory_saved(table, 4096, n_sink, window),
        "loss_full_nats": base, "loss_plan_nats": planned, "loss_change_nats": planned - base,
        "niah_accuracy_full": acc0, "niah_accuracy_plan": acc1, "niah_lengths": list(g["lengths"]),
    }
    table["kv_plan.streaming"] = table["kv_plan.streaming"].astype(bool)
    return Result(table.drop(columns=["kv_plan.type"]), summary=summary)


ANALYSIS = Analysis("kv_plan", _run, applies, params=KvPlanParams)
