"""Long-context retrieval path (issue 12 part 5): KV-cache prefill without capture, eager rows
only at the decode steps. Checked at a short context against HF's eager attention
(``output_attentions=True`` on the whole sequence, an unwrapped copy of the model) and a
retrieval score computed here by hand from those rows (Wu et al. 2024)."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import workbench as wb
import workbench._attention as attn_mod
import workbench.cuda.stats.naive as naive_mod
from workbench.analyses import _niah, retrieval
from workbench.analyses._niah import NEEDLES, build_prompt, greedy
from workbench.capture import Ablate
from workbench.errors import UserError


@pytest.fixture(scope="module")
def smol():
    return wb.load("smollm2-135m")


@pytest.fixture(scope="module")
def case(smol):
    """One NIAH prompt of ~256 tokens decoded on the long-context path, and HF eager's
    attentions of the prompt + decoded tokens (one full forward, no KV cache)."""
    pr = build_prompt(smol.tokenizer, NEEDLES[0], 256, 0.4, max_positions=8192)
    dec = greedy(smol, pr.ids, 8, argmax=True, rows=True)
    eager = tf.AutoModelForCausalLM.from_pretrained(smol.meta["cache"], dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    full = pr.ids + dec.tokens
    with torch.no_grad():
        out = eager(input_ids=torch.tensor([full[:-1]]), output_attentions=True)
    return pr, dec, out


def _hand_scores(pr, tokens, attentions) -> dict:
    """Wu et al.'s copy score from full eager attention rows: the query emitting token s sits at
    position len(prompt) - 1 + s; a head copies when its argmax key is a needle position
    holding that token; each needle position counts once; score = copied / |span|."""
    seq = pr.ids + tokens
    a, b = pr.span
    scores = {}
    for layer, att in enumerate(attentions):
        for h in range(att.shape[1]):
            copied = set()
            for s, t in enumerate(tokens):
                q = len(pr.ids) - 1 + s
                j = int(att[0, h, q, :q + 1].argmax())
                if a <= j < b and seq[j] == t:
                    copied.add(j)
            scores[(layer, h)] = len(copied) / (b - a)
    return scores


def test_decoded_tokens_and_rows_equal_hf_eager(case):
    pr, dec, out = case
    assert len(dec.tokens) >= 3
    n = len(pr.ids)
    want = [int(out.logits[0, n - 1 + s].argmax()) for s in range(len(dec.tokens))]
    assert dec.tokens == want                                   # greedy on the KV cache == full eager forward
    assert len(dec.rows) == len(dec.tokens)
    worst = 0.0
    for s, step in enumerate(dec.rows):
        q = n - 1 + s
        assert set(step) == {("self", l) for l in range(30)}
        for (_, layer), row in step.items():
            ref = out.attentions[layer][0, :, q, :q + 1]             # [head, keys]: the row of that query
            assert row.shape == ref.shape == (9, q + 1)
            worst = max(worst, float((row - ref).abs().max()))
    assert worst < 1e-4, worst


def test_scores_equal_hand_scores_from_hf_eager_rows(case, smol):
    pr, dec, out = case
    want = _hand_scores(pr, dec.tokens, out.attentions)
    got = retrieval.copy_scores(pr, dec.tokens, dec.argmax)
    assert {(h.layer, h.head): v for h, v in got.items()} == pytest.approx(want)
    assert max(want.values()) > 0.5                             # some head copies the answer: not vacuous
    assert sum(v > 0 for v in want.values()) < 270 // 4
    tests, totals, n_ok = retrieval.run_niah(smol, [pr], max_new_tokens=8)   # the analysis' own loop
    assert n_ok == 1 and tests["retrieved"].all()
    assert {(h.layer, h.head): v for h, v in totals.items()} == pytest.approx(want)


def _record(monkeypatch) -> list:
    """Record (query rows, keys) of every eager probability computation (patterns, edits, statistics)."""
    calls = []

    def wrap(fn):
        def probs(query, key, mask, **kw):
            rows = kw.get("rows")
            calls.append(((rows.stop - rows.start) if rows is not None else query.shape[2], key.shape[2]))
            return fn(query, key, mask, **kw)
        return probs

    monkeypatch.setattr(attn_mod, "eager_probs", wrap(naive_mod.eager_probs))
    monkeypatch.setattr(naive_mod, "eager_probs", wrap(naive_mod.eager_probs))
    return calls


def test_prefill_computes_no_probabilities_and_decode_one_row(smol, monkeypatch):
    pr = build_prompt(smol.tokenizer, NEEDLES[0], 160, 0.5, max_positions=8192)
    calls = _record(monkeypatch)
    dec = greedy(smol, pr.ids, 3, stop="", argmax=True)
    assert len(dec.tokens) == 3 and dec.argmax[("self", 0)].shape == (9, 3)
    n = len(pr.ids)
    assert sorted(set(calls)) == [(1, n), (1, n + 1), (1, n + 2)]     # one query row per site and step
    assert len(calls) == 3 * 30


def test_masked_prefill_in_chunks_equals_one_pass(smol, monkeypatch):
    """Uniform masking needs probabilities in the prefill: chunks of rows through the KV cache
    give what one pass gives, and no call computes more rows than a chunk."""
    pr = build_prompt(smol.tokenizer, NEEDLES[0], 160, 0.5, max_positions=8192)
    edit = [Ablate((wb.Head("self", 3, 1), wb.Head("self", 20, 4), wb.Head("self", 20, 5)), kind="uniform")]
    one = greedy(smol, pr.ids, 4, edit, stop="", argmax=True)
    n = len(pr.ids) - 1
    monkeypatch.setattr(_niah, "PREFILL_BLOCK_BYTES", 9 * n * 4 * 40)         # 40 rows per chunk
    assert _niah.prefill_chunk(smol, n, edit) == 40 and _niah.prefill_chunk(smol, n) == n
    calls = _record(monkeypatch)
    chunked = greedy(smol, pr.ids, 4, edit, stop="", argmax=True)
    assert max(r for r, _ in calls) == 40 and len({k for _, k in calls if k <= n}) == -(-n // 40)
    assert chunked.tokens == one.tokens
    for k in one.argmax:
        assert torch.equal(chunked.argmax[k], one.argmax[k])


def test_long_grid_params(smol):
    p = retrieval.ANALYSIS.parse_params({"grid": "long"}, from_text=True)
    g = retrieval.grid_settings(smol, p)
    assert g["lengths"] == (4096, 8192 - 16) and g["needles"] == 1 and len(g["depths"]) == 5
    p = retrieval.ANALYSIS.parse_params({"grid": "long", "max_new_tokens": "32", "lengths": "4096,8000"},
                                        from_text=True)
    assert retrieval.grid_settings(smol, p)["lengths"] == (4096, 8000)
    prompts = retrieval.grid_prompts(smol, (8176,), (0.5,), 1, 16)
    assert 8000 < len(prompts[0].ids) <= 8176
    with pytest.raises(UserError, match="window of 8192 positions; use lengths of at most 8160$"):
        retrieval.grid_prompts(smol, (8176,), (0.5,), 1, 32)


@pytest.mark.parametrize("length", [4096, 8192 - 16])
def test_prompt_has_the_requested_length(smol, length):
    """A requested context is that many tokens or a few fewer (fewer than the shortest haystack
    sentence, 6 SmolLM2 tokens); it used to stop at the first sentence that did not fit
    (4096 gave 3991-4002 tokens), and the needle still sits at its depth."""
    tok = smol.tokenizer
    for needle, depth in ((NEEDLES[0], 0.0), (NEEDLES[2], 0.5), (NEEDLES[3], 1.0)):
        pr = build_prompt(tok, needle, length, depth, max_positions=8192)
        assert length - 6 < len(pr.ids) <= length, (needle.answer, depth, len(pr.ids))
        assert pr.length == len(pr.ids)
        assert pr.ids[pr.span[0]:pr.span[1]] == tok(" " + needle.answer, add_special_tokens=False)["input_ids"]
        text = tok.decode(pr.ids)
        assert text.endswith(f"Question: {needle.question}\nAnswer: {needle.lead}")
        at = text.index(needle.sentence) / len(text)      # depth counts sentences: in characters, about the same
        assert abs(at - depth) < 0.05, (depth, at)
