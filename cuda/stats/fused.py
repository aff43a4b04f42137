"""Head statistics and the attention output from one pass over the scores (PyTorch, any device).

``Stats(attn_output="fused")`` runs this instead of SDPA plus the statistics reference
(``naive.py``), so the scores of a layer are computed once instead of twice (inside SDPA,
then again for the statistics). Per block of query rows: float32 scores s = scaling q.k
(soft-capped, masked with the float32 minimum), t = s - max, p = softmax(t); then from the
same block the statistics (entropy H = ln l - sum_k p_k t_k with l = sum_k e^t_k = 1 / p at
the argmax, so no log of the whole block; a sink logit rescales the row by its share c),
the column sums (p weighted by query mask x c, one matrix product) and z = P @ V. A block
spans only the keys some of its rows may see (causal, sliding window, padding), as
FlashAttention skips fully masked tiles: a causal layer does about half the [query, key]
work of the reference's full rows.

The statistics equal ``naive.head_stats`` to float32 round-off, not bit for bit (another
formula and summation order; argmax keys may differ on exact ties; softmax always float32,
where the reference follows HF eager's dtype), and ``z`` equals SDPA's output to float
round-off (float32 products, cast to the values' dtype). A query row that may see no key
(a padded position under a sliding window) gets z = 0, where SDPA and eager give an
arbitrary row.
"""
from __future__ import annotations

import torch

from ._types import HeadStatsOut


def key_ranges(query: torch.Tensor, key_len: int, attention_mask: torch.Tensor | None, *, causal: bool,
               sliding_window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row, the first and one-past-the-last key that any batch row or head may see.

    Args: as ``naive.eager_probs`` (query [batch, head, query_pos, d_head]; the mask's
        query dim may be 1).

    Returns:
        lo, hi: int64 [query_pos]; lo >= hi for a row that sees no key.
    """
    tq = query.shape[2]
    dev = query.device
    qi = torch.arange(tq, device=dev) + (key_len - tq)              # query i's key index
    if attention_mask is None:
        hi = qi + 1 if causal and tq > 1 else torch.full((tq,), key_len, device=dev)
        lo = torch.zeros(tq, dtype=torch.long, device=dev)
    else:
        m = attention_mask[..., :key_len]
        m = m.reshape(-1, m.shape[-2], key_len)
        cols = torch.arange(key_len, device=dev)
        lo_parts, hi_parts = [], []
        step = max(1, (4 << 20) // max(1, m.shape[0] * key_len * 4))  # bounded temporaries
        for s in range(0, m.shape[1], step):
            vis = m[:, s:s + step]
            vis = (vis if vis.dtype == torch.bool else vis.float() > torch.finfo(torch.float32).min / 2).any(0)
            hi_parts.append(torch.where(vis, cols + 1, 0).amax(-1))
            lo_parts.append(torch.where(vis, cols, key_len).amin(-1))
        lo, hi = torch.cat(lo_parts).expand(tq), torch.cat(hi_parts).expand(tq)
    if sliding_window is not None:
        lo = torch.maximum(lo, qi - sliding_window + 1)
    return lo, hi


def trimmed_blocks(lo: torch.Tensor, hi: torch.Tensor, per_elem: int, block_bytes: int) -> list[tuple[slice, slice]]:
    """(query rows, key columns) blocks: consecutive rows and the keys any of them may see,
    each block about ``block_bytes`` of ``per_elem`` bytes per (row, key); a block whose
    rows see no key gets the column slice 0:1."""
    lo, hi = lo.tolist(), hi.tolist()
    tq, out, s = len(lo), [], 0

    def span(a: int, b: int) -> tuple[int, int]:
        k0, k1 = min(lo[a:b]), max(hi[a:b])
        return (k0, k1) if k1 > k0 else (0, 1)

    while s < tq:
        k0, k1 = span(s, s + 1)
        e = min(tq, s + max(1, block_bytes // (per_elem * (k1 - k0))))
        k0, k1 = span(s, e)
        e = min(e, s + max(1, block_bytes // (per_elem * (k1 - k0))))      # the block's own width
        out.append((slice(s, e), slice(*span(s, e))))
        s = e
    return out


def head_stats_and_z(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    scaling: float,
    causal: bool = True,
    softcap: float | None = None,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
    softmax_fp32: bool = True,
    query_mask: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    block_bytes: int = 4 << 20,
    lse: bool = True,
) -> HeadStatsOut:
    """``naive.head_stats`` plus ``z`` [batch, query_pos, head, d_v] = P @ value per head
    (value: [batch, kv_head, key_pos, d_v]; GQA as for the keys), from the same score
    blocks; see the module docstring for how it differs from the reference.
    ``softmax_fp32`` is accepted and ignored: everything is float32."""
    del softmax_fp32
    b, h, tq, d = query.shape
    tk, kvh, dv = key.shape[2], key.shape[1], value.shape[3]
    g = h // kvh
    k32, v32 = key.float(), value.float()                # [b, kvh, tk, .]: GQA heads never repeated
    qm = None if query_mask is None else query_mask[:, -tq:].float()
    lo, hi = key_ranges(query, tk, attention_mask, causal=causal, sliding_window=sliding_window)
    f32 = dict(dtype=torch.float32, device=query.device)
    col_sum, col_count = torch.zeros(b, h, tk, **f32), torch.zeros(b, tk, **f32)
    z = torch.empty(b, tq, h, dv, dtype=value.dtype, device=query.device)
    sink = None if sinks is None else sinks.float().view(1, h, 1)
    parts = []
    blocks = trimmed_blocks(lo, hi, b * h * 4, block_bytes)
    # scores and probabilities of every block live in two buffers allocated once per call: blocks
    # of varying widths would otherwise fragment the allocator's heap (peak RSS far above use)
    work = torch.empty(2, max(b * h * (r.stop - r.start) * (c.stop - c.start) for r, c in blocks), **f32)
    for rows, cols in blocks:
        r, n = rows.stop - rows.start, cols.stop - cols.start
        qb = (query[:, :, rows].float() * scaling).reshape(b * kvh, g * r, d)
        s = torch.bmm(qb, k32[:, :, cols].reshape(b * kvh, n, d).transpose(1, 2),
                      out=work[0, :b * h * r * n].view(b * kvh, g * r, n)).view(b, h, r, n)
        allowed = _allowed(attention_mask, rows, cols, tq, tk, causal, sliding_window, query.device)
        if softcap is not None:                          # Gemma 2: cap the scores, then mask
            s.div_(softcap).tanh_().mul_(softcap)
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            extra = torch.where(allowed, _mask_block(attention_mask, rows, cols, tq).float(), 0)
            if bool(extra.any()):                        # finite additive values beyond 0 / min (rare)
                s.add_(extra)
        allowed_b = None if allowed is None else allowed.expand(b, -1, r, n)[:, 0]      # [b, r, n]
        if allowed is not None:
            bad = (~allowed).flatten(0, -2).any(0).nonzero()
            if len(bad):                                  # only the columns with a masked entry
                c0, c1 = int(bad[0]), int(bad[-1]) + 1
                s[..., c0:c1].masked_fill_(~allowed[..., c0:c1], MIN)
        n_keys = torch.full((b, r), n, dtype=torch.long, device=query.device) if allowed_b is None \
            else allowed_b.sum(-1)
        smax, max_pos = _max_argmax(s)                   # [b, h, r] over the real keys
        s.sub_(smax[..., None])                          # t = s - max <= 0
        p = torch.ops.aten._softmax.out(s, -1, False, out=work[1, :b * h * r * n].view(b, h, r, n))   # real keys
        p_max = p.gather(-1, max_pos[..., None])[..., 0]  # = e^0 / sum_k e^t_k
        log_l = -torch.log(p_max)                        # l = sum_k e^(s_k - max)
        empty = (n_keys == 0)[:, None]                   # [b, 1, r]: rows that see no key
        lse_real = torch.where(empty, float("-inf"), smax + log_l)
        # c: the real keys' share of the row (a sink logit takes 1 - c); 0 for a row with no key
        c = (~empty).float().expand_as(smax) if sink is None else torch.sigmoid(lse_real - sink)
        h_real = log_l - s.mul_(p).sum(-1)               # -sum p ln p = sum p (log l - t); s is spent
        part = dict(entropy=torch.where(empty, 0.0, c * h_real - torch.special.xlogy(c, c)), n_keys=n_keys,
                    max_pos=torch.where(empty, 0, max_pos + cols.start), max_prob=c * p_max)
        if lse:
            part["lse"] = lse_real if sink is None else torch.logaddexp(lse_real, sink.expand_as(lse_real))
        if keys is None:
            part["key_mass"] = s.new_zeros(b, h, r, 0)
        else:
            inside = (keys >= cols.start) & (keys < cols.stop)
            part["key_mass"] = p[..., (keys - cols.start).clamp(0, n - 1)] * inside * c[..., None]
        w = c if qm is None else c * qm[:, None, rows]                                 # [b, h, r]
        col_sum[..., cols] += torch.matmul(w.unsqueeze(-2), p).squeeze(-2)
        cnt = torch.ones(b, r, n, **f32) if allowed_b is None else allowed_b.float()
        col_count[..., cols] += cnt.sum(1) if qm is None else torch.einsum("bqk,bq->bk", cnt, qm[:, rows])
        zb = torch.bmm(p.view(b * kvh, g * r, n), v32[:, :, cols].reshape(b * kvh, n, dv)).view(b, h, r, dv)
        z[:, rows] = (zb * c[..., None]).transpose(1, 2).to(z.dtype)
        parts.append(part)
    out = {name: torch.cat([p[name] for p in parts], dim=-1 if name == "n_keys" else 2) for name in parts[0]}
    return HeadStatsOut(**{"lse": None, **out}, col_sum=col_sum, col_count=col_count, z=z)


MIN = torch.finfo(torch.float32).min          # masked scores: finite, so 0 * (MIN - m) = 0 in the entropy


def _mask_block(mask: torch.Tensor, rows: slice, cols: slice, tq: int) -> torch.Tensor:
    return (mask[..., rows, :] if mask.shape[-2] == tq else mask)[..., cols]


def _allowed(mask, rows: slice, cols: slice, tq: int, tk: int, causal: bool, window: int | None, device):
    """bool [b|1, 1|h, r|1, n] which keys of the block each row may see (None: all), as
    ``naive.eager_probs`` decides it."""
    qi = torch.arange(rows.start, rows.stop, device=device)[:, None] + (tk - tq)
    kj = torch.arange(cols.start, cols.stop, device=device)[None, :]
    if mask is None:
        allowed = (kj <= qi)[None, None] if causal and tq > 1 else None
    else:
        m = _mask_block(mask, rows, cols, tq)
        allowed = m if m.dtype == torch.bool else m.float() > MIN / 2
    if window is not None and tk > window:
        w = (qi - kj < window)[None, None]
        allowed = w if allowed is None else allowed & w
    return allowed


def _max_argmax(s: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and first argmax of the last dim (``torch.argmax`` / ``max(dim)`` are many times
    slower than ``amax`` on CPU): maxima of chunks of ``chunk`` columns, the first chunk
    that holds the row's max, then the first column in it that equals it."""
    n = s.shape[-1]
    if n <= chunk:
        smax = s.amax(-1)
        return smax, (s == smax[..., None]).to(torch.uint8).argmax(-1)
    full = n - n % chunk
    cm = s[..., :full].unflatten(-1, (full // chunk, chunk)).amax(-1)         # [.., n_chunks]
    if full < n:
        cm = torch.cat([cm, s[..., full:].amax(-1, keepdim=True)], -1)
    smax = cm.amax(-1)
    c = (cm == smax[..., None]).to(torch.uint8).argmax(-1)                     # first chunk with the max
    idx = (c[..., None] * chunk + torch.arange(chunk, device=s.device)).clamp_max(n - 1)
    win = s.gather(-1, idx)
    return smax, c * chunk + (win == smax[..., None]).to(torch.uint8).argmax(-1)
