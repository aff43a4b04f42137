"""Long context on CPU (issue 12 part 5; run by hand, prints two tables).

    python benchmarks/long_context.py [--niah 4096,8192] [--depths 0.5] [--tiny 4096,8192,16384,32768]
        [--tiny-runs plain,stats,fused] [--threads 1] [--rss-cap 6144] [--niah-runs streaming,before]
        [--no-before] [--skip-niah] [--skip-tiny]

(a) Needle in a haystack on smollm2-135m (context window 8192) at each ``--niah`` length
(8192 is cut to 8192 - 16 so that the 16 decoded tokens fit the window): the retrieval
analysis (Wu et al. 2024) with ``lengths=(L,)``, the ``--depths`` and one needle, no masking
check, in a fresh process: the prompt but its last token is prefilled into the HF KV cache
through SDPA with no capture, and only the decode steps compute eager attention rows (one
query row per head over all keys). Time, the process's peak RSS (``ru_maxrss``), the peak
RSS added during the analysis (VmHWM reset through /proc/self/clear_refs after the model
loads and a 64-token warm-up decode has paged its weights in, ~0.5 GiB otherwise counted),
per 1K prompt tokens and as the increment from the previous length, the attention mask the
model receives, accuracy and the top retrieval heads. ``--niah-runs``: ``streaming``,
``streaming-mmap`` (under ``MALLOC_MMAP_THRESHOLD_=131072``, see (b)) and, at lengths <=
4096 unless ``--no-before``, ``before``: the path this replaced, for one prompt: the whole prompt prefilled
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

Measured 2026-12-01/02 with 1 torch thread, nice 10, load average 5-6 from other jobs on 2
cores (times inflated and only comparable within a table; RSS is not affected). "added":
VmHWM over the loaded model; "anon": the sampled RssAnon peak (equal to "added" in every row:
no file-backed pages in it).

    (a) smollm2-135m NIAH, needle 0 at depth 0.5, 16 new tokens at most, mask_k=0, 01:00 UTC,
        after the prompt-length fix (earlier prompts had 4002 / 8174 tokens for 4096 / 8176)
    prompt tokens  path                              seconds  added MiB  MiB/1K tok  increment/1K tok
       2043        streaming (SDPA prefill + rows)      21.9        206       103.4
       4096        streaming                            47.2        289        72.3        41.3
       6144        streaming                            79.6        586        97.7       148.6
       8174        streaming                           139.1        786        98.4       100.6
       2043        streaming, mmap threshold 128K       22.8        144        72.0
       4096        streaming, mmap threshold 128K       44.0        526       131.6       191.0
       6144        streaming, mmap threshold 128K       83.2        771       128.5       122.3
       8174        streaming, mmap threshold 128K      288.3        768        96.2        -1.6
    Every test retrieved " Tobias Copperfield."; 13 heads with score > 0.1 at 8K (top: 23/7,
    23/2 1.00; 17/4, 18/7, 18/6, 17/3, 20/6 0.75). Attention mask at layer 0: None in the
    prefill and at every decode step (no [1, 1, T, T] tensor). The whole-run peak varies by
    up to ~250 MiB between runs of the same length (4096: 289, 475, 731 MiB in three runs;
    8174: 786, 1121, 1394), with or without the mmap threshold, so the increments are noisy;
    per forward it is exactly linear (mmap threshold fixed, RSS over the warmed-up model,
    prompt 2043 / 4096 / 8174 tokens): prefill peak +139 / +286 / +577 MiB (70 MiB per 1K
    tokens), after the prefill +90 / +178 / +359 MiB (the KV cache: 30 layers x 2 x 3 KV
    heads x 64 x 4 B = 45 KiB per token), each decode step's peak < 25 MiB above that. The
    path this replaced (Stats prefill of every prompt row) was killed after 42 min at 4K.

    (b) tiny random Llama, one forward of T tokens, 01:00 UTC (after H3's d0ec31e / 0c315ea:
        head_stats' scores, probabilities and p ln p in one buffer per call); mask None on every row
        T  run                            seconds  maxrss MiB  added MiB  MiB/1K tok  increment/1K tok
     4096  plain                              0.4        484         21       5.24
     8192  plain                              1.7        497         34       4.23       3.21
    16384  plain                              7.8        539         76       4.74       5.25
     4096  Stats()                            2.8        609        146      36.51
     8192  Stats()                           11.4        924        460      57.52      78.52
    16384  Stats()                          109.8       1207        744      46.49      35.46
     4096  Stats(attn_output="fused")         1.3        493         29       7.36
     8192  Stats(attn_output="fused")         2.7        518         55       6.86       6.37
    16384  Stats(attn_output="fused")        16.7        587        123       7.70       8.53
    32768  plain                             21.4        607        143       4.48       4.23
    32768  Stats()                          111.5       5974       5510     172.18     297.88
    32768  Stats(attn_output="fused")        15.1        659        195       6.10       4.51
    Before H3's buffer (23:22-00:00 UTC, ae4ac09): Stats() added 326 / 2222 / 4596 MiB at 4K /
    8K / 16K and passed the 6 GiB cap 21 s into 32K; with the mmap threshold fixed 24 / 37 /
    247 / 122 MiB at 4K-32K; plain 22 / 39 / 75 / 119 MiB and fused 30 / 43 / 102 / 205 MiB.

The plain forward and the fused statistics trace are linear in T to 32K (about 4 and 7 MiB
per 1K tokens). The default ``Stats()`` trace was quadratic (+0.3 / 2.2 / 4.6 GiB at 4K /
8K / 16K) and still is after H3's buffer (146 / 460 / 744 / 5510 MiB at 4K-32K). No live
tensor or mask explains it (the mask is None): it is glibc heap fragmentation from how
``workbench.cuda.stats.naive.head_stats`` (H3's file, not changed here) allocates. Each
block's small results (entropy, max_pos, max_prob, lse, key_mass, n_keys: [batch, head,
rows]) stay alive in ``parts`` until a final ``torch.cat``, allocated between the block's
temporaries, and the running column sums are a new [batch, (head,) T] tensor every block
(``sums[name] + blk``). Once a block-sized chunk is freed glibc's dynamic mmap threshold
rises above it, later blocks come from the brk heap, the long-lived small chunks split the
freed holes, and each block takes fresh heap; the number of blocks per layer grows as T^2
(T rows / (block_bytes / (4 x heads x T)) rows per block). (The 16K outlier of the
mmap-threshold run is the same effect: ``col_count`` [1, T] float32 is 64 KiB there, under
the 128 KiB threshold, and reallocated every block; at 32K it is 128 KiB and mmapped.)
Allocating head_stats' outputs once at the first block, writing each block's slice into
them (``narrow(...).copy_``) and adding the column sums in place (``add_``) keeps the
outputs bit for bit (tests/cuda/test_stats.py and tests/test_families.py pass with it; the
4K and 8K statistics equal ae4ac09's) and makes the default path linear: +51 / 66 / 89 / 172
MiB at 4K / 8K / 16K / 32K on top of H3's buffer (106.6 s at 32K; before that buffer: +45 /
83 / 99 / 182 MiB), with
glibc's default malloc (measured with that change loaded over naive.py in the same child).
That change is now in naive.py (8516245). The run after it (01:10 UTC, 1 thread, load ~4):

        T  run                            seconds  maxrss MiB  added MiB  MiB/1K tok  increment/1K tok
     4096  plain                              0.1        482         19       4.67
     4096  Stats()                            1.9        513         50      12.38
     4096  Stats(attn_output="fused")         0.5        496         32       8.04
     8192  plain                              0.6        498         34       4.23       3.79
     8192  Stats()                            7.1        529         65       8.11       3.85
     8192  Stats(attn_output="fused")         1.1        516         52       6.52       5.00
    16384  plain                              1.7        540         76       4.74       5.24
    16384  Stats()                           30.2        552         88       5.48       2.85
    16384  Stats(attn_output="fused")         4.7        559         96       5.98       5.45
    32768  plain                              7.0        584        120       3.74       2.73
    32768  Stats()                          111.8        632        168       5.25       5.02
    32768  Stats(attn_output="fused")        16.8        623        159       4.97       3.96

Every path is linear in T to 32K: 3-5 MiB per 1K tokens between consecutive T.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# peak RSS of this process in MiB (VmHWM; reset it with open("/proc/self/clear_refs", "w").write("5")), and
# the peak of its anonymous memory (RssAnon, no file-backed pages such as re-read weights) sampled every 2 ms
# from reset_peaks() on (a lower bound: a peak shorter than a sample interval can be missed)
HWM = r"""
import threading as _threading, time as _time


def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024


def hwm():
    return _status("VmHWM:")


_anon = {}


def _sample():
    while True:
        _anon["peak"] = max(_anon["peak"], _status("RssAnon:"))
        _time.sleep(0.002)


def reset_peaks():
    open("/proc/self/clear_refs", "w").write("5")
    _anon["base"] = _anon["peak"] = _status("RssAnon:")
    if not _anon.get("thread"):
        _anon["thread"] = _threading.Thread(target=_sample, daemon=True)
        _anon["thread"].start()
    return hwm()


def anon_added():
    return max(_anon["peak"], _status("RssAnon:")) - _anon["base"]
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
base = reset_peaks()
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
out.update(seconds=time.perf_counter() - t0, base_mib=base, peak_mib=hwm(), anon_mib=anon_added(), mask_prefill=masks[0], mask_decode=masks[-1],
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
base = reset_peaks()
t0 = time.perf_counter()
with torch.no_grad():
    tr = model.run(batch, capture=capture)
sec = time.perf_counter() - t0
if mode != "plain":
    assert tr.stats[("self", 1)].row_max_pos.shape == (1, 4, T)
print(json.dumps({"seconds": sec, "base_mib": base, "peak_mib": hwm(), "anon_mib": anon_added(), "mask": masks[-1],
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


def _increments(last: dict, run: str, tokens: int, added: float, anon: float) -> tuple[str, str]:
    """MiB per 1K tokens added (peak RSS, sampled anonymous peak) since the previous length of
    the same run, as text ("" for a run's first row); records this row in ``last``."""
    out = ("", "")
    if run in last:
        t0, a0, n0 = last[run]
        k = (tokens - t0) / 1024
        out = (f"{(added - a0) / k:.2f}", f"{(anon - n0) / k:.2f}")
    last[run] = (tokens, added, anon)
    return out


NIAH_RUNS = {"streaming": ("streaming (SDPA prefill + decode rows)", "streaming", False),
             "streaming-mmap": ("streaming, mmap threshold 128K", "streaming", True),
             "before": ("before: Stats prefill, 1 prompt", "before", False)}


def niah(lengths, depths: str, which=("streaming", "before")) -> None:
    print("\n(a) smollm2-135m needle in a haystack, one needle, depths " + depths + ", CPU, fresh process per row")
    print(f"{'context':>8} {'path':<36}{'tests':>6}{'acc':>6}{'seconds':>9}{'maxrss MiB':>12}{'added MiB':>11}"
          f"{'anon MiB':>10}{'MiB / 1K tok':>14}{'increment / 1K tok':>20}{'anon incr.':>12}")
    last: dict = {}
    for n in lengths:
        L = min(n, 8192 - 16)
        for w in which:
            name, mode, mmap = NIAH_RUNS[w]
            if w == "before" and n > 4096:
                continue
            r = _child(NIAH_CHILD, L, mode, depths, env=MMAP if mmap else None)
            r = _child(NIAH_CHILD, L, mode, depths)
            if "error" in r:
                print(f"{L:>8} {name:<36}  error: {r['error']}", flush=True)
                continue
            acc = f"{r['accuracy']:.2f}" if "accuracy" in r else "-"
            added, tok = r["peak_mib"] - r["base_mib"], max(r["prompt_tokens"])
            inc, ainc = _increments(last, w, tok, added, r["anon_mib"])
            print(f"{L:>8} {name:<36}{r['tests']:>6}{acc:>6}{r['seconds']:>9.1f}{r['maxrss_mib']:>12.0f}"
                  f"{added:>11.0f}{r['anon_mib']:>10.0f}{added / (tok / 1024):>14.2f}{inc:>20}{ainc:>12}", flush=True)
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
    print(f"{'T':>7} {'run':<30}{'seconds':>9}{'maxrss MiB':>12}{'added MiB':>11}{'anon MiB':>10}{'MiB / 1K tok':>14}"
          f"{'increment / 1K tok':>20}{'anon incr.':>12}")
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
            inc, ainc = _increments(last, w, t, added, r["anon_mib"])
            print(f"{t:>7} {TINY_NAMES[w]:<30}{r['seconds']:>9.1f}{r['maxrss_mib']:>12.0f}{added:>11.0f}"
                  f"{r['anon_mib']:>10.0f}{added / (t / 1024):>14.2f}{inc:>20}{ainc:>12}   mask {r['mask']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--niah", default="4096,8192")
    ap.add_argument("--depths", default="0.5")
    ap.add_argument("--tiny", default="4096,8192,16384,32768")
    ap.add_argument("--tiny-runs", default="plain,stats,fused", help="any of " + ", ".join(TINY_RUNS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each child process")
    ap.add_argument("--rss-cap", type=float, default=6144, help="MiB of RSS at which a tiny-model run is stopped")
    ap.add_argument("--niah-runs", default="streaming,before", help="any of " + ", ".join(NIAH_RUNS))
    ap.add_argument("--no-before", action="store_true", help="drop 'before' from --niah-runs")
    ap.add_argument("--skip-niah", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()
    import torch

    print(f"torch threads = {torch.get_num_threads()}")
    if not args.skip_tiny:
        tiny([int(x) for x in args.tiny.split(",")], args.tiny_runs.split(","), args.threads, args.rss_cap)
    if not args.skip_niah:
        runs = [w for w in args.niah_runs.split(",") if not (args.no_before and w == "before")]
        niah([int(x) for x in args.niah.split(",")], args.depths, runs)


if __name__ == "__main__":
    main()
