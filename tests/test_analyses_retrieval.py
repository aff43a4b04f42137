"""Retrieval heads (Wu et al. 2024) and the KV-cache plan on smollm2-135m, quick settings."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.analyses import Context, kv_plan, retrieval
from workbench.analyses._niah import NEEDLES, Needle, build_prompt, rouge1_recall
from workbench.inputs import natural_passages


@pytest.fixture(scope="module")
def smol():
    return wb.load("smollm2-135m")


def test_rouge1_recall():
    assert rouge1_recall(" Tobias Copperfield.", "Tobias Copperfield") == 1.0
    assert rouge1_recall("smoked paprika", "smoked paprika with lemon zest") == 0.4
    assert rouge1_recall("", "x") == 0.0


def test_niah_prompts_and_bad_input(smol):
    tok = smol.tokenizer
    pr = build_prompt(tok, NEEDLES[0], 200, 0.5, max_positions=8192)
    a, b = pr.span
    assert tok.decode(pr.ids[a:b]).strip() == NEEDLES[0].answer
    assert abs(pr.length - 200) <= 12
    with pytest.raises(ValueError, match="window"):
        build_prompt(tok, NEEDLES[0], 9000, 0.5, max_positions=8192)
    with pytest.raises(ValueError, match="not found in the tokenised prompt"):
        build_prompt(tok, Needle("The thing is", "etc.", "What is the thing?"), 120, 0.5, max_positions=8192)
    with pytest.raises(ValueError, match="causal"):
        retrieval.grid_prompts(wb.load("minilm-l6"), (64,), (0.5,), 1)
    assert retrieval.applies(wb.load("minilm-l6")) is not None


def test_retrieval_heads_and_masking_asymmetry(smol):
    params = {"lengths": (160,), "depths": (0.9,), "needles": 1, "mask_k": 10}
    res = retrieval.ANALYSIS.run(Context(smol, None, params))
    tests, table, s = res.tables["niah_tests"], res.table, res.summary
    assert len(tests) == 1 and tests["retrieved"].all()           # the robot-name needle is found
    assert len(table) == 270 and table["retrieval.score"].between(0, 1).all()
    assert 0 < s["n_retrieval_heads"] < 270 * 0.25
    assert s["top"][0]["score"] > 0.5                              # a head copies most of the answer
    m = s["masking"]
    assert m["k"] == 10 and len(m["masked_random_heads"]) == 10
    assert not set(m["masked_retrieval_heads"]) & set(m["masked_random_heads"])
    assert m["accuracy_masked_retrieval"] < m["accuracy_masked_random"]


def test_edit_pattern_window_is_exact_and_restricts(smol):
    text = smol.prepare(natural_passages(1), max_tokens=32)
    heads = tuple(smol.heads())
    base = kv_plan.lm_loss(smol, text)
    same = kv_plan.lm_loss(smol, text, [wb.EditPattern(heads, kv_plan.window_fn(4, 10_000), "full")])
    assert abs(same - base) < 2e-3                                 # keep-all window == the model
    tight = kv_plan.lm_loss(smol, text, [wb.EditPattern(heads, kv_plan.window_fn(1, 2), "tight")])
    assert tight > base + 0.5
    fn = kv_plan.window_fn(1, 2)
    a = torch.full((1, 3, 6), 1 / 6)
    out = fn(a, 3)                                                  # query rows at positions 3, 4, 5
    assert torch.allclose(out.sum(-1), torch.ones(1, 3))
    assert (out[0, 0] > 0).tolist() == [True, False, True, True, True, True]
    assert (out[0, 2] > 0).tolist() == [True, False, False, False, True, True]


def test_kv_plan_groups_gqa_heads(smol):
    import pandas as pd

    types = pd.DataFrame([{"stream": "self", "layer": l, "head": h,
                           "taxonomy.type": "sink" if (l, h) != (0, 1) else "retrieval"}
                          for l in range(30) for h in range(9)])
    plan = kv_plan.plan(smol, types)
    l0 = plan[plan["layer"] == 0]
    assert not l0[l0["kv_plan.kv_head"] == 0]["kv_plan.streaming"].any()   # heads 0-2 share KV head 0
    assert l0[l0["kv_plan.kv_head"] == 1]["kv_plan.streaming"].all()
    assert kv_plan.memory_saved(plan, 1000, 4, 64) == pytest.approx(89 / 90 * (1000 - 68) / 1000)
    assert kv_plan.applies(wb.load("minilm-l6")) is not None


def test_copy_score_counts_each_needle_position_once():
    """Hand-built decode: needle span = positions 2..4 of the prompt (tokens 7, 8, 9)."""
    from workbench._types import Head

    pr = retrieval.NiahPrompt(ids=[1, 2, 7, 8, 9, 3], span=(2, 5), needle=NEEDLES[0], length=6, depth=0.5)
    gen = [7, 8, 7, 8, 9]                      # the model repeats the start of the answer
    arg = torch.tensor([
        [2, 3, 2, 3, 4],                       # copies 7, 8, 7 again, 8 again, 9: 3 distinct positions
        [2, 2, 2, 2, 2],                       # copies position 2 twice (steps 0 and 2), else mismatching tokens
        [2, 3, 0, 5, 4],                       # copies 2, 3, 4 once each; steps 2/3 point outside the span
        [3, 2, 4, 1, 0],                       # inside the span but never the emitted token
    ])
    got = retrieval.copy_scores(pr, gen, {("self", 0): arg})
    want = [3 / 3, 1 / 3, 3 / 3, 0.0]
    assert [got[Head("self", 0, h)] for h in range(4)] == pytest.approx(want)
    assert all(0 <= v <= 1 for v in got.values())
