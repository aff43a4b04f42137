"""Tracing overhead and memory on smollm2-135m (run by hand; prints a table).

    python benchmarks/tracing.py [--reps 5] [--skip-lens]

Time: a plain HF SDPA forward (an unwrapped copy of the model), our statistics trace of
all 270 heads (entropy + sink statistics), and TransformerLens TransformerBridge
run_with_cache, interleaved on the same input at T = 256, median of --reps.
Memory: in a fresh process that has loaded the model, the peak RSS (VmHWM, reset through
/proc/self/clear_refs just before the forward) of one plain forward, one statistics-only
trace (probabilities in blocks of query rows, ``_attention.STATS_BLOCK_BYTES``), the same
with the whole T x T of a site at once (``stats-1block``, the behaviour before blocking),
and for contrast one trace that keeps every layer's pattern, at T = 256, 2048 and 4096
(no all-patterns run at 4096: ~18 GiB).

    python benchmarks/tracing.py --memory-only

Precision and dispatch (issue 10), each in a fresh process, side by side: the statistics
trace at T = 2048 in float32 vs bfloat16 (``load(dtype=)``), and at T = 512 the plain model
vs the same model dispatched with accelerate, layers 15-29 offloaded to disk
(``load(device_map=..., offload_folder=...)``). Time of the forward, RSS after loading
(the model) and peak RSS during the forward.

    python benchmarks/tracing.py --precision

Measured 2026-12-01, 2 CPU threads, one run of the four (load average ~3 from other jobs):

    run                                  seconds  MiB after load  MiB added by the trace
    T=2048 stats float32                   41.8        1066              814
    T=2048 stats bfloat16                  54.4         809              359
    T=512  stats plain                      8.1        1065              163
    T=512  stats offloaded (15/30 disk)    10.6         871              286

bfloat16 halves what the trace adds (359 vs 814 MiB) and the weights take ~260 MiB less,
but is slower on this CPU (no native bfloat16 matmul). Offloading keeps half the layers
off the RSS at rest; streaming them in costs time and RSS during the forward.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

T_TIME = 256


def _ids(model, t):
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, model.hf.config.vocab_size - 100, (1, t), generator=g)


def timing(reps: int, lens: bool) -> list[tuple[str, float]]:
    import transformers as tf

    import workbench as wb
    from workbench.batch import Batch

    model = wb.load("smollm2-135m")
    plain = tf.AutoModelForCausalLM.from_pretrained(model.meta["cache"], dtype=torch.float32).eval()
    ids = _ids(model, T_TIME)
    batch = Batch({"input_ids": ids}, {"self": torch.ones_like(ids, dtype=torch.bool)})
    fns = {
        "HF SDPA forward, no capture": lambda: plain(input_ids=ids),
        "workbench Stats, 270 heads": lambda: model.run(batch, capture=[wb.Stats()]),
        "workbench Pattern, 270 heads": lambda: model.run(batch, capture=[wb.Pattern()]),
    }
    if lens:
        from transformer_lens.model_bridge import TransformerBridge

        hf2 = tf.AutoModelForCausalLM.from_pretrained(model.meta["cache"], dtype=torch.float32)
        bridge = TransformerBridge.boot_transformers(model.meta["cache"], hf_model=hf2, tokenizer=model.tokenizer,
                                                     device="cpu")
        fns["TransformerLens run_with_cache"] = lambda: bridge.run_with_cache(ids)
    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()                                    # warm-up
        for _ in range(reps):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return [(k, statistics.median(v)) for k, v in times.items()]


CHILD = r"""
import json, sys, tempfile, time, torch, workbench as wb
from workbench import _attention
from workbench.batch import Batch
t, mode = int(sys.argv[1]), sys.argv[2]
dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
offload = len(sys.argv) > 4 and sys.argv[4] == "offload"
if mode == "stats-1block":
    _attention.STATS_BLOCK_BYTES = 1 << 62
if offload:   # layers 15..29 on disk, the rest resident on the CPU
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
          **{f"model.layers.{i}": "cpu" if i < 15 else "disk" for i in range(30)}}
    model = wb.load("smollm2-135m", dtype=dtype, device_map=dm, offload_folder=tempfile.mkdtemp() + "/offload")
    assert len(model.offloaded) == 15
else:
    model = wb.load("smollm2-135m", dtype=dtype)
g = torch.Generator().manual_seed(0)
ids = torch.randint(100, 49000, (1, t), generator=g)
batch = Batch({"input_ids": ids}, {"self": torch.ones_like(ids, dtype=torch.bool)})
def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
with torch.no_grad():
    model.run(Batch({"input_ids": ids[:, :8]}, {"self": torch.ones(1, 8, dtype=torch.bool)}))  # warm-up
open("/proc/self/clear_refs", "w").write("5")          # reset the peak RSS (VmHWM) to the current RSS
base = hwm_mib()
t0 = time.perf_counter()
with torch.no_grad():
    if mode == "plain":
        model.run(batch)
    else:
        model.run(batch, capture=[wb.Stats()] if mode.startswith("stats") else [wb.Pattern()])
seconds = time.perf_counter() - t0
print(json.dumps({"base_mib": base, "peak_mib": hwm_mib(), "seconds": seconds}))
"""


def _child(*args) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def precision():
    """Statistics traces: T=2048 float32 vs bfloat16; T=512 plain vs offloaded (fresh processes).
    Yields (run name, figures) as each finishes."""
    runs = [("T=2048 stats float32", (2048, "stats", "float32")),
            ("T=2048 stats bfloat16", (2048, "stats", "bfloat16")),
            ("T=512 stats plain", (512, "stats", "float32")),
            ("T=512 stats offloaded (15/30 layers on disk)", (512, "stats", "float32", "offload"))]
    for name, args in runs:
        yield name, _child(*args)


def memory() -> list[tuple[int, str, dict]]:
    rows = []
    for t in (256, 2048, 4096):
        for mode in ("plain", "stats", "stats-1block") + (("pattern",) if t <= 2048 else ()):
            rows.append((t, mode, _child(t, mode)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-lens", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--precision", action="store_true", help="only the dtype / dispatch table")
    args = ap.parse_args()
    if args.precision:
        print(f"\nsmollm2-135m statistics trace of all 270 heads, batch 1, CPU, torch threads = {torch.get_num_threads()}")
        print(f"{'run':<46}{'seconds':>9}{'model MiB':>11}{'peak MiB':>10}{'added MiB':>11}", flush=True)
        for name, r in precision():
            if "error" in r:
                print(f"{name:<46}  error: {r['error']}")
            else:
                print(f"{name:<46}{r['seconds']:>9.2f}{r['base_mib']:>11.0f}{r['peak_mib']:>10.0f}"
                      f"{r['peak_mib'] - r['base_mib']:>11.0f}", flush=True)
        return
    if not args.memory_only:
        rows = timing(args.reps, not args.skip_lens)
        base = rows[0][1]
        print(f"\nsmollm2-135m, batch 1, T = {T_TIME}, torch threads = {torch.get_num_threads()}, median of {args.reps}")
        print(f"{'method':<34}{'seconds':>10}{'x SDPA':>9}")
        for k, v in rows:
            print(f"{k:<34}{v:>10.4f}{v / base:>9.2f}")
    print("\npeak RSS of a fresh process (model loaded, one forward)")
    print(f"{'T':>6}  {'capture':<14}{'before MiB':>12}{'peak MiB':>10}{'added MiB':>11}{'seconds':>9}")
    for t, mode, r in memory():
        if "error" in r:
            print(f"{t:>6}  {mode:<14}  error: {r['error']}")
        else:
            print(f"{t:>6}  {mode:<14}{r['base_mib']:>12.0f}{r['peak_mib']:>10.0f}{r['peak_mib'] - r['base_mib']:>11.0f}"
                  f"{r['seconds']:>9.2f}")


if __name__ == "__main__":
    main()
