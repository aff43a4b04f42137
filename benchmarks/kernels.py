"""Kernel benchmark: head statistics (Triton vs the PyTorch reference) vs a plain SDPA forward on
one Llama-3-8B-shaped attention layer (32 query heads, 8 KV heads, d_head 128; random bf16
post-rotary q, k, v, causal), at T = 4K .. 128K on a CUDA device.

    python benchmarks/kernels.py [--device cuda:0] [--lengths 4096,16384,65536,131072]
    python benchmarks/kernels.py --device cpu --lengths 64,128 --backends torch,sdpa   # dry run

Per length and method: time (median of ``--repeats`` after one warm-up; CUDA-synchronised),
achieved TFLOP/s and GB/s, both also as a share of the device's peak *measured here* (a
bf16 8192^3 matmul, a 1 GiB device copy), and the peak memory the call added on top of its
inputs (``torch.cuda.max_memory_allocated``). FLOPs: causal SDPA 2 x (2 B H T^2 d / 2) (QK^T
and PV); statistics 2 x (2 B H T^2 d / 2) (QK^T in the row pass and again in the column
pass). Bytes: inputs read once plus outputs written (a lower bound: both are compute-bound).
The reference runs only up to ``--ref-max`` (its probability blocks grow as T^2 / blocks).
The Triton statistics are also checked against the reference at the smallest length
(max |entropy difference|, nats).

The goal of issue 12: statistics of every head at T = 131072 within 1.2x the memory and 1.5x
the time of a plain SDPA forward. ``gpu_check_rows(device)`` gives the rows for
``benchmarks/gpu_check.py`` (step, seconds, peak MiB, note).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
LLAMA3_8B = dict(heads=32, kv_heads=8, d_head=128)


def flops(method: str, b: int, h: int, t: int, d: int) -> float:
    """Matmul FLOPs of one call (causal: half the T x T products)."""
    return 2 * (2 * b * h * t * t * d / 2) if method in ("sdpa", "triton", "torch") else 0.0


def min_bytes(method: str, b: int, h: int, hkv: int, t: int, d: int, elt: int = 2) -> float:
    """Bytes a call must move at least: q, k (and v, o for SDPA) once, statistics written."""
    qk = (b * h * t * d + b * hkv * t * d) * elt
    if method == "sdpa":
        return qk + b * hkv * t * d * elt + b * h * t * d * elt
    return qk + b * h * t * 4 * 5 + b * h * t * 4 * 2                # 5 row stats + col_sum/count


def inputs(t: int, device, dtype=torch.bfloat16, b: int = 1, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    shape = LLAMA3_8B
    q = torch.randn(b, shape["heads"], t, shape["d_head"], device=device, dtype=dtype, generator=g)
    k = torch.randn(b, shape["kv_heads"], t, shape["d_head"], device=device, dtype=dtype, generator=g)
    v = torch.randn(b, shape["kv_heads"], t, shape["d_head"], device=device, dtype=dtype, generator=g)
    return q, k, v


def call(method: str, q, k, v, block_bytes: int):
    from workbench.cuda import head_stats

    scale = q.shape[-1] ** -0.5
    if method == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return head_stats(q, k, scaling=scale, causal=True, backend=method, block_bytes=block_bytes)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: str, q, k, v, repeats: int, block_bytes: int) -> tuple[float, float]:
    """(median seconds, peak MiB added on top of the inputs)."""
    device = q.device
    call(method, q, k, v, block_bytes)                                  # warm-up (autotune, compile)
    _sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = call(method, q, k, v, block_bytes)
        _sync(device)
        times.append(time.perf_counter() - t0)
        del out
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def device_peaks(device) -> tuple[float, float]:
    """Measured bf16 matmul TFLOP/s and copy GB/s of the device (nan on the CPU)."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    x = torch.empty(2**29, device=device, dtype=torch.float16)           # 1 GiB
    best_f = best_b = 0.0
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        a @ a
        _sync(device)
        best_f = max(best_f, 2 * 8192**3 / (time.perf_counter() - t0) / 1e12)
        _sync(device)
        t0 = time.perf_counter()
        x.clone()
        _sync(device)
        best_b = max(best_b, 2 * x.numel() * 2 / (time.perf_counter() - t0) / 1e9)
    del a, x
    torch.cuda.empty_cache()
    return best_f, best_b


def check_agreement(device, t: int, block_bytes: int) -> float:
    """max |entropy(triton) - entropy(reference)| (nats) on one length."""
    q, k, v = inputs(t, device)
    a = call("triton", q, k, v, block_bytes).entropy
    b = call("torch", q, k, v, block_bytes).entropy
    return float((a - b).abs().max())


def run(device, lengths, backends, repeats: int = 3, ref_max: int = 8192, block_bytes: int = 256 << 20) -> list[dict]:
    peak_tf, peak_gb = device_peaks(device)
    print(f"device {device}: measured peak {peak_tf:.0f} bf16 TFLOP/s, {peak_gb:.0f} GB/s", flush=True)
    rows = []
    s = LLAMA3_8B
    for t in lengths:
        q, k, v = inputs(t, device)
        base = {}
        for method in backends:
            if method == "torch" and t > ref_max:
                continue
            sec, mib = measure(method, q, k, v, repeats, block_bytes)
            tf = flops(method, 1, s["heads"], t, s["d_head"]) / sec / 1e12
            gb = min_bytes(method, 1, s["heads"], s["kv_heads"], t, s["d_head"]) / sec / 1e9
            base.setdefault(method, (sec, mib))
            ratio = ""
            if "sdpa" in base and method != "sdpa":
                ratio = f"{sec / base['sdpa'][0]:.2f}x time, {mib / base['sdpa'][1]:.2f}x memory of SDPA"
            row = dict(T=t, method=method, seconds=sec, peak_mib=mib, tflops=tf, gbps=gb,
                       tflops_share=tf / peak_tf, gbps_share=gb / peak_gb, vs_sdpa=ratio)
            rows.append(row)
            print(f"T={t:>6} {method:>6}: {sec * 1e3:9.2f} ms {mib:9.1f} MiB  {tf:7.1f} TFLOP/s "
                  f"({100 * row['tflops_share']:.0f}% of peak)  {gb:7.1f} GB/s  {ratio}", flush=True)
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def gpu_check_rows(device, lengths=(4096, 16384, 65536, 131072)) -> list[tuple[str, float, float, str]]:
    """Rows for benchmarks/gpu_check.py: (step, seconds, peak MiB, note)."""
    err = check_agreement(device, 1024, 256 << 20)
    out = [("kernels: head_stats triton vs reference, T=1024 bf16", float("nan"), float("nan"),
            f"max |entropy diff| {err:.2e} nats")]
    for r in run(device, list(lengths), ["sdpa", "triton", "torch"], repeats=3):
        out.append((f"kernels: {r['method']} T={r['T']}", r["seconds"], r["peak_mib"],
                    f"{r['tflops']:.0f} TFLOP/s ({100 * r['tflops_share']:.0f}%) {r['vs_sdpa']}".strip()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--lengths", default="4096,16384,65536,131072")
    ap.add_argument("--backends", default="sdpa,triton,torch", help="comma list of sdpa, triton, torch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-max", type=int, default=8192, help="longest T for the PyTorch reference")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; dry run with --device cpu --lengths 64,128 --backends torch,sdpa", file=sys.stderr)
        return 2
    lengths = [int(x) for x in args.lengths.split(",")]
    backends = args.backends.split(",")
    if device.type == "cuda" and "triton" in backends and "torch" in backends:
        print(f"triton vs reference, T=1024: max |entropy diff| {check_agreement(device, 1024, 256 << 20):.2e} nats")
    run(device, lengths, backends, args.repeats, args.ref_max)
    return 0


if __name__ == "__main__":
    sys.exit(main())
