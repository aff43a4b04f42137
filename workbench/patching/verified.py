"""Verified AtP*: rank every head with AtP*, patch the top K exactly, and estimate what was missed.

Kramár et al. 2024 ("AtP*: An efficient and scalable method for localizing LLM behaviour to
components", arXiv:2403.00745) use AtP* as a pre-filter for exact activation patching:
rank every node by its AtP* score, verify the top ones with exact patching, and bound the
remaining false negatives with a diagnostic that exactly patches randomly sampled nodes
outside the verified set (their Section 3.4). This module implements that pipeline for heads:

1. AtP* score of every head (``atp.py``: one forward, L GradDrop backwards).
2. Exact effect (fast path) of the K heads with the largest AtP* score, and of ``sample``
   heads drawn uniformly without replacement from the other N - K (one exact sweep of
   K + sample heads).
3. False-negative estimate. A head counts as *important* when its |exact effect| is at least
   tau, the |exact effect| of the ``top``-th largest verified top-K head: an unverified head
   that important would belong in the reported top ``top``. Of the R = N - K unverified heads
   let F be important; among the m sampled ones x are. Then x ~ Hypergeometric(R, F, m), so

       F_hat = x R / m                       (unbiased)
       F_ucb = max{F : P(X <= x | R, F, m) >= alpha}   (exact one-sided 1 - alpha bound)

   and, with confidence 1 - alpha, at most F_ucb heads outside the top K are false
   negatives (P(a random unverified head is one) <= F_ucb / R). x = 0 of m gives
   F_ucb ~ R (1 - alpha^(1/m)), i.e. ~3 R / m at alpha = 0.05.

   Caveat: the paper's own diagnostic (Section 3.4) obtains its bound from *subsampling*
   (random subsets of nodes patched together, their Section 3.3 estimator); its exact text
   could not be consulted when this was written, so the bound above is the standard exact
   (Clopper-Pearson-style) hypergeometric bound for a uniform sample of individually patched
   heads, which needs no assumption on how effects combine.

Timing: AtP* + (K + sample) / N x the exact sweep (the fast path's cost per head).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..errors import UserError
from .engine import PatchConfig, run_sweep
from .result import PatchResult

NAME = "atp*-verified"
STORES = ("atp_star", "exact")          # sub-folders of ``store``: the AtP* sweep and the exact one


@dataclass
class VerifiedResult(PatchResult):
    """A ``PatchResult`` whose ``per_input`` is the exact effect of the verified heads (the top K
    by AtP* and the random sample) and NaN for the others; ``extra`` holds ``atp*`` (the AtP*
    score, >= 0) and ``atp`` (signed AtP) of every head; ``verification`` the estimate (see the
    module docstring): k, sample, top, tau, alpha, unverified (R), important_in_sample (x),
    false_negatives_estimate (F_hat), false_negatives_ucb (F_ucb), max_abs_sampled and the
    seconds of each step."""

    verification: dict = field(default_factory=dict)
    role: list = field(default_factory=list)      # per head: "top-k" | "sample" | ""

    def rank(self) -> torch.Tensor:
        """Verified heads first, by |exact effect| (1 = largest); then the others by AtP* score."""
        exact = self.effect.abs()
        done = ~torch.isnan(exact)
        key = torch.where(done, exact, torch.tensor(-1.0))
        score = self.extra["atp*"].mean(1)
        order = sorted(range(len(self.heads)), key=lambda i: (not bool(done[i]), -float(key[i]), -float(score[i]), i))
        r = torch.empty(len(order), dtype=torch.long)
        r[torch.tensor(order)] = torch.arange(1, len(order) + 1)
        return r

    def table(self, prefix: str = "patch") -> pd.DataFrame:
        df = super().table(prefix)
        df[f"{prefix}.verified"] = self.role
        return df

    def meta(self) -> dict:
        return {**super().meta(), "verification": self.verification}


def hypergeom_ucb(x: int, population: int, m: int, alpha: float) -> int:
    """Largest F in [x, population - m + x] with P(X <= x | population, F, m) >= alpha."""
    from scipy.stats import hypergeom

    if m >= population:
        return x                                                    # everything was patched
    hi = population - m + x
    best = x
    for f in range(x, hi + 1):                                      # cdf decreases in F
        if hypergeom.cdf(x, population, f, m) >= alpha:
            best = f
        else:
            break
    return best


def verified_patch(model, clean, metric, *, corrupt=None, heads=None, k: int = 40, sample: int = 20,
                   top: int = 20, alpha: float = 0.05, seed: int = 0, ablation: str = "resample",
                   direction: str = "noising", per_position: bool = False, method: str = NAME,
                   node: str = "z", **kw) -> VerifiedResult:
    """Verified AtP* over heads (module docstring; Kramár et al. 2024, Section 3.4).

    Args:
        model, clean, metric, corrupt, heads, ablation, direction: as ``patch``.
        per_position: must be False (whole heads only).
        k: heads with the largest AtP* score patched exactly (>= 1; capped at the number of heads).
        sample: unverified heads drawn uniformly at random and patched exactly (>= 0).
        top: the verified top ``top`` heads define tau, the |effect| that makes a head important
            (1 <= top <= k).
        alpha: one minus the confidence of the false-negative bound (0 < alpha < 1).
        seed: seed of the random sample.
        method: ``"atp*-verified"`` (accepted so callers can pass every method the same way).
        node: ``z`` | ``q`` | ``k`` | ``v`` as ``patch`` (k, v: the units are KV heads).
        **kw: passed on to ``patch`` (shard_size, max_rows, update, max_tokens, executor); ``store``:
            a folder whose sub-folders ``STORES`` record the two sweeps' finished units.

    Returns:
        ``VerifiedResult``: ``per_input`` float32 [head, input] exact effects of the verified heads
        (NaN elsewhere, metric units), ``extra["atp*"]`` / ``extra["atp"]`` [head, input],
        ``verification`` (dict), ``seconds`` (all steps).

    Raises:
        UserError: k, sample, top or alpha out of range, per_position; ValueError as ``patch``.
    """
    if method != NAME:
        raise UserError(f"verified_patch runs method {NAME!r}, not {method!r}; use patch() for the others")
    if per_position:
        raise UserError("verified AtP* patches whole heads; per_position=True is not supported (use method "
                        "'exact' or 'atp*' with per_position=True)")
    if k < 1 or sample < 0 or not 1 <= top <= k or not 0 < alpha < 1:
        raise UserError(f"verified AtP* needs k >= 1, sample >= 0, 1 <= top <= k and 0 < alpha < 1 "
                        f"(got k={k}, sample={sample}, top={top}, alpha={alpha})")
    store = kw.pop("store", None)
    run = dict(corrupt=corrupt, reference=kw.pop("reference", None), executor=kw.pop("executor", None))
    cfg = dict(ablation=ablation, direction=direction, node=node, **kw)
    t0 = time.perf_counter()
    approx, first = run_sweep(model, clean, metric, PatchConfig("atp*", **cfg), heads=heads,
                              store=None if store is None else f"{store}/{STORES[0]}", **run)
    t_atp = time.perf_counter() - t0
    all_heads = approx.heads
    n = len(all_heads)
    k = min(k, n)
    top = min(top, k)
    score = approx.effect
    order = sorted(range(n), key=lambda i: (-float(score[i]), i))
    chosen, rest = order[:k], order[k:]
    g = torch.Generator().manual_seed(seed)
    picked = [rest[int(j)] for j in torch.randperm(len(rest), generator=g)[:sample].tolist()]
    rows = sorted(chosen + picked)
    t1 = time.perf_counter()
    exact_cfg = PatchConfig("exact", **{"sites_per_unit": None, **cfg})   # K heads over the layers: one pipelined unit
    exact, _ = run_sweep(model, clean, metric, exact_cfg, heads=[all_heads[i] for i in rows], prior=first,
                         store=None if store is None else f"{store}/{STORES[1]}", **run)
    t_exact = time.perf_counter() - t1
    per_input = torch.full((n, len(clean)), float("nan"))
    per_input[torch.tensor(rows)] = exact.per_input
    eff = exact.effect.abs()
    by_row = dict(zip(rows, eff.tolist()))
    top_abs = sorted((by_row[i] for i in chosen), reverse=True)
    tau = top_abs[top - 1]
    x = sum(by_row[i] >= tau for i in picked)
    r_count, m = len(rest), len(picked)
    ucb = hypergeom_ucb(x, r_count, m, alpha) if r_count else 0
    verification = {
        "k": k, "sample": m, "top": top, "tau": tau, "alpha": alpha, "seed": seed, "unverified": r_count,
        "important_in_sample": x,
        "false_negatives_estimate": (x * r_count / m) if m else (0.0 if r_count == 0 else float("nan")),
        "false_negatives_ucb": ucb if (m or r_count == 0) else r_count,
        "false_negative_rate_ucb": (ucb / r_count) if (r_count and m) else (0.0 if r_count == 0 else 1.0),
        "max_abs_sampled": max((by_row[i] for i in picked), default=float("nan")),
        "seconds_atp_star": round(t_atp, 3), "seconds_exact": round(t_exact, 3),
        "bound": "exact one-sided hypergeometric upper bound on the number of unverified heads with "
                 "|effect| >= tau, from a uniform sample patched exactly",
    }
    top_set, sample_set = set(chosen), set(picked)
    role = ["top-k" if i in top_set else "sample" if i in sample_set else "" for i in range(n)]
    return VerifiedResult(
        heads=all_heads, per_input=per_input, method=NAME, ablation=ablation, direction=direction,
        metric=approx.metric, clean_metric=approx.clean_metric, base_metric=exact.base_metric,
        corrupt_metric=approx.corrupt_metric,
        extra={"atp*": approx.per_input, "atp": approx.extra["atp"]}, seconds=time.perf_counter() - t0,
        verification=verification, role=role, node=node)


def false_negative_summary(v: dict) -> str:
    """One line for a report: the estimate and its bound."""
    if not v.get("unverified"):
        return "every head was patched exactly: no false negatives"
    if not v.get("sample"):
        return f"{v['unverified']} heads outside the top {v['k']} unverified (sample=0: no estimate)"
    return (f"{v['important_in_sample']}/{v['sample']} sampled heads outside the top {v['k']} have |effect| >= "
            f"{v['tau']:.3g}: estimate {v['false_negatives_estimate']:.1f} of {v['unverified']} such heads, "
            f"at most {v['false_negatives_ucb']} with {100 * (1 - v['alpha']):.0f}% confidence")


__all__ = ["NAME", "STORES", "VerifiedResult", "false_negative_summary", "hypergeom_ucb", "verified_patch"]
