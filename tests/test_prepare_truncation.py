"""Model.prepare cuts inputs to max_tokens with the tokenizer's own truncation, keeping its
special tokens: checked against each tokenizer's uncut encoding, cut by hand."""
from __future__ import annotations

import pytest
from tiny import tiny_hf
from toy_tokenizers import toy_tokenizer

import workbench
from workbench.errors import UserError


@pytest.fixture(scope="module")
def minilm(builtin):
    return builtin("minilm-l6")


# ---------------------------------------------------------------- Model.prepare truncation

LONG = "the quick brown fox jumps over the lazy dog and keeps running far away " * 6


def test_prepare_truncation_keeps_sep(minilm):
    tok = minilm.tokenizer
    full = tok(LONG)["input_ids"]
    batch = minilm.prepare([LONG, "a short one"], max_tokens=8)
    assert batch.model_inputs["input_ids"][0].tolist() == full[:7] + [tok.sep_token_id]
    assert batch.items[0]["tokens"]["self"][-1] == "[SEP]" and batch.items[0]["truncated_from"] == len(full)
    assert "truncated_from" not in batch.items[1]
    by_ids = minilm.prepare(token_ids=[full], max_tokens=8)      # ids ending in [SEP]: kept too
    assert by_ids.model_inputs["input_ids"][0].tolist() == full[:7] + [tok.sep_token_id]
    with pytest.raises(UserError, match="max_tokens must be an integer >= 3"):
        minilm.prepare([LONG], max_tokens=2)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prepare_truncation_of_gpt2_and_llama_tokenizers(kind):
    tok = toy_tokenizer(kind)
    model = workbench.wrap(tiny_hf(kind), tokenizer=tok)
    text = "abc def ghi jkl"
    full = tok(text)["input_ids"]
    got = model.prepare([text], max_tokens=5).model_inputs["input_ids"][0].tolist()
    assert got == full[:5]                                       # BOS (Llama) stays first; nothing after
    assert (got[0] == tok.convert_tokens_to_ids("<s>")) == (kind == "llama")
