"""Prompt sets at an exact length after Gu et al. 2024 (natural, random, repeated), and the
protocol the job records with them.

Checked against the tokenizers themselves (their own encodings, cut by hand), the MiniLM
vocabulary file read line by line, and the SmolLM2 tokenizer's serialised added-token table.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from toy_tokenizers import toy_tokenizer

from workbench.errors import UserError
from workbench.inputs import prompt_set

T = 64


@pytest.fixture(scope="module")
def minilm(builtin):
    return builtin("minilm-l6")


@pytest.fixture(scope="module")
def smol(builtin):
    return builtin("smollm2-135m")


def _minilm_vocab_specials(model) -> set[int]:
    """Ids of [PAD]/[UNK]/[CLS]/[SEP]/[MASK] and [unusedN], read from vocab.txt (line number = id)."""
    lines = (Path(model.tokenizer.name_or_path) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {i for i, t in enumerate(lines) if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
            or re.fullmatch(r"\[unused\d+\]", t)}


# ---------------------------------------------------------------- natural text: exactly T tokens

def test_natural_set_gives_exactly_T_tokens_with_cls_and_sep(minilm):
    tok = minilm.tokenizer
    batch = prompt_set(tok, "natural", max_prompts=40, max_tokens=T, seed=0).prepare(minilm)
    ids, mask = batch.model_inputs["input_ids"], batch.model_inputs["attention_mask"]
    assert ids.shape == (40, T) and bool(mask.all())
    for i, item in enumerate(batch.items):
        full = tok(item["text"])["input_ids"]          # the tokenizer's own encoding, uncut
        assert len(full) >= T
        assert ids[i].tolist() == full[:T - 1] + [tok.sep_token_id]   # cut by hand, [SEP] kept
        assert item["protocol"]["set"] == "natural" and item["protocol"]["tokens"] == T


def test_natural_set_for_a_tokenizer_without_special_tokens(smol):
    tok = smol.tokenizer
    batch = prompt_set(tok, "natural", max_prompts=12, max_tokens=T, seed=3).prepare(smol)
    for i, item in enumerate(batch.items):
        assert batch.model_inputs["input_ids"][i].tolist() == tok(item["text"])["input_ids"][:T]
    assert batch.items[0]["protocol"]["first_token"] is None   # SmolLM2's tokenizer adds no BOS


def test_natural_set_that_the_bundled_text_cannot_supply_is_one_line_user_error(minilm):
    with pytest.raises(UserError, match=r"gives only \d+ inputs of 4096 tokens.*max_prompts") as info:
        prompt_set(minilm.tokenizer, "natural", max_prompts=16, max_tokens=4096)
    assert "\n" not in str(info.value) and "--max-prompts" in info.value.cli


def test_natural_set_prefix_stable_and_seeded(minilm):
    a = prompt_set(minilm.tokenizer, "natural", max_prompts=10, max_tokens=T, seed=1).texts
    assert prompt_set(minilm.tokenizer, "natural", max_prompts=4, max_tokens=T, seed=1).texts == a[:4]
    assert prompt_set(minilm.tokenizer, "natural", max_prompts=10, max_tokens=T, seed=2).texts != a


# ---------------------------------------------------------------- random / repeated (Gu et al. 2024)

def test_random_set_cls_first_no_special_or_unused_ids(minilm):
    tok = minilm.tokenizer
    banned = _minilm_vocab_specials(minilm)
    assert len(banned) == 999                                  # 5 specials + [unused0..993]
    ps = prompt_set(tok, "random", max_prompts=50, max_tokens=2000, seed=3)
    rows = np.array(ps.token_ids)
    assert rows.shape == (50, 2000)
    assert (rows[:, 0] == tok.cls_token_id).all() and (rows[:, -1] == tok.sep_token_id).all()
    body = rows[:, 1:-1].ravel()
    assert not np.isin(body, sorted(banned)).any()             # 100k draws would hit any allowed one
    assert ps.protocol["excluded_ids"] == 999 and ps.protocol["vocab_drawn"] == len(tok) - 999
    assert len(np.unique(body)) > 20000                         # uniform over the ordinary vocabulary


def test_repeated_set_one_random_ordinary_token_per_sequence(minilm):
    tok = minilm.tokenizer
    ps = prompt_set(tok, "repeated", max_prompts=8, max_tokens=T, seed=0)
    rows = np.array(ps.token_ids)
    assert rows.shape == (8, T)
    assert (rows[:, 0] == tok.cls_token_id).all() and (rows[:, -1] == tok.sep_token_id).all()
    body = rows[:, 1:-1]
    assert (body == body[:, :1]).all()                          # one token repeated within a sequence
    assert len(set(body[:, 0].tolist())) == 8                   # a different token per sequence
    assert not set(body[:, 0].tolist()) & _minilm_vocab_specials(minilm)
    assert prompt_set(tok, "repeated", max_prompts=8, max_tokens=T, seed=0).token_ids == ps.token_ids
    assert prompt_set(tok, "repeated", max_prompts=8, max_tokens=T, seed=1).token_ids != ps.token_ids


def test_random_set_excludes_smollm2_added_special_tokens(smol):
    tok = smol.tokenizer
    table = json.loads(tok.backend_tokenizer.to_str())["added_tokens"]
    special = {t["id"] for t in table if t["special"]}
    assert len(special) > len(set(tok.all_special_ids))         # <repo_name> etc. are not in all_special_ids
    ps = prompt_set(tok, "random", max_prompts=20, max_tokens=3000, seed=0)
    assert ps.protocol["excluded_ids"] == len(special) and ps.protocol["first_token"] is None
    assert not np.isin(np.array(ps.token_ids), sorted(special)).any()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_token_sets_start_with_bos_only_where_the_tokenizer_adds_one(kind):
    tok = toy_tokenizer(kind)
    for name in ("random", "repeated"):
        ps = prompt_set(tok, name, max_prompts=5, max_tokens=12, seed=0)
        rows = np.array(ps.token_ids)
        assert rows.shape == (5, 12)
        if kind == "llama":
            assert (rows[:, 0] == tok.convert_tokens_to_ids("<s>")).all() and ps.protocol["first_token"] == "<s>"
            assert not np.isin(rows[:, 1:], [0, 1, 2]).any() and ps.protocol["excluded_ids"] == 3
        else:
            assert ps.protocol["first_token"] is None and ps.protocol["excluded_ids"] == 1
            assert not (rows == 0).any()


def test_token_set_too_short_for_the_special_tokens(minilm):
    with pytest.raises(UserError, match="max_tokens must be at least 3"):
        prompt_set(minilm.tokenizer, "random", max_prompts=2, max_tokens=2)
    with pytest.raises(UserError, match="unknown prompt set"):
        prompt_set(minilm.tokenizer, "shuffled", max_prompts=2, max_tokens=8)


# ---------------------------------------------------------------- the job records the protocol

def test_job_natural_inputs_are_T_tokens_and_meta_records_the_protocol(tmp_path, minilm):
    from workbench.job import JobConfig, trace_job

    out, _ = trace_job(JobConfig(model="minilm-l6", out=tmp_path / "run", prompts="natural", max_prompts=30,
                                 max_tokens=T, analyses=["entropy"], save_patterns=0, quiet=True, seed=5))
    meta = json.loads((out / "meta.json").read_text())
    items = meta["inputs"]["items"]
    assert [len(it["tokens"]["self"]) for it in items] == [T] * 30  # today a third are shorter
    assert all(it["tokens"]["self"][0] == "[CLS]" and it["tokens"]["self"][-1] == "[SEP]" for it in items)
    proto = items[0]["protocol"]
    assert proto["set"] == "natural" and proto["tokens"] == T and proto["seed"] == 5
    assert proto["special_tokens"] == {"prefix": ["[CLS]"], "suffix": ["[SEP]"]} and "Gu et al. 2024" in proto["method"]


def test_job_repeated_set_follows_gu_et_al(tmp_path, minilm):
    from workbench.job import JobConfig, trace_job

    out, _ = trace_job(JobConfig(model="minilm-l6", out=tmp_path / "run", prompts="repeated", max_prompts=4,
                                 max_tokens=16, analyses=["entropy"], save_patterns=0, quiet=True))
    items = json.loads((out / "meta.json").read_text())["inputs"]["items"]
    tokens = [it["tokens"]["self"] for it in items]
    assert all(t[0] == "[CLS]" and t[-1] == "[SEP]" and len(set(t[1:-1])) == 1 for t in tokens)
    assert len({t[1] for t in tokens}) == 4                      # today: " the" in every sequence
    assert items[0]["protocol"]["excluded_ids"] == len(_minilm_vocab_specials(minilm))
