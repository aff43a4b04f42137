"""Head statistics and the attention output from one pass over the scores (PyTorch, any device).

``Stats(attn_output="fused")`` runs this instead of SDPA plus the statistics reference
(``naive.py``), so the scores of a layer are computed once instead of twice (inside SDPA,
then again for the statistics). A block of query rows (all heads; the GQA heads of a KV head
share one matrix product) walks its keys in tiles of ``tile`` keys, as FlashAttention does, so
each tile's float32 scores stay in cache while they are reduced: s = scaling q.k
(soft-capped, masked with the float32 minimum), its row max mx_t, t = s - mx_t, the tile's own
softmax p_t (l_t = sum_k e^t_k = 1 / max p_t), u_t = sum_k p_t,k t_k and z_t = p_t @ V.
Once the block's tiles are done they are combined: row max m = max_t mx_t, l = sum_t
e^(mx_t - m) l_t, the tile's share beta_t = e^(mx_t - m) l_t / l, z = sum_t beta_t z_t,
entropy H = sum_t beta_t (ln l_t - u_t) - sum_t beta_t ln beta_t (no cancellation: every
term is a non-negative entropy or a share), the column sums (beta_t p_t weighted by the query
mask, one batched product over the block's stored tile probabilities) and the argmax (the first
tile holding m, then its first key at that tile's max). A sink logit rescales the row by its
share c. A block spans only the keys some of its rows may see (causal, sliding window,
padding): a causal layer does about half the [query, key] work of the reference's full rows.

The statistics equal ``naive.head_stats`` to float32 round-off, not bit for bit (another
formula and summation order; argmax keys may differ on exact or float-rounding ties; softmax
always float32, where the reference follows HF eager's dtype), and ``z`` equals SDPA's output to
float round-off (float32 products, cast to the values' dtype). A query row that may see no key
(a padded position under a sliding window) gets z = 0, where SDPA and eager give an arbitrary
row.

Measured on one smollm2-135m layer (9 heads, 3 KV heads, d_head 64), 1 CPU thread, CPU time
against SDPA on the same inputs in the same process (``benchmarks/tracing.py`` has the whole-model
figures): T = 8192 1.6-1.8x (full-row blocks before: 2.6-2.75x), T = 4096 1.7x (2.0x), T = 2048
1.9x (1.9x: small T is bound by per-operation overhead).
"""
from __future__ import annotations

import torch

from ._types import HeadStatsOut

# keys per score tile, and the query rows (GQA heads x positions) sharing one matrix product with
# a KV head's keys; measured best of 256/512/768/1024 keys and 96-384 rows on one smollm2 layer
TILE_KEYS = 512
GEMM_ROWS = 288
# at most this many float32 bytes of stored tile probabilities per block (long T, large batches)
STORE_BYTES = 64 << 20


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
    tile: int = TILE_KEYS,
) -> HeadStatsOut:
    """``naive.head_stats`` plus ``z`` [batch, query_pos, head, d_v] = P @ value per head
    (value: [batch, kv_head, key_pos, d_v]; GQA as for the keys), from the same score
    tiles; see the module docstring for how it differs from the reference.

    ``block_bytes`` bounds one tile's float32 scores (batch x head x rows x ``tile`` keys):
    a block has at most that many query rows, and at most ``GEMM_ROWS`` / group rows.
    ``softmax_fp32`` is accepted and ignored: everything is float32."""
    del softmax_fp32
    b, h, tq, d = query.shape
    tk, kvh, dv = key.shape[2], key.shape[1], value.shape[3]
    g = h // kvh
    dev = query.device
    f32 = dict(dtype=torch.float32, device=dev)
    qs = (query.float() * scaling).reshape(b * kvh, g, tq, d)
    k32, v32 = key.float().reshape(b * kvh, tk, d), value.float().reshape(b * kvh, tk, dv)   # GQA: never repeated
    qm = None if query_mask is None else query_mask[:, -tq:].float()
    lo, hi = key_ranges(query, tk, attention_mask, causal=causal, sliding_window=sliding_window)
    simple = attention_mask is None                      # allowed = lo <= key < hi in every batch row and head
    sink = None if sinks is None else sinks.float().view(1, h, 1)
    col_sum = torch.zeros(b, h, tk, **f32)
    z = _alloc((b, tq, h, dv), value.dtype, dev)         # outputs every block writes its rows of
    entropy, max_prob = _alloc((b, h, tq), torch.float32, dev), _alloc((b, h, tq), torch.float32, dev)
    max_pos = _alloc((b, h, tq), torch.long, dev)
    lse_out = _alloc((b, h, tq), torch.float32, dev) if lse else None
    key_mass = _alloc((b, h, tq, 0 if keys is None else len(keys)), torch.float32, dev)
    if simple:                                           # counts in closed form
        n_keys = (hi - lo).clamp_min(0).expand(b, tq).contiguous()
        col_count = _col_count(lo, hi, qm, b, tk, f32)
        lo_l, hi_l = lo.tolist(), hi.tolist()
    else:
        n_keys = _alloc((b, tq), torch.long, dev)
        col_count = torch.zeros(b, tk, **f32)
    r_max = max(1, min(-(-GEMM_ROWS // g), block_bytes // (b * h * tile * 4), STORE_BYTES // (b * h * tk * 4)))
    blocks = row_blocks(lo, hi, r_max)
    nt_max = max(-(-(c.stop - c.start) // tile) for _, c in blocks)
    # allocated once per call (blocks of varying widths would fragment the heap): one tile's scores,
    # and per tile of a block its probabilities, z and row statistics (max, 1 / l_t, u_t)
    scratch = torch.empty(b * h * r_max * tile, **f32)
    probs = torch.empty(nt_max * b * h * r_max * tile, **f32)
    zs = torch.empty(nt_max * b * h * r_max * dv, **f32)
    rowst = torch.empty(3, nt_max * b * h * r_max, **f32)
    for rows, cols in blocks:
        r, n = rows.stop - rows.start, cols.stop - cols.start
        nt = -(-n // tile)
        qb = qs[:, :, rows].reshape(b * kvh, g * r, d)
        P = probs[:nt * b * h * r * tile].view(nt, b, h, r, tile)
        Zt = zs[:nt * b * h * r * dv].view(nt, b * kvh, g * r, dv)
        MX, LT, U = rowst[:, :nt * b * h * r].view(3, nt, b, h, r).unbind(0)
        empty = extra = allowed = None
        if simple:
            edges = _edge_masks(lo[rows], hi[rows], max(lo_l[rows]), min(hi_l[rows]))
        else:
            allowed = _allowed(attention_mask, rows, cols, tq, tk, causal, sliding_window, dev)
            if attention_mask.dtype != torch.bool:
                extra = torch.where(allowed, _mask_block(attention_mask, rows, cols, tq).float(), 0)
                extra = extra if bool(extra.any()) else None     # finite additive values beyond 0 / min (rare)
            allowed_b = allowed.expand(b, -1, r, n)[:, 0]                               # [b, r, n]
            nk = allowed_b.sum(-1)
            n_keys[:, rows] = nk
            cnt = allowed_b.float()
            col_count[..., cols] += cnt.sum(1) if qm is None else torch.einsum("bqk,bq->bk", cnt, qm[:, rows])
            empty = (nk == 0)[:, None]                    # [b, 1, r]: rows that see no key
            empty = empty if bool(empty.any()) else None
        for t in range(nt):
            c0 = cols.start + t * tile
            c1 = min(cols.stop, c0 + tile)
            w = c1 - c0
            s = torch.bmm(qb, k32[:, c0:c1].transpose(1, 2), out=scratch[:b * h * r * w].view(b * kvh, g * r, w))
            s = s.view(b, h, r, w)
            if softcap is not None:                      # Gemma 2: cap the scores, then mask
                s.div_(softcap).tanh_().mul_(softcap)
            if simple:
                for e0, e1, m in edges:
                    a0, a1 = max(e0, c0), min(e1, c1)
                    if a0 < a1:
                        s[..., a0 - c0:a1 - c0].masked_fill_(m[:, a0 - e0:a1 - e0], MIN)
            else:
                if extra is not None:
                    s.add_(extra[..., c0 - cols.start:c1 - cols.start])
                s.masked_fill_(~allowed[..., c0 - cols.start:c1 - cols.start], MIN)
            mx = torch.amax(s, -1, out=MX[t])
            s.sub_(mx[..., None])                         # t = s - mx_t <= 0 (0 where a row sees no key here)
            p = P[t, ..., :w]
            if w == tile:
                torch.ops.aten._softmax.out(s, -1, False, out=p)
            else:                                         # the block's last, partial tile: 0 beyond its keys
                p.copy_(torch.softmax(s, -1))
                P[t, ..., w:].zero_()
            torch.amax(p, -1, out=LT[t])                  # e^0 / l_t
            torch.sum(s.mul_(p), -1, out=U[t])            # u_t = sum_k p_k t_k; s is spent
            torch.bmm(p.view(b * kvh, g * r, w), v32[:, c0:c1], out=Zt[t])
        smax = MX.amax(0)                                 # [b, h, r]
        alpha = torch.exp(MX - smax) / LT                 # e^(mx_t - m) l_t: 0 for a tile a row sees nothing of
        l = alpha.sum(0)
        beta = alpha / l                                  # [nt, b, h, r]
        h_real = (beta * (-torch.log(LT) - U)).sum(0) - torch.special.xlogy(beta, beta).sum(0)
        lse_real = smax + torch.log(l)
        if empty is not None:
            lse_real = torch.where(empty, float("-inf"), lse_real)
        # c: the real keys' share of the row (a sink logit takes 1 - c); 0 for a row with no key; None: 1
        c = None if sink is None else torch.sigmoid(lse_real - sink)
        if c is None and empty is not None:
            c = (~empty).float().expand_as(smax)
        bc = beta if c is None else beta * c
        if c is None:
            entropy[:, :, rows], max_prob[:, :, rows] = h_real, 1.0 / l
        else:
            ent = c * h_real - torch.special.xlogy(c, c)
            entropy[:, :, rows] = ent if empty is None else torch.where(empty, 0.0, ent)
            max_prob[:, :, rows] = c / l
        # argmax: the first tile holding the row max, then the first key at that tile's max
        tstar = (MX == smax).to(torch.uint8).argmax(0).view(-1)                       # [b h r]
        rowp = P.view(nt, b * h * r, tile)[tstar, torch.arange(b * h * r, device=dev)]
        kpos = (_max_argmax(rowp)[1] + tstar * tile).view(b, h, r) + cols.start
        max_pos[:, :, rows] = kpos if empty is None else torch.where(empty, 0, kpos)
        if lse:
            lse_out[:, :, rows] = lse_real if sink is None else torch.logaddexp(lse_real, sink.expand_as(lse_real))
        if keys is not None and len(keys):
            off = keys - cols.start
            inside = (off >= 0) & (off < n)
            kt, kc = off.clamp(0, n - 1) // tile, off.clamp(0, n - 1) % tile
            key_mass[:, :, rows] = (P[kt, ..., kc] * bc[kt]).permute(1, 2, 3, 0) * inside
        wq = bc if qm is None else bc * qm[:, None, rows]                             # [nt, b, h, r]
        cs = torch.bmm(wq.reshape(nt * b * h, 1, r), P.view(nt * b * h, r, tile)).view(nt, b, h, tile)
        col_sum[..., cols] += cs.permute(1, 2, 0, 3).reshape(b, h, nt * tile)[..., :n]
        z[:, rows] = (bc[..., None] * Zt.view(nt, b, h, r, dv)).sum(0).transpose(1, 2)
    return HeadStatsOut(lse=lse_out, entropy=entropy, max_pos=max_pos, max_prob=max_prob, key_mass=key_mass,
                        n_keys=n_keys, col_sum=col_sum, col_count=col_count, z=z)


def _alloc(shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """An output the blocks fill (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def row_blocks(lo: torch.Tensor, hi: torch.Tensor, rows: int) -> list[tuple[slice, slice]]:
    """(query rows, key columns) blocks: ``rows`` consecutive rows and the keys any of them may
    see (lo, hi as ``key_ranges`` gives them); 0:1 for rows that see no key."""
    lo_l, hi_l, out = lo.tolist(), hi.tolist(), []
    for s in range(0, len(lo_l), rows):
        e = min(len(lo_l), s + rows)
        k0, k1 = min(lo_l[s:e]), max(hi_l[s:e])
        out.append((slice(s, e), slice(k0, k1) if k1 > k0 else slice(0, 1)))
    return out


def _col_count(lo, hi, qm, b: int, tk: int, f32: dict) -> torch.Tensor:
    """[b, tk] sum_i w_i [lo_i <= k < hi_i] (w: the query mask or 1): +w at lo, -w at hi, cumsum
    (exact: integer sums below 2^24)."""
    w = (torch.ones(b, lo.numel(), **f32) if qm is None else qm) * (hi > lo)
    diff = torch.zeros(b, tk + 1, **f32)
    diff.index_add_(1, lo.clamp(0, tk), w).index_add_(1, hi.clamp(0, tk), -w)
    return diff.cumsum(1)[:, :tk]


def _edge_masks(lo, hi, lo_max: int, hi_min: int) -> list[tuple[int, int, torch.Tensor]]:
    """(first key, end key, bool [rows, keys] True = masked): the keys outside each row's
    [lo_i, hi_i), looked for only left of the last row start and right of the first row end
    (the keys in between are visible to every row)."""
    out = []
    k0, k1 = int(lo.min()), int(hi.max())
    if lo_max > k0:
        j = torch.arange(k0, lo_max, device=lo.device)
        out.append((k0, lo_max, j[None] < lo[:, None]))
    if hi_min < k1:
        j = torch.arange(hi_min, k1, device=lo.device)
        out.append((hi_min, k1, j[None] >= hi[:, None]))
    return out


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
