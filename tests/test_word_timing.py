"""Whisper-style word timestamps (``workbench.word_timing.word_timestamps``) against times
worked out by hand from OpenAI Whisper's rules (``timing.find_alignment`` +
``add_word_timestamps``): the end-of-text row ends the last word, punctuation absorbs
pauses and is merged keeping the word's own times, a long first word is cut to twice the
median word duration."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.word_timing import FPS, split_words, word_timestamps


def _matrix(spans: list[tuple[int, int]], frames: int) -> np.ndarray:
    """One row per (first frame, end frame) span: 1 inside, -1 outside (no ties for DTW)."""
    m = -np.ones((len(spans), frames))
    for r, (a, b) in enumerate(spans):
        m[r, a:b] = 1.0
    return m


def test_leading_and_trailing_silence_are_not_given_to_the_first_and_last_words():
    # 1 s of silence, six 0.2 s words, then 1 s of silence that only the end-of-text row matches
    lead, word, frames = 50, 10, 50 + 6 * 10 + 50
    spans = [(lead + i * word, lead + (i + 1) * word) for i in range(6)] + [(lead + 60, frames)]
    tokens = [" one", " two", " three", " four", " five", " six"]
    got = word_timestamps(_matrix(spans, frames), tokens)
    assert [w.word for w in got] == tokens
    # the DTW path must start at frame 0, so the first word's raw start is 0 s and it lasts
    # 1.2 s; the median word is 0.2 s, so it is cut to 2 x 0.2 s before its end (1.2 s)
    assert [w.start for w in got] == pytest.approx([0.8, 1.2, 1.4, 1.6, 1.8, 2.0])
    # the last word ends where the end-of-text row starts (2.2 s), not at the clip's end (3.2 s)
    assert [w.end for w in got] == pytest.approx([1.2, 1.4, 1.6, 1.8, 2.0, 2.2])
    assert frames / FPS == pytest.approx(3.2)


def test_punctuation_absorbs_pauses_and_is_merged_keeping_the_words_times():
    tokens = [" Hello", ",", " big", " world", "."]
    assert split_words(tokens) == [(" Hello", [0]), (",", [1]), (" big", [2]), (" world", [3]), (".", [4])]
    # Hello 0-20, "," over a pause 20-40, big 40-50, world 50-60, "." over 60-80, end-of-text 80-100
    spans = [(0, 20), (20, 40), (40, 50), (50, 60), (60, 80), (80, 100)]
    got = word_timestamps(_matrix(spans, 100), tokens)
    assert [w.word for w in got] == [" Hello,", " big", " world."]
    assert [w.start for w in got] == pytest.approx([0.0, 0.8, 1.0])
    assert [w.end for w in got] == pytest.approx([0.4, 1.0, 1.2])      # not 0.8 / 1.6: the marks' pauses are dropped


def test_imposed_grouping_and_bad_shapes():
    tokens = [" Stel", "la", " runs"]
    spans = [(10, 20), (20, 30), (30, 40), (40, 50)]
    got = word_timestamps(_matrix(spans, 50), tokens, owner=[0, 0, 1])
    assert [w.word for w in got] == [" Stella", " runs"]
    assert [w.start for w in got] == pytest.approx([0.0, 0.6]) and [w.end for w in got] == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="end-of-text row"):
        word_timestamps(_matrix(spans[:3], 50), tokens)
    assert word_timestamps(np.zeros((1, 10)), []) == []
