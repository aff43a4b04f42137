"""Verified AtP* (issue 11, part 4): AtP* ranks every head, the top K are patched exactly, a
random sample of the rest estimates the false negatives with an exact hypergeometric bound."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from workbench.cli import main
from workbench.errors import UserError
from workbench.patching import patch, verified_patch
from workbench.patching.verified import hypergeom_ucb
from test_patching import metric_for, pair, sharpened


@pytest.fixture(scope="module")
def llama():
    m = sharpened("llama")
    clean, corrupt = pair("llama", m)
    return m, clean, corrupt, metric_for("llama", m, clean)


def ucb_by_hand(x: int, population: int, m: int, alpha: float) -> int:
    """Largest F with P(X <= x) >= alpha, X ~ Hypergeometric(population, F, m), from math.comb."""
    def cdf(f):
        return sum(math.comb(f, j) * math.comb(population - f, m - j) for j in range(0, x + 1)) / math.comb(population, m)
    return max(f for f in range(x, population - m + x + 1) if cdf(f) >= alpha)


@pytest.mark.parametrize("x,population,m,alpha", [(0, 100, 20, 0.05), (2, 100, 20, 0.05), (0, 230, 20, 0.05),
                                                  (1, 50, 10, 0.1), (5, 30, 10, 0.05), (0, 10, 10, 0.05)])
def test_bound_equals_hand_computation(x, population, m, alpha):
    assert hypergeom_ucb(x, population, m, alpha) == ucb_by_hand(x, population, m, alpha)


@pytest.mark.parametrize("population,important,m", [(30, 0, 10), (30, 3, 10), (60, 8, 12), (25, 25, 5)])
def test_bound_covers_the_truth_with_probability_one_minus_alpha(population, important, m):
    """Over every possible sample: P(F_ucb < F) <= alpha (exact, by summing the hypergeometric pmf)."""
    alpha = 0.05
    miss = sum(math.comb(important, x) * math.comb(population - important, m - x) / math.comb(population, m)
               for x in range(0, min(m, important) + 1) if hypergeom_ucb(x, population, m, alpha) < important)
    assert miss <= alpha


def test_top_k_are_patched_exactly_and_the_rest_are_estimated(llama):
    m, clean, corrupt, met = llama
    n = len(m.heads())
    res = verified_patch(m, clean, met, corrupt=corrupt, k=3, sample=2, top=2, seed=1)
    star = patch(m, clean, met, corrupt=corrupt, method="atp*")
    exact = patch(m, clean, met, corrupt=corrupt, method="exact")
    torch.testing.assert_close(res.extra["atp*"], star.per_input, atol=1e-6, rtol=0)
    top3 = sorted(range(n), key=lambda i: -float(star.effect[i]))[:3]
    roles = res.table()["patch.verified"].tolist()
    assert sorted(i for i, r in enumerate(roles) if r == "top-k") == sorted(top3)
    assert roles.count("sample") == 2 and roles.count("") == n - 5
    done = [i for i, r in enumerate(roles) if r]
    torch.testing.assert_close(res.per_input[done], exact.per_input[done], atol=1e-5, rtol=0)
    assert torch.isnan(res.per_input[[i for i, r in enumerate(roles) if not r]]).all()
    v = res.verification
    tau = sorted((abs(float(exact.effect[i])) for i in top3), reverse=True)[1]
    sampled = [i for i, r in enumerate(roles) if r == "sample"]
    x = sum(abs(float(exact.effect[i])) >= tau for i in sampled)
    assert (v["k"], v["sample"], v["unverified"], v["important_in_sample"]) == (3, 2, n - 3, x)
    assert v["tau"] == pytest.approx(tau, rel=1e-6)
    assert v["false_negatives_estimate"] == pytest.approx(x * (n - 3) / 2)
    assert v["false_negatives_ucb"] == ucb_by_hand(x, n - 3, 2, 0.05)
    # rank: verified heads first by |exact effect|, then the others by AtP* score
    rank = res.rank()
    by_exact = sorted(done, key=lambda i: -abs(float(exact.effect[i])))
    assert [int(rank[i]) for i in by_exact] == list(range(1, len(done) + 1))
    rest = sorted((i for i in range(n) if i not in done), key=lambda i: -float(star.effect[i]))
    assert [int(rank[i]) for i in rest] == list(range(len(done) + 1, n + 1))
    assert res.meta()["verification"] == v


def test_every_head_verified_means_no_false_negatives(llama):
    m, clean, corrupt, met = llama
    res = verified_patch(m, clean, met, corrupt=corrupt, k=100, sample=5, top=4)
    assert not torch.isnan(res.per_input).any()
    assert res.verification["unverified"] == 0 and res.verification["false_negatives_ucb"] == 0


def test_bad_parameters_are_refused_before_compute(llama):
    m, clean, corrupt, met = llama
    for kw in (dict(k=0), dict(sample=-1), dict(top=5, k=4), dict(alpha=1.0), dict(per_position=True)):
        with pytest.raises(UserError, match="verified AtP"):
            verified_patch(m, clean, met, corrupt=corrupt, **kw)


def test_patch_command_runs_verified_atp_star(tmp_path):
    from tiny import tiny_hf

    folder, pairs, out = tmp_path / "tiny-gpt2", tmp_path / "pairs.jsonl", tmp_path / "run"
    tiny_hf("gpt2").save_pretrained(folder)
    rows = [{"clean": [7, 2 + i, 3, 9, 4], "corrupt": [7, 8 + i, 3, 9, 4], "target": 11, "distractor": 12}
            for i in range(3)]
    pairs.write_text("\n".join(map(json.dumps, rows)))
    assert main(["patch", str(folder), "--task", str(pairs), "--out", str(out), "--quiet",
                 "--method", "atp-star-verified,exact", "--verify-k", "3", "--verify-sample", "2"]) == 0
    heads = pd.read_parquet(out / "heads.parquet")
    assert (heads["patch.verified"] != "").sum() == 5 and heads["patch.effect"].notna().sum() == 5
    done = heads["patch.verified"] != ""
    assert (heads.loc[done, "patch.effect"] - heads.loc[done, "patch.effect_exact"]).abs().max() < 1e-5
    meta = json.loads((out / "meta.json").read_text())
    assert meta["analyses"]["patch"]["verification"]["k"] == 3
    assert not (tmp_path / ".run.units").exists()
    assert main(["patch", str(folder), "--task", str(pairs), "--out", str(tmp_path / "x"),
                 "--quiet", "--method", "atp-star-verified", "--verify-k", "0"]) == 2


@pytest.mark.parametrize("node", ["z", "q"])
def test_zero_denoising_verified_effects_equal_the_full_sweep(llama, node):
    """Zero denoising restores one head into a model with every head ablated: the verified heads'
    exact effects must be those of the full exact sweep (the exact step once ablated only the
    K + sample verified heads in its base run)."""
    m, clean, corrupt, met = llama
    kw = dict(ablation="zero", direction="denoising", node=node)
    res = verified_patch(m, clean, met, corrupt=corrupt, k=3, sample=2, top=2, seed=1, **kw)
    exact = patch(m, clean, met, corrupt=corrupt, method="exact", **kw)
    done = [i for i, r in enumerate(res.role) if r]
    assert len(done) == 5 and exact.per_input[done].abs().max() > 1e-3
    torch.testing.assert_close(res.per_input[done], exact.per_input[done], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.base_metric, exact.base_metric, atol=1e-6, rtol=0)
