"""Long context on CPU (issue 12 part 5; run by hand, prints two tables).

    python benchmarks/long_context.py [--niah 4096,8192] [--depths 0.5] [--tiny 4096,8192,16384,32768]
        [--tiny-runs plain,stats,fused] [--threads 1] [--rss-cap 6144] [--no-before] [--skip-niah] [--skip-tiny]

(a) Needle in a haystack on smollm2-135m (context window 8192) at each ``--niah`` length
(8192 is cut to 8192 - 16 so that the 16 decoded tokens fit the window): the retrieval
analysis (Wu et al. 2024) with ``lengths=(L,)``, the ``--depths`` and one needle, no masking
check, in a fresh process: the prompt but its last token is prefilled into the HF KV cache
through SDPA with no capture, and only the decode steps compute eager attention rows (one
query row per head over all keys). Time, the process's peak RSS (``ru_maxrss``) and the
peak RSS added during the analysis (VmHWM reset through /proc/self/clear_refs after the
model loads), accuracy and the top retrieval heads. At lengths <= 4096, unless
``--no-before``, also the path this replaced, for one prompt: the whole prompt prefilled
with ``Stats`` (blocked eager probabilities of every prompt row, reduced to row argmaxes),
then the same decode loop. HF eager ``output_attentions`` would hold 30 x 9 x T^2 float32
(18 GiB at T = 4096, 72 GiB at 8192), more than this machine has, so it is not run.

(b) A tiny random Llama (2 layers, d_model 64, 4 query / 2 KV heads, max positions 65536),
one forward of T tokens (logits of the last position only) at each ``--tiny`` T, each run in
a fresh process with ``--threads`` torch threads: ``plain`` (no capture), ``stats``
(``Stats()``, the default path: SDPA's output, the statistics recomputed in blocks of query
rows by ``cuda.stats.naive.head_stats``), ``fused`` (``Stats(attn_output="fused")``), and
``stats-mmap`` / ``fused-mmap`` (the same under ``MALLOC_MMAP_THRESHOLD_=131072``: glibc's
mmap threshold fixed, every allocation of 128 KiB or more mmapped and returned when freed).
Columns: time, peak RSS (``ru_maxrss``), RSS added by the forward over the loaded model
(VmHWM reset after a warm-up run), added MiB per 1K tokens, the increment per 1K tokens from
the previous T of the same run (constant when memory is linear in T), and the
``attention_mask`` layer 0's attention receives (None: no mask tensor, causal by flag). A
run is stopped once its RSS passes ``--rss-cap`` MiB.

Measured 2026-12-01/02, 23:22-00:08 UTC, 1 torch thread, nice 10, load average 5-6 from
other jobs on 2 cores (times inflated; RSS is not affected), after ae4ac09 (column sums
folded block by block) and the NIAH prompt-length fix:

    (a) smollm2-135m NIAH, needle 0 at depth 0.5, 16 new tokens at most, mask_k=0
    prompt tokens  path                                seconds  maxrss MiB  added MiB  MiB/1K tok  increment
       4096        streaming (SDPA prefill + rows)        61.6       1314        731      182.7
       8174        streaming (SDPA prefill + rows)       169.9       1978       1394      174.7       166.7
    attention mask at layer 0: None in the prefill and at the decode steps (no [1, 1, T, T]).
    Both retrieved " Tobias Copperfield."; heads with score > 0.1: 11 at 4K, 14 at 8K; top
    at 4K: 23/7, 18/7, 23/2 (1.00), 21/8, 17/3 (0.75); at 8K: 23/7, 23/2 (1.00), 18/8, 18/7,
    17/3, 20/6, 23/8 (0.75). Linear: the second 4K tokens add less than the first. The KV
    cache is 45 KiB per token; the rest is HF's own prefill (earlier: one plain HF SDPA
    forward of 4000 tokens on an unwrapped copy added 784 MiB; the 4K decode with the mmap
    threshold fixed added 722 MiB, so it is not allocator slack). Earlier figures (before
    the length fix the prompts had 4002 and 8174 tokens): 726 and 1497 MiB added; the path
    this replaced (Stats prefill) was killed after 42 min at 4K.

    (b) tiny random Llama, one forward of T tokens; mask None on every row
        T  run                            seconds  maxrss MiB  added MiB  MiB/1K tok  increment
     4096  plain                              0.2        485         22       5.49
     8192  plain                              2.0        502         39       4.85      4.21
    16384  plain                              9.2        538         75       4.66      4.47
    32768  plain                             15.0        583        119       3.73      2.80
     4096  Stats()                            2.6        790        326      81.62
     8192  Stats()                           29.9       2685       2222     277.73    473.84
    16384  Stats()                          131.5       5060       4596     287.27    296.82
    32768  Stats()                         stopped: RSS passed 6144 MiB after 21.1 s
     4096  Stats(attn_output="fused")         0.8        493         30       7.46
     8192  Stats(attn_output="fused")         9.1        507         43       5.41      3.36
    16384  Stats(attn_output="fused")        17.4        565        102       6.36      7.31
    32768  Stats(attn_output="fused")        62.4        668        205       6.39      6.43
     4096  Stats(), mmap threshold 128K      10.6        488         24       6.05
     8192  Stats(), mmap threshold 128K      51.4        501         37       4.68      3.31
    16384  Stats(), mmap threshold 128K     214.8        710        247      15.43     26.17
    32768  Stats(), mmap threshold 128K     728.7        586        122       3.82     -7.78
    (an earlier 4K/8K run of the same build: Stats() added 497 / 2076 MiB, fused 30 / 49)

The plain forward and the fused statistics trace are linear in T to 32K (about 4 and 6 MiB
per 1K tokens). The default ``Stats()`` trace is not, and no live tensor or mask explains it
(the mask is None; with the mmap threshold fixed the same trace adds 24-247 MiB): it is
glibc heap fragmentation caused by the allocation pattern of
``workbench.cuda.stats.naive.head_stats`` (H3's file, not changed here). Each block's small
results (entropy, max_pos, max_prob, lse, key_mass, n_keys: [batch, head, rows]) stay alive
in ``parts`` until the end, allocated between the block's MiB-sized temporaries (the bias,
scores, softmax, logsumexp and xlogy buffers), and the running column sums are a new
[batch, (head,) T] tensor every block (``sums[name] + blk``). Once the first 4 MiB block is
freed, glibc's dynamic mmap threshold rises above the block size, later blocks come from the
brk heap, the long-lived small chunks split the freed holes, and each block takes fresh heap:
about one block per block, and blocks per layer grow as T^2 (T rows / (block_bytes / (4 x
heads x T)) rows per block). The 16K outlier of the mmap-threshold run is the same effect at
a smaller scale: ``col_count`` [1, T] float32 is 64 KiB there, under the 128 KiB threshold,
reallocated every block; at 32K it is 128 KiB and mmapped. Allocating head_stats' outputs
once at the first block, writing each block's slice into them and adding the column sums in
place (``add_``) keeps the outputs bit for bit (tests/cuda/test_stats.py, tests/test_families.py
pass with it) and makes the default path linear: +45 / 83 / 99 / 182 MiB at 4K / 8K / 16K / 32K
with glibc's default malloc (measured with that change loaded over naive.py in the same
child; 4.4 / 10.1 / 80 / 449 s at the load above).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# peak RSS of this process in MiB (VmHWM; reset it with open("/proc/self/clear_refs", "w").write("5"))
HWM = r"""
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

NIAH_CHILD = HWM + r"""
import json, resource, sys, time, torch
import workbench as wb
from workbench.analyses import Context, retrieval
from workbench.analyses._niah import NEEDLES, build_prompt
from workbench.batch import Batch
from workbench.capture import Stats

L, mode, depths = int(sys.argv[1]), sys.argv[2], tuple(float(d) for d in sys.argv[3].split(","))
model = wb.load("smollm2-135m")
masks = []                                   # the attention_mask layer 0's attention receives (None: causal flag)
model.hf.model.layers[0].self_attn.register_forward_pre_hook(
    lambda m, a, kw: masks.append(None if kw.get("attention_mask") is None else
                                  [list(kw["attention_mask"].shape), str(kw["attention_mask"].dtype)]),
    with_kwargs=True)
from workbench.analyses._niah import greedy
greedy(model, build_prompt(model.tokenizer, NEEDLES[0], 64, 0.5, max_positions=8192).ids, 2, argmax=True)  # warm-up:
masks.clear()                                # weights paged in, one-time allocations made (~0.5 GiB, not T-dependent)
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
t0 = time.perf_counter()
out = {}
if mode == "streaming":
    res = retrieval.ANALYSIS.run(Context(model, None, {"lengths": (L,), "depths": depths, "needles": 1, "mask_k": 0}))
    s = res.summary
    tests = res.tables["niah_tests"]
    out = {"tests": s["tests"], "accuracy": s["accuracy"], "prompt_tokens": [int(x) for x in tests["length"]],
           "outputs": list(tests["output"]), "n_retrieval_heads": s["n_retrieval_heads"], "top": s["top"][:8]}
else:   # the path before: whole prompt prefilled with Stats (blocked eager rows), then the decode loop
    pr = build_prompt(model.tokenizer, NEEDLES[0], L, depths[0], max_positions=8192)
    ids = torch.tensor([pr.ids])
    with torch.no_grad():
        tr = model.run(Batch({"input_ids": ids, "use_cache": True, "logits_to_keep": 1}, {}, [{}]), capture=[Stats("self")])
        past, nxt, gen = tr.output.past_key_values, int(tr.logits[0, -1].argmax()), []
        for _ in range(16):
            gen.append(nxt)
            if any(c in model.tokenizer.decode([nxt]) for c in "\n."):
                break
            tr = model.run(Batch({"input_ids": torch.tensor([[nxt]]), "past_key_values": past, "use_cache": True,
                                  "logits_to_keep": 1}, {}, [{}]), capture=[Stats("self")])
            past, nxt = tr.output.past_key_values, int(tr.logits[0, -1].argmax())
    out = {"tests": 1, "prompt_tokens": [len(pr.ids)], "outputs": [model.tokenizer.decode(gen)]}
out.update(seconds=time.perf_counter() - t0, base_mib=base, peak_mib=hwm(), mask_prefill=masks[0], mask_decode=masks[-1],
           maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""

TINY_CHILD = HWM + r"""
import json, resource, sys, time, torch, transformers as tf
import workbench as wb
from workbench.batch import Batch

T, mode, cap = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])


def watchdog():                              # stop the run once its RSS passes cap MiB (a T^2 leak would take the machine)
    import os, threading
    t0 = time.perf_counter()
    while True:
        time.sleep(0.1)
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:") and int(line.split()[1]) / 1024 > cap:
                print(f"stopped: RSS passed {cap:.0f} MiB after {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                      flush=True)
                os._exit(3)


torch.manual_seed(0)
cfg = tf.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                     intermediate_size=128, vocab_size=97, max_position_embeddings=65536, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
model = wb.wrap(tf.LlamaForCausalLM(cfg).eval())
masks = []                                   # the attention_mask layer 0's attention receives (None: causal flag)
model.hf.model.layers[0].self_attn.register_forward_pre_hook(
    lambda m, a, kw: masks.append(None if kw.get("attention_mask") is None else
                                  [list(kw["attention_mask"].shape), str(kw["attention_mask"].dtype)]),
    with_kwargs=True)
ids = torch.randint(3, 97, (1, T), generator=torch.Generator().manual_seed(1))
batch = Batch({"input_ids": ids, "logits_to_keep": 1}, {"self": torch.ones_like(ids, dtype=torch.bool)})
with torch.no_grad():
    model.run(Batch({"input_ids": ids[:, :8]}, {"self": torch.ones(1, 8, dtype=torch.bool)}), capture=[wb.Stats()])
capture = {"plain": [], "stats": [wb.Stats()], "fused": [wb.Stats(attn_output="fused")]}[mode]
masks.clear()
__import__("threading").Thread(target=watchdog, daemon=True).start()
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
t0 = time.perf_counter()
with torch.no_grad():
    tr = model.run(batch, capture=capture)
sec = time.perf_counter() - t0
if mode != "plain":
    assert tr.stats[("self", 1)].row_max_pos.shape == (1, 4, T)
print(json.dumps({"seconds": sec, "base_mib": base, "peak_mib": hwm(), "mask": masks[-1],
                  "threads": torch.get_num_threads(),
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


# glibc malloc with its dynamic mmap threshold off: freed blocks go back to the system at once
MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _child(code: str, *args, env: dict | None = None) -> dict:
    env = {**os.environ, **(env or {})}
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def niah(lengths, depths: str, before: bool) -> None:
    print("\n(a) smollm2-135m needle in a haystack, one needle, depths " + depths + ", CPU, fresh process per row")
    print(f"{'context':>8} {'path':<36}{'tests':>6}{'acc':>6}{'seconds':>9}{'maxrss MiB':>12}{'added MiB':>11}"
          f"{'MiB / 1K tok':>14}{'increment MiB / 1K tok':>24}")
    last: dict = {}
    for n in lengths:
        L = min(n, 8192 - 16)
        runs = [("streaming (SDPA prefill + decode rows)", "streaming")]
        if before and n <= 4096:
            runs.append(("before: Stats prefill, 1 prompt", "before"))
        for name, mode in runs:
            r = _child(NIAH_CHILD, L, mode, depths)
            if "error" in r:
                print(f"{L:>8} {name:<36}  error: {r['error']}", flush=True)
                continue
            acc = f"{r['accuracy']:.2f}" if "accuracy" in r else "-"
            added, tok = r["peak_mib"] - r["base_mib"], max(r["prompt_tokens"])
            inc = "" if mode not in last else f"{(added - last[mode][1]) / ((tok - last[mode][0]) / 1024):.2f}"
            last[mode] = (tok, added)
            print(f"{L:>8} {name:<36}{r['tests']:>6}{acc:>6}{r['seconds']:>9.1f}{r['maxrss_mib']:>12.0f}"
                  f"{added:>11.0f}{added / (tok / 1024):>14.2f}{inc:>24}", flush=True)
            print(f"{'':>9}prompt tokens {r['prompt_tokens']}, outputs {r['outputs']}; attention mask at layer 0: "
                  f"prefill {r['mask_prefill']}, last decode step {r['mask_decode']}")
            if "top" in r:
                print(f"{'':>9}retrieval heads (score > 0.1): {r['n_retrieval_heads']}; top: "
                      + ", ".join(f"{t['head']}={t['score']:.2f}" for t in r["top"]), flush=True)


TINY_RUNS = {"plain": ("plain", None), "stats": ("stats", None), "fused": ("fused", None),
             "stats-mmap": ("stats", MMAP), "fused-mmap": ("fused", MMAP)}
TINY_NAMES = {"plain": "plain", "stats": "Stats()", "fused": 'Stats(attn_output="fused")',
              "stats-mmap": "Stats(), mmap threshold 128K", "fused-mmap": "fused, mmap threshold 128K"}


def tiny(ts, which=tuple(TINY_RUNS), threads: int = 1, cap_mib: float = 6144) -> None:
    """One row per (T, run); the last column is the RSS added per 1K tokens between this T
    and the previous one of the same run (constant when memory is linear in T)."""
    print("\n(b) tiny random Llama (2 layers x 4 heads, d_model 64, max positions 65536), CPU, "
          f"{threads} torch thread(s), fresh process per row")
    print(f"{'T':>7} {'run':<30}{'seconds':>9}{'maxrss MiB':>12}{'added MiB':>11}{'MiB / 1K tok':>14}"
          f"{'increment MiB / 1K tok':>24}")
    env_t = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    last: dict = {}
    for t in ts:
        for w in which:
            mode, env = TINY_RUNS[w]
            r = _child(TINY_CHILD, t, mode, cap_mib, env={**env_t, **(env or {})})
            if "error" in r:
                print(f"{t:>7} {TINY_NAMES[w]:<30}  error: {r['error']}", flush=True)
                continue
            added = r["peak_mib"] - r["base_mib"]
            inc = "" if w not in last else f"{(added - last[w][1]) / ((t - last[w][0]) / 1024):.2f}"
            last[w] = (t, added)
            print(f"{t:>7} {TINY_NAMES[w]:<30}{r['seconds']:>9.1f}{r['maxrss_mib']:>12.0f}{added:>11.0f}"
                  f"{added / (t / 1024):>14.2f}{inc:>24}   mask {r['mask']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--niah", default="4096,8192")
    ap.add_argument("--depths", default="0.5")
    ap.add_argument("--tiny", default="4096,8192,16384,32768")
    ap.add_argument("--tiny-runs", default="plain,stats,fused", help="any of " + ", ".join(TINY_RUNS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each child process")
    ap.add_argument("--rss-cap", type=float, default=6144, help="MiB of RSS at which a tiny-model run is stopped")
    ap.add_argument("--no-before", action="store_true")
    ap.add_argument("--skip-niah", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()
    import torch

    print(f"torch threads = {torch.get_num_threads()}")
    if not args.skip_tiny:
        tiny([int(x) for x in args.tiny.split(",")], args.tiny_runs.split(","), args.threads, args.rss_cap)
    if not args.skip_niah:
        niah([int(x) for x in args.niah.split(",")], args.depths, not args.no_before)


if __name__ == "__main__":
    main()
