"""Whisper-style word timing from cross-attention (numpy + SciPy only, no torch).

Shared by the alignment analysis (``analyses/alignment.py``) and the dashboard's word
alignment (``app/alignment.py``), so both time words the same way. Follows OpenAI
Whisper's ``timing.py`` (Radford et al. 2022, "Robust Speech Recognition via Large-Scale
Weak Supervision", word-level timestamps): z-score each head's ``[token, frame]``
cross-attention along tokens, median-filter along frames (width 7), average the chosen
heads, and find the monotone token-to-frame path by dynamic time warping on the negated
matrix. Encoder frames are 50 per second (20 ms).
"""
from __future__ import annotations

import numpy as np

FPS = 50.0          # Whisper encoder frames per second

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
