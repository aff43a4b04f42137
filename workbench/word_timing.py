"""Whisper-style word timing from cross-attention (numpy + SciPy only, no torch).

Shared by the alignment analysis (``analyses/alignment.py``) and the dashboard's word
alignment (``app/alignment.py``), so both time words the same way. Follows OpenAI
Whisper's ``timing.py`` (Radford et al. 2022, "Robust Speech Recognition via Large-Scale
Weak Supervision", word-level timestamps): z-score each head's ``[token, frame]``
cross-attention along tokens, median-filter along frames (width 7), average the chosen
heads, and find the monotone token-to-frame path by dynamic time warping on the negated
matrix. Encoder frames are 50 per second (20 ms).

``word_timestamps`` turns that path into word times the way ``timing.find_alignment`` and
``add_word_timestamps`` do: the matrix has one row per text token *plus the row that
predicts end-of-text*, a word starts where the path enters its first token's row and ends
where it enters the next word's (or end-of-text's) row, so the last word does not run to
the end of the clip; punctuation tokens are words of their own while timing (they absorb
pauses) and are then merged into their neighbours, keeping the neighbour's times; words
at sentence ends longer than twice the median word duration (median capped at 0.7 s) are
cut, and a long first word after leading silence is cut to that length, so the first word
does not start at 0 s because the path must start there. Not done here: Whisper's use of
segment-level timestamp tokens (the workbench decodes without timestamps). Added here, in
their place (Whisper's own comment: "a better segmentation algorithm based on VAD should be
able to replace this"): when ``speech`` bounds are given (``speech_bounds``: first and last
20 ms frame whose RMS is within 35 dB of the loudest), no word starts before the speech
starts or ends after it ends.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from .schema import SAMPLE_RATE, WHISPER_FRAMES_PER_SECOND

FPS = float(WHISPER_FRAMES_PER_SECOND)   # Whisper encoder frames per second

# OpenAI's published alignment heads (openai/whisper v20231106 ``_ALIGNMENT_HEADS``, base85
# bit masks decoded to (decoder layer, head)), by model size.
OPENAI_ALIGNMENT_HEADS = {
    "tiny.en": ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),
    "tiny": ((2, 2), (3, 0), (3, 2), (3, 3), (3, 4), (3, 5)),
    "base.en": ((3, 3), (4, 7), (5, 1), (5, 5), (5, 7)),
    "base": ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),
}


def published_heads(model_name: str) -> tuple[tuple[int, int], ...] | None:
    """OpenAI's alignment heads for a Whisper model named like ``whisper-tiny.en`` or
    ``openai/whisper-base``; None for other models."""
    if "whisper-" not in model_name:
        return None
    return OPENAI_ALIGNMENT_HEADS.get(model_name.rsplit("whisper-", 1)[-1])


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whisper's DTW (``timing.dtw_cpu`` + backtrace) on ``cost`` [tokens, frames]:
    returns (token index, frame index) along the monotone path from (0, 0) to (N-1, M-1)."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    tr = -np.ones((n + 1, m + 1), dtype=np.int8)
    acc[0, 0] = 0.0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            acc[i, j] = cost[i - 1, j - 1] + c
            tr[i, j] = t
    tr[0, :], tr[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = tr[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    p = np.array(path[::-1])
    keep = (p[:, 0] >= 0) & (p[:, 1] >= 0)
    return p[keep, 0], p[keep, 1]


def normalise(att: np.ndarray, width: int = 7) -> np.ndarray:
    """z-score along tokens (axis -2), then median filter along frames (axis -1), as Whisper."""
    from scipy.ndimage import median_filter

    mean, std = att.mean(-2, keepdims=True), att.std(-2, keepdims=True)
    z = (att - mean) / np.maximum(std, 1e-10)
    size = [1] * (z.ndim - 1) + [width]
    return median_filter(z, size=size, mode="nearest")


def token_segments(matrix: np.ndarray) -> np.ndarray:
    """[tokens, 2] (start frame, end frame) of each token along the DTW path of ``matrix``."""
    ti, fi = dtw(-matrix.astype(np.float64))
    n = matrix.shape[0]
    seg = np.zeros((n, 2))
    jumps = np.r_[True, np.diff(ti) > 0]
    starts = fi[jumps].astype(float)
    seg[:, 0] = starts[:n]
    seg[:, 1] = np.r_[starts[1:n], matrix.shape[1]]
    return seg


PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"


@dataclass
class WordTime:
    """A word (as decoded, leading space kept) with its start and end in seconds."""

    word: str
    start: float
    end: float


def split_words(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Whisper's ``split_tokens_on_spaces`` on decoded token strings: a token that starts
    with a space, or is punctuation only, starts a new word. Returns (word, token indices)."""
    out: list[tuple[str, list[int]]] = []
    for i, t in enumerate(tokens):
        if not out or t.startswith(" ") or t.strip() in string.punctuation:
            out.append((t, [i]))
        else:
            out[-1] = (out[-1][0] + t, out[-1][1] + [i])
    return out


def _merge_punctuation(words: list[WordTime]) -> set[int]:
    """Whisper's ``merge_punctuations``: prepended marks join the next word, appended marks
    the previous one; the merged word keeps its own times. Returns the merged-away indices."""
    gone = set()
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        prev, nxt = words[i], words[j]
        if prev.word.startswith(" ") and prev.word.strip() in PREPEND_PUNCTUATION:
            nxt.word, prev.word = prev.word + nxt.word, ""
            gone.add(i)
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        prev, nxt = words[i], words[j]
        if j in gone:
            j += 1
            continue
        if not prev.word.endswith(" ") and nxt.word in APPEND_PUNCTUATION:
            prev.word, nxt.word = prev.word + nxt.word, ""
            gone.add(j)
        else:
            i = j
        j += 1
    return gone


def speech_bounds(wave: np.ndarray, rate: int = SAMPLE_RATE, frame_s: float = 0.02, rel_db: float = -35.0) -> tuple[float, float]:
    """(start_s, end_s) of the speech in ``wave`` [samples]: from the first to the end of the
    last ``frame_s`` frame whose RMS is within ``rel_db`` dB of the loudest frame (a plain
    energy detector; (0, duration) for silence)."""
    hop = max(1, int(round(frame_s * rate)))
    n = len(wave) // hop
    if n == 0:
        return 0.0, len(wave) / rate
    rms = np.sqrt(np.mean(np.square(wave[: n * hop].astype(np.float64).reshape(n, hop)), axis=1))
    loud = np.nonzero(rms > rms.max() * 10 ** (rel_db / 20))[0] if rms.max() > 0 else []
    if len(loud) == 0:
        return 0.0, len(wave) / rate
    return loud[0] * hop / rate, min(len(wave), (loud[-1] + 1) * hop) / rate


def word_timestamps(matrix: np.ndarray, tokens: list[str], owner: list[int] | None = None,
                    fps: float = FPS, speech: tuple[float, float] | None = None) -> list[WordTime]:
    """Word times from ``matrix`` [n_tokens + 1, frames] (z-scored, filtered, head-averaged
    cross-attention: the rows that predict each of the n text tokens, then the row that
    predicts end-of-text), following OpenAI Whisper's ``timing.py`` (see module docstring).

    ``tokens``: the n decoded text tokens; ``owner``: word index per token, to impose a
    grouping (default: ``split_words``); ``speech``: (start_s, end_s) of the speech in the
    clip (``speech_bounds``), which word times are kept within. Returns one ``WordTime``
    per word, in order.
    Raises ValueError when the matrix does not have one more row than ``tokens``."""
    n = len(tokens)
    if matrix.shape[0] != n + 1:
        raise ValueError(f"matrix has {matrix.shape[0]} rows; word_timestamps needs {n} token rows + 1 end-of-text row")
    if n == 0:
        return []
    ti, fi = dtw(-matrix.astype(np.float64))
    jump = fi[np.r_[True, np.diff(ti) > 0]] / fps                    # [n + 1] time the path enters each row
    if owner is None:
        groups = split_words(tokens)
    else:
        groups = [("".join(tokens[i] for i in range(n) if owner[i] == w), [i for i in range(n) if owner[i] == w])
                  for w in range(max(owner) + 1)]
    bounds = [g[1][0] for g in groups] + [n]
    words = [WordTime(text, float(jump[a]), float(jump[b])) for (text, _), a, b in zip(groups, bounds[:-1], bounds[1:])]
    dur = np.array([w.end - w.start for w in words])
    dur = dur[dur > 0]
    median = min(0.7, float(np.median(dur))) if len(dur) else 0.0
    longest = 2 * median
    if len(dur):
        for i in range(1, len(words)):          # words at sentence boundaries absorb pauses: cut them
            if words[i].end - words[i].start > longest:
                if words[i].word and words[i].word in SENTENCE_END:
                    words[i].end = words[i].start + longest
                elif words[i - 1].word and words[i - 1].word in SENTENCE_END:
                    words[i].start = words[i].end - longest
    if owner is None:
        gone = _merge_punctuation(words)
        words = [w for i, w in enumerate(words) if i not in gone]
    if words and words[0].end > 4 * median and (words[0].end - words[0].start > longest or
                                                (len(words) > 1 and words[1].end - words[0].start > 2 * longest)):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            words[0].end = words[1].start = max(words[1].end / 2, words[1].end - longest)
        words[0].start = max(0.0, words[0].end - longest)
    if speech is not None:
        lo, hi = speech
        for w in words:
            w.start, w.end = min(max(w.start, lo), hi), min(max(w.end, lo), hi)
    return words
