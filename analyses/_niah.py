"""Needle-in-a-haystack prompts and greedy decoding for causal LMs (private helper).

Haystack: the built-in natural passages (``workbench.inputs.natural_passages``, seeded),
cut at sentence boundaries. Needles: sentences written for this project, each with a
several-token answer that must be copied from the context. The needle is inserted at a
sentence boundary at relative depth ``depth`` (0 = start, 1 = end) of the haystack; the
prompt ends with a question and the needle's own lead-in, and the model completes it
greedily (no chat template). A test counts as retrieved when the ROUGE-1 recall of the
output against the answer exceeds 0.5 (Wu et al. 2024).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from workbench.batch import Batch
from workbench.errors import UserError


@dataclass(frozen=True)
class Needle:
    lead: str        # the sentence up to the answer, e.g. "The secret ingredient ... is"
    answer: str      # what must be copied, e.g. "smoked paprika with lemon zest"
    question: str

    @property
    def sentence(self) -> str:
        return f"{self.lead} {self.answer}."


NEEDLES = (
    Needle("The name of the robot that repairs the library clocks is", "Tobias Copperfield",
           "What is the name of the robot that repairs the library clocks?"),
    Needle("The secret ingredient in Grandma Rosa's soup is", "smoked paprika with lemon zest",
           "What is the secret ingredient in Grandma Rosa's soup?"),
    Needle("Captain Mora buried her treasure", "under the third olive tree near the chapel",
           "Where did Captain Mora bury her treasure?"),
    Needle("The password for the old lighthouse door is", "purple elephant seventeen",
           "What is the password for the old lighthouse door?"),
)


@dataclass
class NiahPrompt:
    ids: list[int]
    span: tuple[int, int]          # token positions [start, end) of the answer in ids
    needle: Needle
    length: int
    depth: float


_SENT = re.compile(r"(?<=[.!?])\s+")


def _haystack_sentences(n_passages: int = 60, seed: int = 0) -> list[str]:
    from workbench.inputs import natural_passages

    out = []
    for p in natural_passages(n_passages, seed=seed):
        out += [s for s in _SENT.split(p) if s]
    return out


def _fill(pool: list[tuple[str, int]], budget: int) -> list[str]:
    """Sentences of ``pool`` ((text, tokens) pairs, taken in order, the pool repeated as often
    as needed) whose tokens sum to at most ``budget``: a sentence that does not fit is skipped
    and shorter ones after it are still taken, so the haystack stops short of ``budget`` by
    less than the shortest sentence (not by up to the longest one)."""
    shortest = min(k for _, k in pool)
    hay, used = [], 0
    while budget - used >= shortest:
        took = False
        for s, k in pool:
            if used + k <= budget:
                hay.append(s)
                used += k
                took = True
            if budget - used < shortest:
                break
        if not took:
            break
    return hay


def build_prompt(tokenizer, needle: Needle, length: int, depth: float, *, max_positions: int,
                 max_new_tokens: int = 16, seed: int = 0) -> NiahPrompt:
    """A prompt of ``length`` tokens or a few fewer (less than the haystack's shortest
    sentence, 6 tokens with SmolLM2's tokenizer) with the needle at ``depth``.

    The haystack's token budget is corrected against the tokenised prompt (sentences joined
    with spaces, the needle, the question, special tokens) until the prompt has the most
    tokens it can have without exceeding ``length``.

    Raises UserError (a ValueError) when ``length + max_new_tokens`` exceeds the model's
    window or ``length`` is too short for a haystack; ValueError when ``depth`` is outside
    [0, 1] or when the answer's tokens are not found in the tokenised prompt (tokenisation
    merged it with its neighbours).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if length + max_new_tokens > max_positions:
        raise UserError(f"NIAH context length {length} + {max_new_tokens} new tokens exceeds the model's window of "
                        f"{max_positions} positions; use lengths of at most {max_positions - max_new_tokens}")
    tail = f"\n\nQuestion: {needle.question}\nAnswer: {needle.lead}"
    n = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    budget = length - n(tail) - n(" " + needle.sentence)
    pool = [(s, n(" " + s)) for s in _haystack_sentences(seed=seed)]
    shortest = min(k for _, k in pool)
    if budget < max(8, shortest):
        raise UserError(f"NIAH context length {length} is too short for a haystack; use lengths of at least "
                        f"{length - budget + max(8, shortest)}")
    best, tried = None, set()
    while budget not in tried and len(tried) < 8:          # the budget moves by the tokens the prompt is off
        tried.add(budget)
        hay = _fill(pool, budget)
        at = int(round(depth * len(hay)))
        ids = tokenizer(" ".join(hay[:at] + [needle.sentence] + hay[at:]) + tail, add_special_tokens=True)["input_ids"]
        if len(ids) <= length and (best is None or len(ids) > len(best)):
            best = ids
        if len(ids) == length:
            break
        budget += length - len(ids)
    if best is None:
        raise UserError(f"NIAH context length {length} is too short for a haystack; use a longer length")
    ids = best
    ans = tokenizer(" " + needle.answer, add_special_tokens=False)["input_ids"]
    start = _find(ids, ans)
    if start is None:
        raise ValueError(f"needle answer {needle.answer!r} (tokens {ans}) is not found in the tokenised prompt; "
                         "tokenisation merged it with neighbouring text: reword the needle")
    return NiahPrompt(ids, (start, start + len(ans)), needle, len(ids), depth)


def _find(seq: list[int], sub: list[int]) -> int | None:
    for i in range(len(seq) - len(sub), -1, -1):
        if seq[i:i + len(sub)] == sub:
            return i
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge1_recall(output: str, reference: str) -> float:
    """ROUGE-1 recall: fraction of reference words (with multiplicity) found in the output."""
    ref, out = _words(reference), _words(output)
    if not ref:
        return 0.0
    pool = {w: out.count(w) for w in set(out)}
    hit = 0
    for w in ref:
        if pool.get(w, 0) > 0:
            hit += 1
            pool[w] -= 1
    return hit / len(ref)


# Prefill chunk budget when an edit needs attention probabilities (``Ablate(kind="uniform")``,
# ``EditPattern``): the tracer then computes a site's float32 probabilities [head, chunk,
# keys] for the chunk of prompt rows being prefilled, so the prompt goes through the KV cache
# in chunks of about this many bytes of probabilities (memory linear in the prompt length).
PREFILL_BLOCK_BYTES = 64 << 20


@dataclass
class Decoded:
    """A greedy continuation.

    Attributes:
        tokens: the new token ids (eos not included).
        argmax: {(stream, layer): long [head, step]} the argmax key of each head's attention
            row at the query that emitted each new token (None unless asked for).
        rows: one {(stream, layer): float32 [head, key_pos]} per step, the attention rows
            themselves (key_pos = prompt length + step; None unless asked for).
    """

    tokens: list[int]
    argmax: dict | None = None
    rows: list | None = None


def _needs_probs(edits) -> bool:
    from workbench.capture import Ablate, EditPattern

    return any(isinstance(e, EditPattern) or (isinstance(e, Ablate) and e.kind == "uniform") for e in edits)


def prefill_chunk(model, n_tokens: int, edits=()) -> int:
    """Prompt rows per prefill forward: all of them (plain SDPA, no probabilities) unless an
    edit needs probabilities, then about ``PREFILL_BLOCK_BYTES`` of float32 [head, rows, keys]."""
    if not _needs_probs(edits):
        return max(1, n_tokens)
    heads = max(s.n_heads for s in model.sites)
    return max(1, PREFILL_BLOCK_BYTES // (heads * max(1, n_tokens) * 4))


@torch.no_grad()
def greedy(model, ids: list[int], max_new_tokens: int, edits=(), stop: str = "\n.", argmax: bool = False,
           rows: bool = False) -> Decoded:
    """Greedy continuation of ``ids`` with the HF KV cache, through ``model.run`` so that
    ``edits`` (e.g. ``Ablate(..., kind="uniform")``) act on the prompt and at every step.
    Stops at eos or after a token containing a character of ``stop``.

    As Wu et al. 2024's code does, the prompt but its last token is prefilled into the KV
    cache with no capture (transformers' SDPA: no T x T pattern; in chunks of
    ``prefill_chunk`` rows when an edit needs probabilities), then decoding starts from the
    last prompt token. Only the decode steps capture attention (``Pattern`` of the ``self``
    sites with one query row: [head, 1, keys] per site and step, HF's eager probabilities),
    so memory is linear in the prompt length (the KV cache plus one row per head).

    ``argmax=True`` fills ``Decoded.argmax``, ``rows=True`` keeps the rows (``Decoded.rows``).
    Raises ValueError for an empty prompt.
    """
    from workbench.capture import Pattern

    if not ids:
        raise ValueError("the prompt has no tokens")
    tok = model.tokenizer
    eos = tok.eos_token_id
    past = None
    n = len(ids) - 1
    step = prefill_chunk(model, n, edits)
    for a in range(0, n, step):
        past = _forward(model, ids[a:min(a + step, n)], past, edits, []).output.past_key_values
    capture = [Pattern("self")] if argmax or rows else []
    out, arg, kept, cur = [], {}, [], ids[-1]
    for _ in range(max_new_tokens):
        tr = _forward(model, [cur], past, edits, capture)
        past = tr.output.past_key_values
        nxt = int(tr.logits[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
        step_rows = {k: p[0, :, -1] for k, p in tr.pattern.items()}          # [head, key_pos]
        for k, r in step_rows.items():
            arg.setdefault(k, []).append(r.argmax(-1))
        if rows:
            kept.append(step_rows)
        if any(c in tok.decode([nxt]) for c in stop):
            break
        cur = nxt
    return Decoded(out, {k: torch.stack(v, -1) for k, v in arg.items()} if argmax else None,
                   kept if rows else None)


def _forward(model, ids: list[int], past, edits, capture):
    inputs = {"input_ids": torch.tensor([ids]), "use_cache": True, "logits_to_keep": 1}
    if past is not None:
        inputs["past_key_values"] = past
    return model.run(Batch(inputs, {}, [{}]), capture=capture, edits=list(edits))
