"""Speech with exactly known word times, and Whisper token helpers (private).

``synth_words`` synthesises each word separately with espeak-ng, trims each word's own
leading/trailing silence (samples below 2% of the word's peak), and concatenates the words
with ``gap_s`` seconds of silence (plus ``lead_s`` before the first word), so every word's
start and end time in seconds is known exactly by construction.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from workbench.errors import UserError
from workbench.schema import SAMPLE_RATE


def words_of(text: str) -> list[str]:
    """Words of ``text`` without punctuation (apostrophes kept), e.g. "Stella's"."""
    return re.findall(r"[A-Za-z0-9']+", text)


def espeak_ng() -> str | None:
    """Path of the espeak-ng executable, or None when it is not installed (on PATH)."""
    return shutil.which("espeak-ng")


def synth_words(words: list[str], *, gap_s: float = 0.15, lead_s: float = 0.3, voice: str = "en-us",
                speed: int = 160) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(16 kHz mono float32 waveform, [(start_s, end_s)] per word); ``voice`` and ``speed``
    (words per minute) are espeak-ng's ``-v`` and ``-s``.

    Raises FileNotFoundError when espeak-ng is not installed, UserError for an espeak-ng
    voice that does not exist, ValueError for no words.
    """
    import soundfile
    import soxr

    if not words:
        raise ValueError("synth_words needs at least one word")
    exe = espeak_ng()
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng); it synthesises speech "
                                "with known word times")
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    times, t = [], lead_s
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for i, w in enumerate(words):
            path = Path(tmp) / f"w{i}.wav"
            done = subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(path), w], capture_output=True,
                                  text=True)
            if done.returncode != 0 or not path.exists():
                msg = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"espeak-ng could not synthesise with voice {voice!r}: {msg} "
                                "(list the voices with `espeak-ng --voices`)")
            x, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            x = soxr.resample(x[:, 0], rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
            loud = np.nonzero(np.abs(x) > 0.02 * np.abs(x).max())[0]
            x = x[loud[0]: loud[-1] + 1]
            times.append((t, t + x.size / SAMPLE_RATE))
            t += x.size / SAMPLE_RATE + gap.size / SAMPLE_RATE
            pieces += [x, gap]
    pieces.append(np.zeros(int(lead_s * SAMPLE_RATE), np.float32))
    return np.concatenate(pieces), times


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (``tokenizers.Tokenizer`` or HF tokenizer)."""
    if type(tokenizer).__name__ == "Tokenizer":
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def word_tokens(tokenizer, words: list[str]) -> tuple[list[int], list[int]]:
    """(token ids of " w1 w2 ...", word index of each token); each word is encoded with its
    leading space, which is how the GPT-2-style pre-tokeniser splits the full text."""
    ids, owner = [], []
    for i, w in enumerate(words):
        t = encode(tokenizer, " " + w)
        ids += t
        owner += [i] * len(t)
    return ids, owner
