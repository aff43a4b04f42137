"""Triton kernel of the head statistics, tiled like FlashAttention (Dao et al. 2022): no
[query_pos, key_pos] tensor exists, on any device.

Pass 1 (``_stats_rows``): one program per (batch x head, block of query rows) walks the
key blocks it may see (causal and sliding-window blocks that are fully masked are skipped)
and keeps, per row, the online-softmax state of Milakov & Gimelshein 2018: m (running max),
l = sum_j e^(s_j - m) and u = sum_j e^(s_j - m) (s_j - m) (the shifted form of the issue's
u = sum e^(s - m) s, which cancels less), plus the first key reaching m. At the end
lse = m + ln l and H = ln l - u / l (the sink logit of ``s_aux`` joins l only), max_prob =
e^(m - lse), and the scores of the chosen keys give their mass e^(s - lse).
Pass 2 (``_stats_cols``): one program per (batch x head, block of keys) walks the query
blocks that may see them and sums w_i e^(s_ik - lse_i) with the saved lse (column sums,
attention received; w = query mask).

Scores are float32 accumulations of the inputs' products (bf16 / fp16 operands on tensor
cores, fp32 operands in IEEE precision, never TF32); softmax statistics are float32 always,
so for a bf16 model they are closer to exact than the eager reference (which rounds scores
to bf16 and, for GPT-2-style families, the softmax too). Block sizes are autotune configs.
Under ``TRITON_INTERPRET=1`` (CPU tensors) operands are upcast to float32 before ``tl.dot``
(the interpreter's bf16 dot is wrong) and one small config is used.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreting
from ._types import HeadStatsOut

INTERPRET = interpreting()
MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2


def _configs(pairs):
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


ROW_CONFIGS = _configs([(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2), (128, 128, 8, 2)])
COL_CONFIGS = _configs([(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 2), (128, 128, 8, 2)])


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Output buffers (tests replace this to poison them)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _scores(q, k, rows, cols, M, smq, smk, Tq, Tk, offset, scale, softcap, window, mask_min,
            MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
            IEEE: tl.constexpr):
    """Scores [rows, cols] of loaded q [rows, d] and k [cols, d] tiles, -inf where not allowed."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    else:
        s = tl.dot(q, tl.trans(k)) * scale
    if SOFTCAP:                                       # softcap * tanh(s / softcap), tanh via exp
        s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
    inb = (rows[:, None] < Tq) & (cols[None, :] < Tk)
    allowed = inb
    qpos = rows + offset
    if CAUSAL:
        allowed = allowed & (cols[None, :] <= qpos[:, None])
    if WINDOW:
        allowed = allowed & (qpos[:, None] - cols[None, :] < window)
    if MASK_KIND == 1:
        mv = tl.load(M + rows[:, None] * smq + cols[None, :] * smk, mask=inb, other=0)
        allowed = allowed & (mv != 0)
    if MASK_KIND == 2:
        mv = tl.load(M + rows[:, None] * smq + cols[None, :] * smk, mask=inb, other=0).to(tl.float32)
        allowed = allowed & (mv > mask_min)
        s = s + tl.where(allowed, mv, 0.0)
    s = tl.where(allowed, s, float("-inf"))
    return s, allowed


@triton.autotune(configs=ROW_CONFIGS, key=["TK_BUCKET", "BLOCK_D", "MASK_KIND", "CAUSAL", "WINDOW"])
@triton.jit
def _stats_rows(Q, K, M, SINK, KEYS, LSE, ENT, MPOS, MPROB, KMASS, NKEYS,
                sqb, sqh, sqt, sqd, skb, skh, skt, skd, smb, smh, smq, smk,
                H, G, Tq, Tk, offset, scale, softcap, window, mask_min, n_sel, TK_BUCKET,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
                HAS_SINKS: tl.constexpr, SEL_P: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)              # int64 offsets: b * batch stride passes 2^31 at long T
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :] * sqd,
                mask=(rows[:, None] < Tq) & dmask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    Kb = K + b * skb + (h // G) * skh
    Mb = M + b * smb + h * smh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    u_i = tl.zeros([BLOCK_M], tl.float32)
    best = tl.zeros([BLOCK_M], tl.int32)
    n_i = tl.zeros([BLOCK_M], tl.int32)
    lo = 0
    hi = Tk
    if CAUSAL:
        hi = tl.minimum(Tk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
    if WINDOW:
        lo = tl.maximum(0, pid_m * BLOCK_M + offset - window + 1) // BLOCK_N * BLOCK_N
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = tl.load(Kb + cols[:, None] * skt + offs_d[None, :] * skd, mask=(cols[:, None] < Tk) & dmask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s, allowed = _scores(q, k, rows, cols, Mb, smq, smk, Tq, Tk, offset, scale, softcap, window, mask_min,
                             MASK_KIND, CAUSAL, SOFTCAP, WINDOW, IEEE)
        tile_max = tl.max(s, axis=1)
        tile_arg = tl.argmax(s, axis=1, tie_break_left=True)
        m_new = tl.maximum(m_i, tile_max)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        # (no -inf ever meets a 0 here: the interpreter would warn on the NaN even where it is not selected)
        shift = l_i * (tl.where(l_i > 0, m_i, m_safe) - m_safe)
        u_i = alpha * (u_i + shift) + tl.sum(p * tl.where(allowed, s - m_safe[:, None], 0.0), axis=1)
        l_i = alpha * l_i + tl.sum(p, axis=1)
        best = tl.where(tile_max > m_i, start + tile_arg, best)
        m_i = m_new
        n_i += tl.sum(allowed.to(tl.int32), axis=1)
    if HAS_SINKS:
        z = tl.load(SINK + h).to(tl.float32)
    else:
        z = float("-inf")
    m_all = tl.maximum(m_i, z)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    a = tl.exp(m_i - m_safe)
    lr = l_i * a
    ur = a * (u_i + l_i * (tl.where(l_i > 0, m_i, m_safe) - m_safe))
    big_l = lr + tl.exp(z - m_safe)
    safe_l = tl.where(big_l > 0, big_l, 1.0)
    lse = tl.where(big_l > 0, m_safe + tl.log(safe_l), float("-inf"))
    ent = tl.where(big_l > 0, lr / safe_l * tl.log(safe_l) - ur / safe_l, 0.0)
    lse_safe = tl.where(big_l > 0, lse, 0.0)
    pmax = tl.exp(m_i - lse_safe)
    out = (b * H + h) * Tq + rows
    rmask = rows < Tq
    tl.store(LSE + out, lse, mask=rmask)
    tl.store(ENT + out, ent, mask=rmask)
    tl.store(MPOS + out, best, mask=rmask)
    tl.store(MPROB + out, pmax, mask=rmask)
    tl.store(NKEYS + out, n_i, mask=rmask)
    if SEL_P > 0:                                     # mass on the chosen keys: e^(s - lse)
        j = tl.arange(0, SEL_P)
        cols = tl.load(KEYS + j, mask=j < n_sel, other=0)
        k = tl.load(Kb + cols[:, None] * skt + offs_d[None, :] * skd, mask=(j[:, None] < n_sel) & dmask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s, allowed = _scores(q, k, rows, cols, Mb, smq, smk, Tq, Tk, offset, scale, softcap, window, mask_min,
                             MASK_KIND, CAUSAL, SOFTCAP, WINDOW, IEEE)
        mass = tl.exp(s - lse_safe[:, None])
        tl.store(KMASS + out[:, None] * n_sel + j[None, :], mass, mask=rmask[:, None] & (j[None, :] < n_sel))


@triton.autotune(configs=COL_CONFIGS, key=["TQ_BUCKET", "BLOCK_D", "MASK_KIND", "CAUSAL", "WINDOW"])
@triton.jit
def _stats_cols(Q, K, M, LSE, QW, COL, CNT,
                sqb, sqh, sqt, sqd, skb, skh, skt, skd, smb, smh, smq, smk, sqwb,
                H, G, Tq, Tk, offset, scale, softcap, window, mask_min, TQ_BUCKET,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
                HAS_QW: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)              # int64 offsets: b * batch stride passes 2^31 at long T
    b = bh // H
    h = bh % H
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < D
    k = tl.load(K + b * skb + (h // G) * skh + cols[:, None] * skt + offs_d[None, :] * skd,
                mask=(cols[:, None] < Tk) & dmask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    Qb = Q + b * sqb + h * sqh
    Mb = M + b * smb + h * smh
    acc = tl.zeros([BLOCK_N], tl.float32)
    cnt = tl.zeros([BLOCK_N], tl.float32)
    lo = 0
    hi = Tq
    if CAUSAL:                                        # rows whose key index reaches this block
        lo = tl.maximum(0, pid_n * BLOCK_N - offset) // BLOCK_M * BLOCK_M
    if WINDOW:                                        # rows still inside the window of its first key
        hi = tl.minimum(Tq, tl.maximum(0, (pid_n + 1) * BLOCK_N - 1 + window - offset))
    for start in range(lo, hi, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < Tq
        q = tl.load(Qb + rows[:, None] * sqt + offs_d[None, :] * sqd, mask=rmask[:, None] & dmask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        s, allowed = _scores(q, k, rows, cols, Mb, smq, smk, Tq, Tk, offset, scale, softcap, window, mask_min,
                             MASK_KIND, CAUSAL, SOFTCAP, WINDOW, IEEE)
        lse = tl.load(LSE + (b * H + h) * Tq + rows, mask=rmask, other=0.0)
        p = tl.exp(s - tl.where(lse == float("-inf"), 0.0, lse)[:, None])       # 0 where not allowed
        if HAS_QW:
            w = tl.load(QW + b * sqwb + rows, mask=rmask, other=0.0).to(tl.float32)
        else:
            w = rmask.to(tl.float32)
        acc += tl.sum(p * w[:, None], axis=0)
        cnt += tl.sum(allowed.to(tl.float32) * w[:, None], axis=0)
    out = (b * H + h) * Tk + cols
    tl.store(COL + out, acc, mask=cols < Tk)
    tl.store(CNT + out, cnt, mask=cols < Tk)


def head_stats(query, key, attention_mask=None, *, scaling, causal=True, softcap=None, sliding_window=None,
               sinks=None, softmax_fp32=True, query_mask=None, keys=None) -> HeadStatsOut:
    """Triton ``head_stats`` (arguments and outputs: ``workbench.cuda.stats.head_stats``);
    ``softmax_fp32`` is accepted and ignored (the kernel's softmax is float32 always)."""
    b, h, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    dev = query.device
    kind = MASK_NONE
    mask = query.new_zeros(1)
    mstride = (0, 0, 0, 0)
    mask_min = 0.0
    if attention_mask is not None:
        m = attention_mask[..., :tk]
        kind = MASK_BOOL if m.dtype == torch.bool else MASK_ADD
        mask = m.view(torch.uint8) if kind == MASK_BOOL else m
        mstride = mask.expand(b, h, tq, tk).stride()
        mask_min = torch.finfo(torch.float32).min / 2
    is_causal = attention_mask is None and causal and tq > 1
    window = sliding_window if sliding_window is not None and tk > sliding_window else 0
    sel = (keys.to(device=dev, dtype=torch.int32).contiguous() if keys is not None
           else torch.zeros(1, dtype=torch.int32, device=dev))
    n_sel = 0 if keys is None else int(keys.numel())
    lse = _alloc((b, h, tq), torch.float32, dev)
    ent = _alloc((b, h, tq), torch.float32, dev)
    mpos = _alloc((b, h, tq), torch.int32, dev)
    mprob = _alloc((b, h, tq), torch.float32, dev)
    nkeys = _alloc((b, h, tq), torch.int32, dev)
    kmass = _alloc((b, h, tq, n_sel), torch.float32, dev)
    col = _alloc((b, h, tk), torch.float32, dev)
    cnt = _alloc((b, h, tk), torch.float32, dev)
    sink = sinks.to(dev, torch.float32).contiguous() if sinks is not None else lse
    qw = (query_mask[:, -tq:].to(dev, torch.float32).contiguous() if query_mask is not None else lse)
    block_d = max(16, triton.next_power_of_2(d))
    common = dict(H=h, G=h // hkv, Tq=tq, Tk=tk, offset=tk - tq, scale=float(scaling),
                  softcap=float(softcap or 1.0), window=int(window), mask_min=mask_min)
    flags = dict(D=d, BLOCK_D=block_d, MASK_KIND=kind, CAUSAL=is_causal, SOFTCAP=softcap is not None,
                 WINDOW=window > 0, UPCAST=INTERPRET,
                 IEEE=INTERPRET or query.dtype == torch.float32)
    if tq > 0 and tk > 0:
        _stats_rows[lambda meta: (triton.cdiv(tq, meta["BLOCK_M"]), b * h)](
            query, key, mask, sink, sel, lse, ent, mpos, mprob, kmass, nkeys,
            *query.stride(), *key.stride(), *mstride, **common, n_sel=n_sel,
            TK_BUCKET=triton.next_power_of_2(tk), HAS_SINKS=sinks is not None,
            SEL_P=0 if n_sel == 0 else max(16, triton.next_power_of_2(n_sel)), **flags)
        _stats_cols[lambda meta: (triton.cdiv(tk, meta["BLOCK_N"]), b * h)](
            query, key, mask, lse, qw, col, cnt,
            *query.stride(), *key.stride(), *mstride, qw.stride(0) if query_mask is not None else 0, **common,
            TQ_BUCKET=triton.next_power_of_2(tq), HAS_QW=query_mask is not None, **flags)
    return HeadStatsOut(lse=lse, entropy=ent, max_pos=mpos.long(), max_prob=mprob, key_mass=kmass,
                        n_keys=nkeys[:, 0].long(), col_sum=col, col_count=cnt[:, 0].contiguous())
