"""What a tokenizer adds around text, and which of its ids are ordinary tokens.

Both are read from the tokenizer itself (its own encoding of a probe word, its vocabulary
and added-token table), so they hold for any HF tokenizer: BERT's ``[CLS] ... [SEP]``,
Llama's ``<s> ...``, GPT-2's bare text.
"""
from __future__ import annotations

import re

import numpy as np

# Vocabulary entries reserved but never trained: BERT "[unused12]", Gemma "<unused3>",
# Llama 3 "<|reserved_special_token_7|>", T5 "<extra_id_5>", fairseq "madeupword0002".
UNUSED = re.compile(r"\[unused\d+\]|<unused\d+>|<\|reserved_special_token_\d+\|>|<extra_id_\d+>|madeupword\d+")

_PROBE = "hello"


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """Ids the tokenizer puts before and after a text when it adds its special tokens.

    Found by encoding a probe word with and without ``add_special_tokens``: BERT gives
    ``([CLS], [SEP])``, a Llama tokenizer that adds BOS ``([<s>], [])``, GPT-2 and SmolLM2
    ``([], [])``.

    Raises:
        ValueError: if the encoding with special tokens does not contain the one without
            (a tokenizer whose special tokens change the text's own tokens).
    """
    body = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(_PROBE, add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    raise ValueError(f"cannot find where this tokenizer puts text among its special tokens: "
                     f"{full} does not contain {body}")


def ordinary_ids(tokenizer) -> tuple[np.ndarray, int]:
    """Sorted int64 array of the vocabulary ids that are ordinary tokens, and how many of
    the tokenizer's ids were excluded.

    Excluded: ``all_special_ids``, added tokens marked special (SmolLM2's ``<repo_name>``
    and the like, which ``all_special_ids`` does not list), the ids of ``special_frame``,
    and reserved entries named like ``[unused12]`` (``UNUSED``). Only ids the tokenizer
    maps to a token are considered (``get_vocab()``), so embedding rows past the
    tokenizer's vocabulary are never drawn.
    """
    vocab = tokenizer.get_vocab()
    every = {int(i) for i in vocab.values() if 0 <= int(i) < len(tokenizer)}
    excluded = {int(i) for i in tokenizer.all_special_ids}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    excluded |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
    excluded |= {int(i) for i in sum(special_frame(tokenizer), [])}
    excluded |= {int(i) for t, i in vocab.items() if UNUSED.fullmatch(t)}
    excluded &= every
    return np.asarray(sorted(every - excluded), dtype=np.int64), len(excluded)


def truncate_ids(ids: list[int], max_tokens: int | None, suffix: list[int]) -> list[int]:
    """``ids`` cut to ``max_tokens``, keeping a trailing ``suffix`` (BERT's ``[SEP]``) when
    the sequence ends with it; the leading special tokens survive any cut that keeps them.
    ``max_tokens`` None: unchanged."""
    if max_tokens is None or len(ids) <= max_tokens:
        return list(ids)
    n = len(suffix)
    if n and n < max_tokens and list(ids[-n:]) == list(suffix):
        return list(ids[:max_tokens - n]) + list(suffix)
    return list(ids[:max_tokens])
