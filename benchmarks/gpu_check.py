"""GPU check: the CUDA tests and the tracing and patching benchmarks on a CUDA device,
against the CPU float32 reference, in one table (about 3-5 minutes on one GPU; budget 8).

    python benchmarks/gpu_check.py [--device cuda:0] [--n 8] [--skip-tests]
    python benchmarks/gpu_check.py --device cpu --skip-tests --n 2 --t 256 --layers 2   # dry run

Steps:
1. ``pytest -m gpu`` (tests that need CUDA; skipped on machines without one).
2. smollm2-135m statistics trace of all 270 heads at T = 2048 and pattern capture at
   T = 256, float32 and bfloat16 on the device; error = max |difference| of the row
   entropies (nats) resp. the probabilities vs the same capture in float32 on the CPU.
3. IOI patching of every head (resample, noising, logit difference in nats) with the exact
   fast path (float32, bfloat16), the naive loop and AtP* on the device; error = max
   |difference| of the per-input effects vs the same method in float32 on the CPU.
4. whisper-tiny.en encoder statistics in float16 (its checkpoint dtype) vs CPU float32.
5. ``benchmarks/kernels.py``: the head-statistics Triton kernel vs its PyTorch reference
   and a plain SDPA layer on a Llama-3-8B-shaped layer (bf16) at ``--kernel-lengths``
   (CUDA only; ``--skip-kernels`` leaves it out).

Time: wall clock of the step on the device (``torch.cuda.synchronize`` around it, one
warm-up forward before the traces); peak memory: ``torch.cuda.max_memory_allocated``
during the step (model weights included). Exit status 0 when every step ran and the
tests passed, 1 otherwise, 2 without a CUDA device.

Not yet run on a GPU. The dry run on the CPU (``--device cpu --skip-tests --n 2 --t 256
--layers 2``, 2026-12-01) ran every step: float32 equals the reference (0 for traces,
exact and AtP*; naive 7.2e-6 nats), bfloat16 differs by up to 0.18 nats of row entropy,
0.096 of probability and 0.18 nats of IOI effect (30 layers of bfloat16 rounding), and
whisper-tiny.en in float16 by 0.01 nats of encoder entropy.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS: list[tuple[str, float, float, str]] = []       # (step, seconds, peak MiB, error)


def _timed(device, fn):
    if device.type != "cuda":                      # --device cpu: a dry run of the script itself
        t0 = time.perf_counter()
        return fn(), time.perf_counter() - t0, float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) / 2**20


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(step: str, seconds: float, peak: float, error: str) -> None:
    ROWS.append((step, seconds, peak, error))
    print(f"  {step}: {seconds:.2f} s, {peak:.0f} MiB, {error}", flush=True)


def gpu_tests() -> bool:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                        str(ROOT / "tests")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    ROWS.append(("pytest -m gpu", time.perf_counter() - t0, float("nan"), tail))
    print(f"  pytest -m gpu: {tail}", flush=True)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-2000:], sep="\n")
    return r.returncode == 0


def _ids(t: int, vocab: int):
    from workbench.batch import Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab - 100, (1, t), generator=g)
    return Batch({"input_ids": ids}, {"self": torch.ones_like(ids, dtype=torch.bool)}, [{}])


def tracing(device, t_stats: int = 2048) -> None:
    import workbench as wb

    cpu = wb.load("smollm2-135m")
    vocab = cpu.hf.config.vocab_size
    long, short = _ids(t_stats, vocab), _ids(256, vocab)
    with torch.no_grad():
        ref_stats = cpu.run(long, capture=[wb.Stats()]).stats
        ref_pattern = cpu.run(short, capture=[wb.Pattern()]).pattern
    for dtype in ("float32", "bfloat16"):
        model = wb.load("smollm2-135m", device=device, dtype=dtype)
        with torch.no_grad():
            model.run(_ids(8, vocab))                                          # warm-up
            tr, s, peak = _timed(device, lambda: model.run(long, capture=[wb.Stats()]))
            err = max((tr.stats[k].row_entropy.cpu() - v.row_entropy).abs().max().item() for k, v in ref_stats.items())
            _row(f"smollm2 Stats T={t_stats} {dtype}", s, peak, f"entropy {err:.1e} nats")
            tr, s, peak = _timed(device, lambda: model.run(short, capture=[wb.Pattern()]))
            err = max((tr.pattern[k].cpu() - v).abs().max().item() for k, v in ref_pattern.items())
            _row(f"smollm2 Pattern T=256 {dtype}", s, peak, f"pattern {err:.1e}")
        del model
        _free(device)


def patching(device, n: int, layers: int | None = None) -> None:
    import workbench as wb
    from workbench.patching import patch
    from workbench.tasks import build

    cpu = wb.load("smollm2-135m")
    task = build(cpu, "ioi", n=n)
    heads = [h for h in cpu.heads() if layers is None or h.layer < layers]

    def run(model, method):
        return patch(model, task.clean, task.metric, corrupt=task.corrupt, heads=heads, method=method).per_input

    ref = {m: run(cpu, m) for m in ("exact", "atp*")}
    for dtype, methods in (("float32", ("exact", "naive", "atp*")), ("bfloat16", ("exact", "atp*"))):
        model = wb.load("smollm2-135m", device=device, dtype=dtype)
        for method in methods:
            eff, s, peak = _timed(device, lambda: run(model, method))
            want = ref["exact" if method == "naive" else method]
            err = (eff - want).abs().max().item()
            _row(f"IOI patch {method} {dtype} (n={n}, {len(heads)} heads)", s, peak, f"effect {err:.1e} nats")
        del model
        _free(device)


def whisper(device) -> None:
    import workbench as wb
    from workbench.inputs import builtin_clips, load_audio

    clip = builtin_clips()[0]
    cpu = wb.load("whisper-tiny.en")
    batch = cpu.prepare_audio([load_audio(clip)], paths=[clip])
    with torch.no_grad():
        ref = cpu.run(batch, capture=[wb.Stats("encoder")]).stats
        model = wb.load("whisper-tiny.en", device=device, dtype="auto")
        tr, s, peak = _timed(device, lambda: model.run(batch, capture=[wb.Stats("encoder")]))
    n = batch.items[0]["n_frames"]
    err = max((tr.stats[k].row_entropy.cpu()[..., :n] - v.row_entropy[..., :n]).abs().max().item()
              for k, v in ref.items())
    _row(f"whisper-tiny.en encoder Stats {model.dtype}".replace("torch.", ""), s, peak, f"entropy {err:.1e} nats")


def kernels(device, lengths: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from kernels import gpu_check_rows                     # benchmarks/kernels.py

    ROWS.extend(gpu_check_rows(device, tuple(int(x) for x in lengths.split(","))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=8, help="IOI prompt pairs")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--t", type=int, default=2048, help="tokens of the statistics trace (default 2048)")
    ap.add_argument("--layers", type=int, default=None, help="patch only the heads of the first LAYERS layers")
    ap.add_argument("--kernel-lengths", default="4096,16384,65536", help="T of the kernel benchmark (comma list)")
    ap.add_argument("--skip-kernels", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine (torch.cuda.is_available() is False): nothing checked")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} (dry run)"
    print(f"{where}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    ok = True
    steps = [("tests", gpu_tests)] if not args.skip_tests else []
    steps += [("tracing", lambda: tracing(device, args.t)), ("patching", lambda: patching(device, args.n, args.layers)),
              ("whisper", lambda: whisper(device))]
    if device.type == "cuda" and not args.skip_kernels:
        steps.append(("kernels", lambda: kernels(device, args.kernel_lengths)))
    for name, step in steps:
        try:
            ok = (step() is not False) and ok
        except Exception as exc:                                   # report and go on with the next step
            ok = False
            ROWS.append((name, float("nan"), float("nan"), f"FAILED {type(exc).__name__}: {str(exc)[:120]}"))
            print(f"  {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
    print(f"\nGPU check on {where} ({time.perf_counter() - t0:.0f} s in all); "
          "error = max |device - CPU float32|")
    print(f"{'step':<44}{'seconds':>9}{'peak MiB':>10}  error")
    for step, s, peak, err in ROWS:
        print(f"{step:<44}{s:>9.2f}{peak:>10.0f}  {err}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
