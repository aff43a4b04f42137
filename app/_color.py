"""Colour scales for attention patterns that fit the data: linear or log, and a range that can
leave out the first key (the attention sink).

A sink head puts most of every query's attention on the first token (Xiao et al. 2023,
"Efficient Streaming Language Models with Attention Sinks"); on a linear scale from 0 to
its maximum the pattern is one bright column and everything else looks empty.
``skip_first`` takes the colour range from keys 1.. only (the first column saturates; hover
still shows its value); ``log`` colours log10 of the attention, floored at ``LOG_FLOOR``,
with the colour bar labelled in attention units.
"""
from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-4
LINEAR, LOG = "linear", "log"
SKIP_FIRST = "skip-first"


def options(scale, checks) -> tuple[bool, bool]:
    """(log, skip_first) from the page's controls: a scale (``"linear"`` | ``"log"``) and the
    checklist values (``["skip-first"]`` or empty); anything else reads as the default."""
    return scale == LOG, isinstance(checks, (list, tuple)) and SKIP_FIRST in checks


def value_range(a: np.ndarray, skip_first: bool = False) -> float:
    """Largest value of ``a [..., key]`` over keys (1.. with ``skip_first`` when there are
    more keys than one); 1.0 for an empty or all-NaN array."""
    a = np.asarray(a, dtype=np.float64)
    if skip_first and a.shape[-1] > 1:
        a = a[..., 1:]
    top = np.nanmax(a) if a.size and np.isfinite(a).any() else 1.0
    return float(top) if top > 0 else 1.0


def colour(z: np.ndarray, top: float, log: bool, title: str = "attention") -> tuple[np.ndarray, dict]:
    """(values to colour, plotly coloraxis dict) for non-negative ``z`` whose colour range ends
    at ``top``: linear 0..top, or log10 from ``LOG_FLOOR`` to ``top``."""
    if not log:
        return z, {"colorscale": "Blues", "cmin": 0.0, "cmax": top, "colorbar": {"title": title}}
    lo, hi = np.log10(LOG_FLOOR), np.log10(max(top, LOG_FLOOR * 10))
    zc = np.log10(np.clip(np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0), LOG_FLOOR, None))
    ticks = list(range(int(np.ceil(lo)), int(np.floor(hi)) + 1))
    return zc, {"colorscale": "Blues", "cmin": float(lo), "cmax": float(hi),
                "colorbar": {"title": f"{title}<br>(log)", "tickvals": ticks,
                             "ticktext": [f"1e{t}" if t else "1" for t in ticks]}}


def describe(log: bool, skip_first: bool) -> str:
    """Words for a figure title: which scale and range it uses ("" for the default)."""
    parts = (["log scale"] if log else []) + (["colour range without the first token"] if skip_first else [])
    return f" · {', '.join(parts)}" if parts else ""
