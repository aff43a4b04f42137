"""Prompt sets for attention analyses: natural text, random tokens, one repeated token.

The three sets follow Gu et al. 2024, "When Attention Sink Emerges in Language Models",
who measure first-token sinks on natural text, on uniformly random tokens and on a single
repeated token (see ``shared/METHODS.md``, attention sinks). Natural text is taken from the
docstrings of Python standard-library modules, so it needs no download and is the same on
every machine running the same Python version. The token-id functions here add no special
tokens (no BOS/CLS/SEP); ``sets.prompt_set`` builds the sets at an exact length with the
model's special tokens, as Gu et al. do.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import warnings
from pathlib import Path

import numpy as np

from ._vocab import ordinary_ids

__all__ = [
    "PROMPT_SETS",
    "natural_passages",
    "random_token_ids",
    "repeated_token_ids",
    "read_prompt_file",
]

PROMPT_SETS = ("natural", "random", "repeated")

# Pure-prose-rich standard-library modules whose docstrings do not depend on the platform.
# Sorted; each contributes its own docstring, then those of its public classes, functions
# and (for classes) methods, in name order.
_DOC_MODULES = (
    "abc", "argparse", "bisect", "calendar", "cmd", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email.message", "enum", "fnmatch", "fractions", "functools", "getopt",
    "gettext", "graphlib", "gzip", "heapq", "hmac", "http.client", "inspect", "ipaddress",
    "itertools", "json", "logging", "mailbox", "numbers", "optparse", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "smtplib", "statistics",
    "string", "tarfile", "textwrap", "threading", "timeit", "traceback", "types", "typing",
    "unittest", "urllib.parse", "uuid", "warnings", "wave", "weakref", "zipfile",
)

# A line that marks code, a doctest, a table or markup rather than prose.
_CODE_LINE = re.compile(
    r"^\s*(>>>|\.\.\.|\$ |%|#|def |class |import |from \S+ import|@|[{}\[\]|]|[-=+*~^]{3,}|"
    r"[-*] |\d+[.)] |:\w+:)"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z][a-z'-]*[,.;:!?)]?")


def _is_prose(paragraph: str) -> bool:
    """True if a docstring paragraph reads as English prose (not code, tables or lists)."""
    lines = paragraph.splitlines()
    if any(line.startswith((" ", "\t")) or _CODE_LINE.match(line) for line in lines):
        return False
    text = " ".join(paragraph.split())
    words = text.split()
    if len(words) < 8 or not text.endswith((".", "!", "?", ")")) or text.endswith("::"):
        return False
    if sum(c.isalpha() or c.isspace() for c in text) / len(text) < 0.85:
        return False
    return sum(bool(_WORD.fullmatch(w)) for w in words) / len(words) >= 0.7


def _doc_objects():
    """Yield (qualified name, object) for the docstring sources, in a fixed order."""
    for mod_name in _DOC_MODULES:
        try:
            module = importlib.import_module(mod_name)
        except ImportError:  # a stripped-down Python; the pool is just smaller
            continue
        yield mod_name, module
        members = vars(module)
        for name in sorted(members):
            obj = members[name]
            if name.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            yield f"{mod_name}.{name}", obj
            if inspect.isclass(obj):
                for attr in sorted(vars(obj)):
                    if not attr.startswith("_") and inspect.isfunction(vars(obj)[attr]):
                        yield f"{mod_name}.{name}.{attr}", vars(obj)[attr]


def _pack(sentences: list[str], min_chars: int, max_chars: int) -> list[str]:
    """Greedily join consecutive sentences into chunks of min_chars..max_chars characters."""
    chunks, current = [], ""
    for sentence in sentences:
        if len(sentence) > max_chars:  # cannot fit: close the chunk and skip the sentence
            chunks.append(current)
            current = ""
            continue
        candidate = f"{current} {sentence}" if current else sentence
        if len(candidate) <= max_chars:
            current = candidate
        else:
            chunks.append(current)
            current = sentence
    chunks.append(current)
    return [c for c in chunks if len(c) >= min_chars]


@functools.lru_cache(maxsize=8)
def _passage_pool(min_chars: int, max_chars: int) -> tuple[str, ...]:
    """All prose passages from the stdlib docstrings, deduplicated, in a fixed order."""
    pool: list[str] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, obj in _doc_objects():
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            doc = doc.replace("``", "")
            runs: list[list[str]] = [[]]
            for paragraph in re.split(r"\n[ \t]*\n", doc):
                if _is_prose(paragraph):
                    runs[-1].append(" ".join(paragraph.split()))
                elif runs[-1]:
                    runs.append([])  # code between prose breaks the passage
            for run in runs:
                sentences = _SENTENCE_END.split(" ".join(run)) if run else []
                for passage in _pack(sentences, min_chars, max_chars):
                    if passage not in seen:
                        seen.add(passage)
                        pool.append(passage)
    return tuple(pool)


def natural_passages(n: int, *, min_chars: int = 200, max_chars: int = 1200,
                     seed: int = 0) -> list[str]:
    """Return ``n`` passages of natural English prose that need no download.

    Passages come from the docstrings (``inspect.getdoc``) of a fixed, sorted list of
    Python standard-library modules and their public classes, functions and methods.
    Paragraphs that look like code, doctests (``>>>``), tables or lists are dropped; a
    passage is a run of consecutive prose paragraphs of one docstring, split at sentence
    boundaries into pieces of ``min_chars`` to ``max_chars`` characters, with whitespace
    collapsed to single spaces and reST double backquotes removed.

    The pool is deterministic given the Python version; ``seed`` selects a random
    permutation of it (numpy ``default_rng``), and the first ``n`` passages are returned,
    so a smaller ``n`` with the same seed gives a prefix of a larger one. Passages differ
    in length (about 4.4 characters per token with MiniLM's WordPiece); for inputs of
    exactly T tokens (Gu et al.'s T = 64) use ``sets.prompt_set(tokenizer, "natural", ...)``,
    which joins passages until the tokenizer gives T tokens. On Python 3.11 the pool holds
    323 passages for 200-1200 characters, 152 for 350-1200.

    Raises:
        ValueError: if ``n`` < 0, if ``min_chars`` < 1 or ``max_chars`` < ``min_chars``,
            or if fewer than ``n`` passages are available (the message gives the count;
            a Python run with ``-OO`` has no docstrings at all).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if min_chars < 1 or max_chars < min_chars:
        raise ValueError(f"need 1 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    pool = _passage_pool(int(min_chars), int(max_chars))
    if len(pool) < n:
        raise ValueError(
            f"only {len(pool)} natural passages of {min_chars}-{max_chars} characters are "
            f"available from the standard-library docstrings, {n} requested; ask for fewer "
            f"or widen min_chars/max_chars"
        )
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


def _check_counts(n: int, length: int) -> None:
    if n < 0 or length < 1:
        raise ValueError(f"need n >= 0 sequences of length >= 1 tokens, got n={n}, length={length}")


def random_token_ids(tokenizer, n: int, length: int, *, seed: int = 0) -> list[list[int]]:
    """Return ``n`` sequences of ``length`` ordinary token ids drawn uniformly.

    Ordinary ids are the tokenizer's vocabulary minus its special ids, added tokens marked
    special and reserved ``[unused12]``-style entries (``_vocab.ordinary_ids``); ids are
    drawn independently with replacement from a numpy ``default_rng(seed)``, so the result
    is deterministic given ``seed`` and tokenizer. No special tokens are added.

    Raises:
        ValueError: if ``n`` < 0, ``length`` < 1, or no ordinary id is left.
    """
    _check_counts(n, length)
    candidates, _ = ordinary_ids(tokenizer)
    if candidates.size == 0:
        raise ValueError("the tokenizer has no ordinary (non-special, used) token ids to sample from")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, candidates.size, size=(n, length))
    return candidates[picks].tolist()


def repeated_token_ids(tokenizer, n: int, length: int, *, token: str = " the") -> list[list[int]]:
    """Return ``n`` identical sequences of ``length`` copies of one token id.

    ``token`` is encoded without special tokens and must give exactly one id (the leading
    space matters for BPE tokenizers: ``" the"`` is one token in GPT-2/Llama vocabularies,
    and BERT word-piece tokenizers ignore it). No special tokens are added.

    Raises:
        ValueError: if ``n`` < 0, ``length`` < 1, or ``token`` does not encode to exactly
            one token (the message lists what it encodes to).
    """
    _check_counts(n, length)
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"token {token!r} encodes to {len(ids)} tokens {pieces} with this tokenizer; "
            f"pass a string that is exactly one token"
        )
    return [[int(ids[0])] * length for _ in range(n)]


def read_prompt_file(path: str | Path) -> list[str]:
    """Read prompts from a UTF-8 text file (one per line) or a ``.jsonl`` file.

    Text files: each line is one prompt, stripped of surrounding whitespace; blank lines
    are ignored. ``.jsonl`` files: each non-blank line is a JSON object whose ``"text"``
    field (a non-empty string) is the prompt. A UTF-8 byte-order mark is accepted.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``path`` is a directory or cannot be read, is not UTF-8 text
            (binary), holds no prompt, or (``.jsonl``) has a line that is not a JSON object
            with a non-empty string ``"text"`` field. Every message names the file.
    """
    path = Path(path)
    hint = "give a UTF-8 text file with one prompt per line, or a .jsonl file with a \"text\" field per line"
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist; {hint}")
    if path.is_dir():
        raise ValueError(f"prompt file {path} is a directory; {hint}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"prompt file {path} cannot be read ({err.strerror}); check its permissions") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt file {path} is not UTF-8 text (binary?): {err.reason} at byte "
                         f"{err.start}; {hint}") from None
    if "\x00" in text:
        raise ValueError(f"prompt file {path} contains NUL bytes and looks binary; {hint}")
    prompts: list[str] = []
    is_jsonl = path.suffix.lower() == ".jsonl"
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            prompts.append(line.strip())
            continue
        where = f"prompt file {path}, line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg}); each line must be an object "
                             f"like {{\"text\": \"...\"}}") from None
        if not isinstance(record, dict) or "text" not in record:
            raise ValueError(f"{where} has no \"text\" field; each line must be an object like "
                             f"{{\"text\": \"...\"}}")
        value = record["text"]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: \"text\" must be a non-empty string, got {value!r}")
        prompts.append(value)
    if not prompts:
        raise ValueError(f"prompt file {path} is empty (no non-blank lines); {hint}")
    return prompts
