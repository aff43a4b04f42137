"""Long context on CPU (issue 12 part 5; run by hand, prints two tables).

    python benchmarks/long_context.py [--niah 4096,8192] [--depths 0.5] [--tiny 4096,8192,16384,32768]
                                      [--tiny-runs plain,stats,stats-mmap] [--no-before] [--skip-niah] [--skip-tiny]

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
a statistics trace (``Stats`` of every head) at each ``--tiny`` T, one fresh process per T:
peak RSS (``ru_maxrss``), peak RSS added by the forward, and time, against a plain forward
(no capture) in its own fresh process. Linear memory shows as a constant MiB per 1K tokens.
The statistics trace is run twice: with glibc's default malloc, whose dynamic mmap
threshold rises to the size of the 4 MiB probability blocks once one is freed, so later
blocks come from the heap, which fragments and is not given back (RSS then grows about
with T^2 although no live tensor does), and with ``MALLOC_MMAP_THRESHOLD_=131072`` (the
threshold fixed, every block mmapped and returned when freed).

Measured 2026-12-01, 2 CPU threads with the load average at 20-40 from other jobs (times are
inflated several-fold and only comparable within a row group; RSS is not affected):

    (a) smollm2-135m NIAH, needle 0 at depth 0.5, 16 new tokens at most, mask_k=0
    prompt tokens  path                                seconds  maxrss MiB  added MiB
       4002        streaming (SDPA prefill + rows)       215.3       1310        726
       8174        streaming (SDPA prefill + rows)       748.1       2080       1497
       4002        before: Stats prefill (blocked)      killed after 42 min (load ~35)
    both retrieved " Tobias Copperfield."; heads with score > 0.1: 13 at 4K, 14 at 8K;
    top at 4K: 23/7, 18/7, 23/2 (1.00), 17/4, 17/3, 20/6 (0.75); at 8K: 23/7, 23/2 (1.00),
    18/8, 18/7, 17/3, 20/6, 23/8 (0.75). Added RSS 183 MiB per 1K prompt tokens at both
    lengths (linear). The KV cache itself is 45 KiB per token; the rest is not allocator
    slack (the 4K greedy decode alone with MALLOC_MMAP_THRESHOLD_=131072 added 722 MiB) and
    not the workbench: one plain HF SDPA forward of 4000 tokens on an unwrapped copy
    (use_cache, logits_to_keep=1) added 784 MiB. It is HF's own prefill.

    (b) tiny random Llama, one forward of T tokens (logits of the last position only)
        T  run                          seconds  maxrss MiB  added MiB  added MiB / 1K tok
     4096  plain                            3.6        483         20        4.98
     8192  plain                           22.4        494         31        3.82
    16384  plain                           22.1        536         72        4.51
    32768  plain                           70.8        608        144        4.49
     4096  stats                          142.5        896        433      108.14
     8192  stats                          718.1       3222       2758      344.76
     4096  stats, mmap threshold 128K     259.3        493         29        7.26
     8192  stats, mmap threshold 128K     596.9        544         81       10.09
    16384 / 32768 stats: not run (at this load about 40 and 160 min each).

The plain forward is linear in T to 32K. The statistics trace is not, for two reasons in
``workbench.cuda.stats.naive.head_stats``: with glibc's default malloc the freed 4 MiB
probability blocks are not returned (433 -> 2758 MiB from 4K to 8K), and even with the
threshold fixed each block's ``col_sum`` [batch, head, T] and ``col_count`` [batch, T] are
kept in ``parts`` until the end, (T / rows per block) x T floats: 29 -> 81 MiB here, and
about 0.3 GiB at 16K and 2.6 GiB at 32K for this model (summing them block by block as they
come, in the same order, keeps the result bit for bit and the memory linear).
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
out.update(seconds=time.perf_counter() - t0, base_mib=base, peak_mib=hwm(),
           maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""

TINY_CHILD = HWM + r"""
import json, resource, sys, time, torch, transformers as tf
import workbench as wb
from workbench.batch import Batch

T, mode = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
cfg = tf.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                     intermediate_size=128, vocab_size=97, max_position_embeddings=65536, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
model = wb.wrap(tf.LlamaForCausalLM(cfg).eval())
ids = torch.randint(3, 97, (1, T), generator=torch.Generator().manual_seed(1))
batch = Batch({"input_ids": ids, "logits_to_keep": 1}, {"self": torch.ones_like(ids, dtype=torch.bool)})
with torch.no_grad():
    model.run(Batch({"input_ids": ids[:, :8]}, {"self": torch.ones(1, 8, dtype=torch.bool)}), capture=[wb.Stats()])
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
t0 = time.perf_counter()
with torch.no_grad():
    tr = model.run(batch, capture=[wb.Stats()] if mode == "stats" else [])
sec = time.perf_counter() - t0
if mode == "stats":
    assert tr.stats[("self", 1)].row_max_pos.shape == (1, 4, T)
print(json.dumps({"seconds": sec, "base_mib": base, "peak_mib": hwm(),
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
    print(f"{'context':>8} {'path':<36}{'tests':>6}{'acc':>6}{'seconds':>9}{'maxrss MiB':>12}{'added MiB':>11}")
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
            print(f"{L:>8} {name:<36}{r['tests']:>6}{acc:>6}{r['seconds']:>9.1f}{r['maxrss_mib']:>12.0f}"
                  f"{r['peak_mib'] - r['base_mib']:>11.0f}", flush=True)
            print(f"{'':>9}prompt tokens {r['prompt_tokens']}, outputs {r['outputs']}")
            if "top" in r:
                print(f"{'':>9}retrieval heads (score > 0.1): {r['n_retrieval_heads']}; top: "
                      + ", ".join(f"{t['head']}={t['score']:.2f}" for t in r["top"]), flush=True)


TINY_RUNS = {"plain": ("plain", None), "stats": ("stats", None), "stats-mmap": ("stats", MMAP)}
TINY_NAMES = {"plain": "plain", "stats": "stats", "stats-mmap": "stats, mmap threshold 128K"}


def tiny(ts, which=tuple(TINY_RUNS)) -> None:
    print("\n(b) tiny random Llama (2 layers x 4 heads, d_model 64, max positions 65536), CPU, fresh process per row")
    print(f"{'T':>7} {'run':<26}{'seconds':>9}{'maxrss MiB':>12}{'added MiB':>11}{'added MiB / 1K tok':>20}")
    runs = [(TINY_NAMES[w], *TINY_RUNS[w]) for w in which]
    for t in ts:
        for name, mode, env in runs:
            r = _child(TINY_CHILD, t, mode, env=env)
            if "error" in r:
                print(f"{t:>7} {name:<26}  error: {r['error']}", flush=True)
                continue
            added = r["peak_mib"] - r["base_mib"]
            print(f"{t:>7} {name:<26}{r['seconds']:>9.1f}{r['maxrss_mib']:>12.0f}{added:>11.0f}"
                  f"{added / (t / 1024):>20.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--niah", default="4096,8192")
    ap.add_argument("--depths", default="0.5")
    ap.add_argument("--tiny", default="4096,8192,16384,32768")
    ap.add_argument("--tiny-runs", default="plain,stats,stats-mmap", help="any of plain, stats, stats-mmap")
    ap.add_argument("--no-before", action="store_true")
    ap.add_argument("--skip-niah", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()
    import torch

    print(f"torch threads = {torch.get_num_threads()}")
    if not args.skip_tiny:
        tiny([int(x) for x in args.tiny.split(",")], args.tiny_runs.split(","))
    if not args.skip_niah:
        niah([int(x) for x in args.niah.split(",")], args.depths, not args.no_before)


if __name__ == "__main__":
    main()
