"""Entropy and sink head tables from mergeable sums and counts.

``entropy_table`` and ``sinks_table`` read the per-input statistics of every input at once.
For more inputs than fit, ``reduce_stats`` turns the ``Stats`` of one chunk of inputs into
sums and counts per head (``{key: tensor}``, nothing per input), ``merge`` adds two such
reductions (elementwise sum; minimum for keys ending in ``:min``; shorter key axes are padded),
so chunks can be reduced anywhere, in any order, and merged as they arrive, and ``tables``
turns the merged reduction into the same tables as the per-input functions over all the
chunks' inputs (same columns and rows; values equal up to float rounding, sums in float64).

What is summed (definitions in ``entropy.py`` and ``sinks.py``), per site and head:

- entropy: the per-input means of H_i and H_i / ln n_i over valid rows, summed over inputs
  with a valid row (and their count); the number of valid rows; the sum and the sum of
  squares of H_i / ln n_i over valid rows (``std_norm`` = their unbiased standard deviation).
- sinks: alpha_first summed over inputs where it is defined (and their count); the count of
  inputs with alpha_first > epsilon; the strongest later sink's alpha summed over inputs that
  have one (and their count); a histogram over key positions of where it is, and, per
  position, the first input (global index, ``:min``) where it is there, which gives
  ``top_pos`` (the most frequent position, ties to the one seen first, as ``Counter``) and
  ``top_token`` (that position's token in that input) exactly as the per-input path does.

Keys are ``<analysis>/<stream>/<layer>/<quantity>``.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch

from ._context import KEY_STREAM
from .sinks import SINK_MAJORITY, alpha

MERGEABLE = ("entropy", "sinks")
NEVER = torch.iinfo(torch.int64).max        # "no input yet" in first-input indices


def reduce_stats(stats: dict, query_mask: dict, first_index: int, params: dict) -> dict[str, torch.Tensor]:
    """Sums and counts of one chunk of inputs.

    Args:
        stats: ``Trace.stats`` of the chunk, {(stream, layer): HeadStats} with batch = chunk.
        query_mask: the chunk's ``Batch.query_mask``.
        first_index: index of the chunk's first input among all inputs (for ``top_token``).
        params: {analysis: its params instance} for analyses in ``MERGEABLE``.

    Returns:
        {key: tensor}: float64 sums and int64 counts, [head] or [head, key_pos] or scalars.
    """
    out: dict[str, torch.Tensor] = {}
    for (stream, layer), st in sorted(stats.items()):
        if "entropy" in params:
            out.update(_entropy_sums(f"entropy/{stream}/{layer}", st, query_mask.get(stream)))
        if "sinks" in params:
            p = params["sinks"]
            out.update(_sinks_sums(f"sinks/{stream}/{layer}", st, query_mask.get(KEY_STREAM[stream]),
                                   first_index, p.epsilon, p.min_queries))
    return out


def _entropy_sums(pre: str, st, qm) -> dict:
    h = st.row_entropy.double()                                 # [batch, head, q]
    n = st.n_keys.double()                                      # [batch, q]
    valid = (n > 1) if qm is None else (n > 1) & qm[:, -n.shape[1]:].to(n.device)
    norm = h / torch.log(n.clamp_min(2))[:, None, :]
    v = valid[:, None, :]
    h0, norm0 = torch.where(v, h, 0.0), torch.where(v, norm, 0.0)
    rows = valid.sum(-1, keepdim=True).clamp_min(1)             # [batch, 1]
    has = valid.any(-1)
    return {f"{pre}/inputs": has.sum(), f"{pre}/rows": valid.sum(),
            f"{pre}/nats": (h0.sum(-1) / rows)[has].sum(0), f"{pre}/norm": (norm0.sum(-1) / rows)[has].sum(0),
            f"{pre}/row_norm": norm0.sum((0, 2)), f"{pre}/row_norm_sq": norm0.square().sum((0, 2))}


def _sinks_sums(pre: str, st, key_mask, first_index: int, epsilon: float, min_queries: int) -> dict:
    a, count = alpha(st, key_mask)                              # [batch, head, key], [batch, key]
    b, n_heads, n_keys = a.shape
    a1 = a[:, :, 0]
    valid = ~torch.isnan(a1)
    later = a[:, :, 1:].masked_fill(count[:, None, 1:] < min_queries, float("nan"))
    top_val, top_idx = torch.nan_to_num(later, nan=-1.0).max(-1)   # [batch, head]
    ok = top_val >= 0
    flat = (torch.arange(n_heads, device=a.device)[None, :] * n_keys + top_idx + 1)[ok]
    who = (first_index + torch.arange(b, device=a.device))[:, None].expand(b, n_heads)[ok]
    first = torch.full((n_heads * n_keys,), NEVER, dtype=torch.int64, device=a.device)
    first = first.scatter_reduce(0, flat, who, "amin")
    return {f"{pre}/alpha1": torch.where(valid, a1, 0.0).double().sum(0), f"{pre}/alpha1_n": valid.sum(0),
            f"{pre}/sink_n": ((a1 > epsilon) & valid).sum(0),
            f"{pre}/top": torch.where(ok, top_val, 0.0).double().sum(0), f"{pre}/top_n": ok.sum(0),
            f"{pre}/top_pos_n": torch.bincount(flat, minlength=n_heads * n_keys).view(n_heads, n_keys),
            f"{pre}/top_pos_first:min": first.view(n_heads, n_keys)}


def merge(acc: dict | None, part: dict) -> dict:
    """``acc`` + ``part`` (a new dict; ``acc`` None: a copy of ``part``).

    Raises:
        ValueError: the two reductions have different keys (other sites or analyses)."""
    if acc is None:
        return {k: v.cpu() for k, v in part.items()}
    if acc.keys() != part.keys():
        raise ValueError(f"cannot merge reductions of different sites or analyses: {sorted(acc.keys() ^ part.keys())[:4]}")
    out = {}
    for k, x in acc.items():
        y = part[k].cpu()
        is_min = k.endswith(":min")
        if x.dim() and x.shape[-1] != y.shape[-1]:                 # key axes of different lengths
            n = max(x.shape[-1], y.shape[-1])
            x, y = (torch.nn.functional.pad(t, (0, n - t.shape[-1]), value=NEVER if is_min else 0) for t in (x, y))
        out[k] = torch.minimum(x, y) if is_min else x + y
    return out


def tables(sums: dict, params: dict, token: Callable[[int, str, int], str] | None = None) -> dict[str, pd.DataFrame]:
    """{analysis: head table} from a merged reduction, as ``entropy_table`` / ``sinks_table``
    give over every input. ``token(input, stream, pos)``: the token string of an input at a
    key position ("" when unknown) for ``sinks.top_token``.

    Raises:
        ValueError: entropy where no query row sees more than one key (as ``entropy_table``)."""
    sites = sorted({(k.split("/")[1], int(k.split("/")[2])) for k in sums})
    out = {}
    if "entropy" in params:
        rows = [r for s, l in sites for r in _entropy_rows(sums, s, l)]
        if not rows:
            raise ValueError("no query row sees more than one key: entropy needs inputs of 2+ tokens")
        out["entropy"] = pd.DataFrame(rows)
    if "sinks" in params:
        p = params["sinks"]
        out["sinks"] = pd.DataFrame([r for s, l in sites for r in _sinks_rows(sums, s, l, p.epsilon, token)])
    return out


def _entropy_rows(sums: dict, stream: str, layer: int) -> list[dict]:
    g = {k.rsplit("/", 1)[1]: v for k, v in sums.items() if k.startswith(f"entropy/{stream}/{layer}/")}
    n_in, n_rows = int(g["inputs"]), int(g["rows"])
    if n_in == 0:
        return []
    rows = []
    for hd in range(g["nats"].shape[0]):
        s, sq = float(g["row_norm"][hd]), float(g["row_norm_sq"][hd])
        var = (sq - s * s / n_rows) / (n_rows - 1) if n_rows > 1 else 0.0
        rows.append({"stream": stream, "layer": layer, "head": hd,
                     "entropy.mean_nats": float(g["nats"][hd]) / n_in,
                     "entropy.mean_norm": float(g["norm"][hd]) / n_in,
                     "entropy.std_norm": math.sqrt(max(var, 0.0)),
                     "entropy.n_rows": n_rows})
    return rows


def _sinks_rows(sums: dict, stream: str, layer: int, epsilon: float, token) -> list[dict]:
    g = {k.rsplit("/", 1)[1]: v for k, v in sums.items() if k.startswith(f"sinks/{stream}/{layer}/")}
    rows = []
    for hd in range(g["alpha1"].shape[0]):
        n_a1, n_top = int(g["alpha1_n"][hd]), int(g["top_n"][hd])
        pos, tok = -1, ""
        if n_top:
            hist, first = g["top_pos_n"][hd], g["top_pos_first:min"][hd]
            tied = torch.nonzero(hist == hist.max()).flatten()
            pos = int(tied[first[tied].argmin()])              # the most frequent; ties: seen first
            tok = token(int(first[pos]), KEY_STREAM[stream], pos) if token else ""
        frac = int(g["sink_n"][hd]) / max(1, n_a1)
        rows.append({"stream": stream, "layer": layer, "head": hd,
                     "sinks.alpha1": float(g["alpha1"][hd]) / n_a1 if n_a1 else float("nan"),
                     "sinks.sink_frac": frac, "sinks.is_sink": bool(frac > SINK_MAJORITY),
                     "sinks.top_pos": pos,
                     "sinks.top_alpha": float(g["top"][hd]) / n_top if n_top else float("nan"),
                     "sinks.top_token": tok})
    return rows
