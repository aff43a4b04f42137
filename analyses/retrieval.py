"""Retrieval heads of causal LMs, with the masking check.

Definition (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality"): needle-in-a-haystack (NIAH) tests decoded greedily. At decoding step s the
model emits token g_s from query position q_s; head h *copies* at that step if (a) the
argmax of its attention row at q_s lies inside the needle span and (b) the prompt token at
that argmax equals g_s. Each needle position copied at least once adds 1/|needle span|
(a position copied twice counts once, so a test scores at most 1). A test is counted only if the
answer was retrieved (ROUGE-1 recall of the output against the answer > 0.5); a head's
retrieval score is the mean over counted tests, and it is a retrieval head if the score
exceeds 0.1. Causal check: mask the top-k retrieval heads, and separately k random heads
that are not retrieval heads, and compare NIAH accuracy (fraction of tests retrieved).

Choices made here (see ``_niah`` for prompts):
- Needle span = the tokens of the answer inside the needle sentence (what must be copied),
  so a head that copies the whole answer scores 1.
- Attention rows are captured (``Stats``: row argmax) in the KV-cached greedy loop itself,
  one row per emitted token.
- Masking is ``Ablate(kind="uniform")``: the head's pre-softmax logits set to 0, i.e.
  uniform attention over the keys it may see (Wu et al.'s masking; a mean ablation of the
  pattern, not a zero output), applied at every decoding step.
- Random heads are drawn (seeded) from heads with score <= threshold; k = ``mask_k``
  (default 20, ~7% of SmolLM2's 270 heads), capped by the number of heads with a
  positive score so that "top-k retrieval heads" are never zero-score heads.
- Default grid: lengths 256/512 tokens x 10 depths x 2 needles (40 tests, plus 80 for the
  masking check; ~10 min for SmolLM2-135M on 2 CPU cores); ``grid="quick"``: 160 tokens x
  3 depths x 2 needles; ``grid="long"``: 4096 and 8192 tokens x 5 depths x 1 needle, each
  length capped at the model's window minus ``max_new_tokens`` (SmolLM2: 4096 and 8176).
  Lengths, depths and the number of needles are parameters (``lengths=(4096, 8176)``).
- Long context (Wu et al.'s code does the same): the prompt but its last token is prefilled
  into the HF KV cache with no capture (SDPA, no T x T pattern; in chunks of query rows when
  the masking edit needs probabilities), and only the decode steps compute eager attention,
  one query row per head over all keys (``_niah.greedy``): memory linear in the length.
Raises ValueError for a non-causal model and a needle whose answer tokens are not in the
tokenised prompt; UserError (a ValueError) for a context length that does not fit the
model's window with ``max_new_tokens`` decoded tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import random

import numpy as np
import pandas as pd
import torch

from workbench._types import Head
from workbench.capture import Ablate

from ._context import Analysis, Context, Params, Result, param
from ._niah import NEEDLES, NiahPrompt, build_prompt, greedy, rouge1_recall

THRESHOLD = 0.1
GRIDS = {
    "default": {"lengths": (256, 512), "depths": tuple(np.linspace(0, 1, 10).round(3)), "needles": 2},
    "quick": {"lengths": (160,), "depths": (0.2, 0.5, 0.8), "needles": 2},
    "long": {"lengths": (4096, 8192), "depths": (0.1, 0.3, 0.5, 0.7, 0.9), "needles": 1},
}


@dataclass(frozen=True)
class RetrievalParams(Params, analysis="retrieval"):
    """``lengths``/``depths``/``needles`` override the chosen ``grid``'s values when given."""

    grid: str = param("default", choices=tuple(GRIDS))
    lengths: tuple[int, ...] | None = param(None, lo=32, doc="prompt lengths in tokens")
    depths: tuple[float, ...] | None = param(None, lo=0, hi=1, doc="needle depths (0 = start, 1 = end)")
    needles: int | None = param(None, lo=1, hi=len(NEEDLES), doc="needles per (length, depth)")
    threshold: float = param(THRESHOLD, lo=0, hi=1, hi_open=True, doc="retrieval score above which a head is a retrieval head")
    mask_k: int = param(20, lo=0, doc="top heads masked in the ablation check (0: skip)")
    max_new_tokens: int = param(16, lo=1)
    seed: int = param(0, lo=0)


def applies(model) -> str | None:
    if model.kind != "causal":
        return (f"retrieval heads need a causal LM that decodes answers; {model.name} is a "
                f"{model.kind} model")
    return None


def grid_prompts(model, lengths, depths, n_needles: int, max_new_tokens: int = 16, seed: int = 0) -> list[NiahPrompt]:
    """Every (length, depth, needle) NIAH prompt. Raises ValueError (see module docstring)."""
    reason = applies(model)
    if reason:
        raise ValueError(reason)
    if not 1 <= n_needles <= len(NEEDLES):
        raise ValueError(f"needles must be 1..{len(NEEDLES)}, got {n_needles}")
    window = int(getattr(model.hf.config, "max_position_embeddings", 10 ** 9))
    return [build_prompt(model.tokenizer, nd, int(L), float(d), max_positions=window,
                         max_new_tokens=max_new_tokens, seed=seed)
            for L in lengths for d in depths for nd in NEEDLES[:n_needles]]


def grid_settings(model, p: RetrievalParams) -> dict:
    """{"lengths", "depths", "needles"} of ``p.grid`` with the given overrides; the ``long``
    grid's lengths are capped at the model's window minus ``p.max_new_tokens`` (duplicates
    dropped), lengths given explicitly are kept as they are."""
    grid = dict(GRIDS[p.grid])
    if p.grid == "long" and p.lengths is None:
        window = int(getattr(model.hf.config, "max_position_embeddings", 10 ** 9))
        grid["lengths"] = tuple(dict.fromkeys(min(L, window - p.max_new_tokens) for L in grid["lengths"]))
    for key in ("lengths", "depths", "needles"):
        if p[key] is not None:
            grid[key] = p[key]
    return grid


def copy_scores(prompt: NiahPrompt, gen: list[int], argmax: dict) -> dict[Head, float]:
    """Per head: |needle positions copied| / |needle span| for one decoded test, in [0, 1].

    A step copies when the head's argmax key lies in the needle span and holds the token
    emitted at that step; each needle position counts at most once, however often it is
    copied (Wu et al. 2024: |g_h intersect k| / |k| over the set of copied needle tokens).
    ``argmax``: {(stream, layer): long [head, step]} argmax key of each head at each step."""
    a, b = prompt.span
    ids_t = torch.tensor(prompt.ids + gen)
    g = torch.tensor(gen)
    out = {}
    for (stream, layer), arg in argmax.items():
        copy = (arg >= a) & (arg < b) & (ids_t[arg] == g[None, :])             # [head, step]
        hit = torch.zeros(arg.shape[0], b - a, dtype=torch.bool)
        hit[torch.nonzero(copy, as_tuple=True)[0], arg[copy] - a] = True       # copied needle positions
        n = hit.sum(-1).float() / (b - a)
        for h in range(arg.shape[0]):
            out[Head(stream, layer, h)] = float(n[h])
    return out


def run_niah(model, prompts: list[NiahPrompt], edits=(), *, max_new_tokens: int = 16, score: bool = True):
    """Decode every prompt; returns (tests table, {Head: summed copy score over retrieved tests}, n retrieved)."""
    tok = model.tokenizer
    rows, totals, n_ok = [], {}, 0
    for i, pr in enumerate(prompts):
        res = greedy(model, pr.ids, max_new_tokens, edits, argmax=score)
        gen, arg = res.tokens, res.argmax
        text = tok.decode(gen)
        rec = rouge1_recall(text, pr.needle.answer)
        ok = rec > 0.5
        rows.append({"test": i, "length": pr.length, "depth": pr.depth, "needle": pr.needle.answer,
                     "output": text, "rouge1_recall": rec, "retrieved": ok})
        if ok and score:
            n_ok += 1
            for h, v in copy_scores(pr, gen, arg).items():
                totals[h] = totals.get(h, 0.0) + v
    return pd.DataFrame(rows), totals, n_ok


def retrieval_table(model, totals: dict, n_ok: int, threshold: float = THRESHOLD) -> pd.DataFrame:
    rows = []
    for h in model.heads("self"):
        s = totals.get(h, 0.0) / n_ok if n_ok else float("nan")
        rows.append({"stream": h.stream, "layer": h.layer, "head": h.head, "retrieval.score": s,
                     "retrieval.is_retrieval": bool(s > threshold)})
    return pd.DataFrame(rows)


def masking_check(model, prompts, table: pd.DataFrame, k: int, *, seed: int = 0, threshold: float = THRESHOLD,
                  max_new_tokens: int = 16) -> dict:
    """NIAH accuracy with the top-k retrieval heads masked vs k random non-retrieval heads
    (both ``Ablate(kind="uniform")``)."""
    ranked = table.sort_values("retrieval.score", ascending=False)
    k = min(k, int((ranked["retrieval.score"] > 0).sum()))
    if k == 0:
        return {"k": 0, "note": "no head copied in any retrieved test"}
    top = [Head(r.stream, r.layer, r.head) for r in ranked.head(k).itertuples()]
    pool = [Head(r.stream, r.layer, r.head) for r in ranked.itertuples()
            if r._4 <= threshold and Head(r.stream, r.layer, r.head) not in top]
    rnd = random.Random(seed).sample(pool, min(k, len(pool)))
    acc = {}
    for name, heads in (("retrieval", top), ("random", rnd)):
        t, _, _ = run_niah(model, prompts, [Ablate(tuple(heads), kind="uniform")],
                           max_new_tokens=max_new_tokens, score=False)
        acc[name] = float(t["retrieved"].mean())
    return {"k": k, "ablation": "uniform (pre-softmax logits := 0)", "accuracy_masked_retrieval": acc["retrieval"],
            "accuracy_masked_random": acc["random"], "masked_retrieval_heads": [h.name for h in top],
            "masked_random_heads": [h.name for h in rnd]}


def _run(ctx: Context) -> Result:
    model, p = ctx.model, ctx.params
    grid = grid_settings(model, p)
    thr, mnt = p.threshold, p.max_new_tokens
    prompts = grid_prompts(model, grid["lengths"], grid["depths"], int(grid["needles"]), mnt, p.seed)
    tests, totals, n_ok = run_niah(model, prompts, max_new_tokens=mnt)
    table = retrieval_table(model, totals, n_ok, thr)
    n_ret = int(table["retrieval.is_retrieval"].sum())
    summary = {"tests": len(tests), "accuracy": float(tests["retrieved"].mean()), "n_retrieval_heads": n_ret,
               "fraction_retrieval_heads": n_ret / len(table), "threshold": thr, "grid": {k: list(map(float, v))
               if isinstance(v, (list, tuple)) else v for k, v in grid.items()},
               "top": [{"head": f"{r.stream}/{r.layer}/{r.head}", "score": round(float(r._4), 4)}
                       for r in table.sort_values("retrieval.score", ascending=False).head(10).itertuples()]}
    if p.mask_k > 0:
        summary["masking"] = masking_check(model, prompts, table, p.mask_k, seed=p.seed,
                                           threshold=thr, max_new_tokens=mnt)
    return Result(table, tables={"niah_tests": tests}, summary=summary)


ANALYSIS = Analysis("retrieval", _run, applies, params=RetrievalParams)
