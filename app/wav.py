"""Encode a float waveform as a 16-bit PCM WAV (stdlib ``wave``) for the audio player."""
from __future__ import annotations

import io
import wave

import numpy as np

from ..schema import SAMPLE_RATE


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono float samples in [-1, 1] (``[sample]``) -> WAV bytes; values are clipped.

    Raises:
        ValueError: ``samples`` is not 1-D.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform [sample]; got shape {x.shape}")
    pcm = (np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
