"""The three prompt sets of Gu et al. 2024 at an exact length, with their protocol recorded.

Gu et al. 2024, "When Attention Sink Emerges in Language Models" (``shared/METHODS.md``,
"Input protocols"), measure first-token sinks on sequences of exactly T tokens (T = 64):
natural text, uniformly random ordinary tokens, and one random ordinary token repeated,
a different token per sequence, with the model's BOS (or [CLS]) first when the model is
normally run with one. Special and unused ids are never drawn.

``prompt_set`` builds those sets for a tokenizer: every input has exactly ``max_tokens``
tokens after tokenisation, the tokenizer's own special tokens included. Which special
tokens a model "is normally run with" is what its tokenizer adds to a text
(``special_frame``): BERT ``[CLS] ... [SEP]``, Llama ``<s> ...``; GPT-2 and SmolLM2 add
none. The protocol (set, length, special tokens, excluded ids, seed, source) is returned
with the set and recorded in each prepared input's ``protocol`` field.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np

from ..errors import UserError, user_error
from ._vocab import ordinary_ids, special_frame
from .prompts import PROMPT_SETS, _passage_pool

__all__ = ["PromptSet", "prompt_set", "natural_texts", "GU_2024"]

GU_2024 = "Gu et al. 2024, When Attention Sink Emerges in Language Models"

# natural text pool: every stdlib prose passage of 200-1200 characters (natural_passages' default)
_MIN_CHARS, _MAX_CHARS = 200, 1200


@dataclass(frozen=True)
class PromptSet:
    """A prompt set: ``texts`` (natural; each tokenises to at least ``protocol["tokens"]``
    tokens and is cut to exactly that many by ``Model.prepare``) or ``token_ids`` (random,
    repeated; each exactly ``protocol["tokens"]`` ids, special tokens included), and the
    ``protocol`` dict describing how it was made; ``passages_joined``: per natural text, how
    many passages it joins."""

    kind: str
    texts: list[str] | None
    token_ids: list[list[int]] | None
    protocol: dict
    passages_joined: list[int] | None = None

    def prepare(self, model):
        """The set as a ``Batch`` for ``model`` (a ``workbench.Model`` with this set's
        tokenizer): every input exactly ``protocol["tokens"]`` tokens, each item carrying
        ``protocol`` (and ``passages_joined`` for natural text). Raises RuntimeError if an
        input comes out at another length (a bug)."""
        length = self.protocol["tokens"]
        if self.texts is not None:
            batch = model.prepare(self.texts, max_tokens=length)
        else:
            batch = model.prepare(token_ids=self.token_ids)
        got = [int(n) for n in batch.model_inputs["attention_mask"].sum(1)]
        if any(n != length for n in got):
            raise RuntimeError(f"{self.kind} prompt set came out at {sorted(set(got))} tokens, not {length}")
        for i, item in enumerate(batch.items):
            item["protocol"] = dict(self.protocol)
            if self.passages_joined is not None:
                item["passages_joined"] = self.passages_joined[i]
        return batch


def _frame_names(tokenizer, ids: list[int]) -> list[str]:
    return [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))]


def _base_protocol(tokenizer, kind: str, max_tokens: int, seed: int) -> tuple[dict, list[int], list[int]]:
    prefix, suffix = special_frame(tokenizer)
    if max_tokens < len(prefix) + len(suffix) + 1:
        raise user_error("{max_tokens} must be at least {k} for this tokenizer (it adds {n} special "
                         "tokens), got {v}", k=len(prefix) + len(suffix) + 1, n=len(prefix) + len(suffix),
                         v=max_tokens)
    names = _frame_names(tokenizer, prefix + suffix)
    protocol = {
        "set": kind, "method": GU_2024, "tokens": int(max_tokens), "seed": int(seed),
        "first_token": names[0] if prefix else None,
        "special_tokens": {"prefix": names[:len(prefix)], "suffix": names[len(prefix):]},
    }
    return protocol, prefix, suffix


def natural_texts(tokenizer, n: int, max_tokens: int, *, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` natural-prose texts that each tokenise to at least ``max_tokens`` tokens
    (special tokens included), and how many passages each joins.

    Passages of ``natural_passages`` (stdlib docstrings, 200-1200 characters) are taken in
    the order of a numpy ``default_rng(seed)`` permutation; consecutive passages are joined
    with a space until the tokenizer gives at least ``max_tokens`` tokens, and each passage
    is used once. A smaller ``n`` with the same seed gives a prefix of a larger one.

    Raises:
        UserError: if the bundled text cannot give ``n`` such texts (the message gives how
            many it can).
    """
    pool = _passage_pool(_MIN_CHARS, _MAX_CHARS)
    order = np.random.default_rng(seed).permutation(len(pool))
    frame = sum(len(x) for x in special_frame(tokenizer))
    texts: list[str] = []
    joined: list[int] = []
    current: list[str] = []
    estimate = frame
    for i in order:
        if len(texts) == n:
            break
        current.append(pool[i])
        estimate += len(tokenizer(pool[i], add_special_tokens=False, verbose=False)["input_ids"])
        if estimate < max_tokens:
            continue
        text = " ".join(current)
        if len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]) >= max_tokens:
            texts.append(text)
            joined.append(len(current))
            current, estimate = [], frame
    if len(texts) < n:
        raise user_error("the bundled natural text gives only {have} inputs of {t} tokens with this tokenizer, "
                         "{n} requested; lower {max_prompts} or {max_tokens}, or give a prompt file",
                         have=len(texts), t=max_tokens, n=n)
    return texts, joined


def _random_bodies(rng, candidates: np.ndarray, kind: str, n: int, length: int) -> np.ndarray:
    if kind == "random":
        return candidates[rng.integers(0, candidates.size, size=(n, length))]
    if n > candidates.size:
        raise user_error("{max_prompts} = {n} repeated-token sequences need {n} different tokens; the tokenizer "
                         "has {c} ordinary ones", n=n, c=candidates.size)
    tokens = rng.choice(candidates, size=n, replace=False)
    return np.repeat(tokens[:, None], length, axis=1)


def prompt_set(tokenizer, kind: str, *, max_prompts: int, max_tokens: int, seed: int = 0) -> PromptSet:
    """The ``kind`` set (``natural``, ``random`` or ``repeated``) of ``max_prompts`` inputs of
    exactly ``max_tokens`` tokens each, after Gu et al. 2024 (module docstring).

    - natural: ``natural_texts``; ``Model.prepare(texts, max_tokens=...)`` cuts each to
      ``max_tokens`` with the tokenizer's truncation, keeping its special tokens.
    - random: the tokenizer's special tokens around ``max_tokens - #special`` ids drawn
      uniformly, with replacement, from ``ordinary_ids`` (numpy ``default_rng(seed)``).
    - repeated: the special tokens around one ordinary id repeated; the id is drawn per
      sequence without replacement (a different token per sequence).

    ``protocol``: ``set``, ``method`` (the paper), ``tokens`` (T), ``seed``,
    ``first_token`` (BOS/[CLS] token string, None when the tokenizer adds none),
    ``special_tokens`` {prefix, suffix}; random/repeated add ``vocab_drawn`` (ordinary ids
    drawn from) and ``excluded_ids`` (special and unused ids never drawn); natural adds
    ``source``, and ``passages_joined`` (how many passages each input joins).

    Raises:
        UserError: for an unknown ``kind``, no tokenizer, ``max_prompts`` < 1,
            ``max_tokens`` too small to hold the special tokens and one more token, or more
            than the bundled text (natural) or the vocabulary (repeated) can give.
    """
    if kind not in PROMPT_SETS:
        raise UserError(f"unknown prompt set {kind!r}; choose from {', '.join(PROMPT_SETS)}")
    if tokenizer is None:
        raise UserError("this model has no tokenizer; prompt sets need one (pass token ids to Model.prepare)")
    if max_prompts < 1:
        raise user_error("{max_prompts} must be >= 1, got {v}", v=max_prompts)
    protocol, prefix, suffix = _base_protocol(tokenizer, kind, max_tokens, seed)
    if kind == "natural":
        texts, joined = natural_texts(tokenizer, max_prompts, max_tokens, seed=seed)
        protocol["source"] = (f"docstrings of Python {platform.python_version()} standard-library modules, "
                              f"consecutive passages joined until {max_tokens} tokens, then truncated")
        return PromptSet(kind, texts, None, protocol, joined)
    candidates, n_excluded = ordinary_ids(tokenizer)
    if candidates.size == 0:
        raise UserError("the tokenizer has no ordinary (non-special, used) token ids to draw from")
    body = max_tokens - len(prefix) - len(suffix)
    rows = _random_bodies(np.random.default_rng(seed), candidates, kind, max_prompts, body)
    protocol["vocab_drawn"] = int(candidates.size)
    protocol["excluded_ids"] = int(n_excluded)
    return PromptSet(kind, None, [prefix + r.tolist() + suffix for r in rows], protocol)
