"""Benchmark: the circuit analyses on smollm2-135m and IOI, side by side in one run.

- DLA of all heads (and every head x key position) vs one plain forward of the same batch
  (interleaved repetitions, median of each; wall-clock and this process's CPU time, the
  steadier figure on a shared machine);
- path patching of all 270 senders into the top-5 receivers (by |DLA|: the heads writing
  the answer directly) through q, k and v, vs the naive loop (one full forward per
  (sender, receiver, kind), ``naive_path_patching``): the naive loop is timed on
  ``--naive-sample`` triples and extrapolated to all of them; the sampled effects are
  compared with the batched ones (max |diff|);
- QK attribution of one head for all (query, key) pairs of one prompt (plus the check
  max |sum of contributions - score|);
- composition scores of all 270 x 270 pairs.

Run by hand:  python benchmarks/circuits.py [--n 8] [--reps 3] [--naive-sample 12] [--threads 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _both(fn):
    """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU time
    is the steadier measure of the work done."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


_SHOWN: set = set()


def _show(res: dict) -> None:
    """Print the figures not printed yet (each section as it finishes)."""
    for k, v in res.items():
        if k not in _SHOWN:
            _SHOWN.add(k)
            print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--naive-sample", type=int, default=12)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a crowded machine)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    import workbench
    from workbench.circuits.composition import composition
    from workbench.circuits.dla import dla
    from workbench.circuits.path_patching import KINDS, naive_path_patching, path_patching
    from workbench.circuits.qk_attribution import qk_attribution
    from workbench.tasks import build

    torch.manual_seed(0)
    m = workbench.load("smollm2-135m")
    task = build(m, "ioi", n=a.n, seed=0)
    b = task.clean
    res: dict = {"model": m.name, "n_prompts": a.n, "tokens": int(b.model_inputs["input_ids"].shape[1]),
                 "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                 "load_avg_start": os.getloadavg()[0]}

    def forward():
        with torch.no_grad():
            return m.hf(**b.model_inputs)

    fw, dl, d0 = [], [], []
    forward()
    dla(m, b, task.metric, per_position=True)
    for _ in range(a.reps):                                           # interleaved: same load for all
        fw.append(_both(forward)[:2])
        d0.append(_both(lambda: dla(m, b, task.metric, per_position=False))[:2])
        t, c, r = _both(lambda: dla(m, b, task.metric, per_position=True))
        dl.append((t, c))
    med = lambda xs, i: statistics.median(x[i] for x in xs)          # noqa: E731
    res["forward_s"], res["dla_s"], res["dla_heads_only_s"] = med(fw, 0), med(dl, 0), med(d0, 0)
    res["dla_over_forward"] = res["dla_s"] / res["forward_s"]
    res["dla_heads_only_over_forward"] = res["dla_heads_only_s"] / res["forward_s"]
    res["forward_cpu_s"], res["dla_cpu_s"] = med(fw, 1), med(dl, 1)
    res["dla_over_forward_cpu"] = res["dla_cpu_s"] / res["forward_cpu_s"]
    res["dla_heads_only_over_forward_cpu"] = med(d0, 1) / res["forward_cpu_s"]
    res["dla_max_abs_sum_minus_logit_diff"] = float((r.total - r.actual).abs().max())
    _show(res)

    top = r.head_table().sort_values("dla.rank").head(5)
    from workbench._types import Head

    receivers = Head.from_table(top)
    res["receivers"] = [h.name for h in receivers]
    t, pr = _time(lambda: path_patching(m, b, task.metric, receivers, corrupt=task.corrupt))
    n_triples = int((~torch.isnan(pr.effects[..., 0])).sum())
    res["path_s"], res["path_triples"] = t, n_triples
    g = torch.Generator().manual_seed(0)
    valid = torch.nonzero(~torch.isnan(pr.effects[..., 0]))
    pick = valid[torch.randperm(len(valid), generator=g)[:a.naive_sample]]
    t0, diffs = time.perf_counter(), []
    for s, rr, k in pick.tolist():
        want = naive_path_patching(m, b, task.metric, pr.senders[s], pr.receivers[rr], KINDS[k], corrupt=task.corrupt)
        diffs.append(float((pr.effects[s, rr, k] - want).abs().max()))
    per = (time.perf_counter() - t0) / len(pick)
    res["naive_per_triple_s"], res["naive_extrapolated_s"] = per, per * n_triples
    res["path_speedup_vs_naive"] = per * n_triples / res["path_s"]
    res["path_max_abs_diff_vs_naive"] = max(diffs)
    _show(res)

    head = receivers[0]
    t, q = _time(lambda: qk_attribution(m, b, head, input=0))
    t2, _ = _time(lambda: [q.matrix(i, j) for i in range(q.actual.shape[0]) for j in range(i + 1)])
    res["qk_head"], res["qk_s"], res["qk_all_pair_matrices_s"] = head.name, t, t2
    res["qk_components"] = len(q.components)
    res["qk_max_abs_sum_minus_score"] = float((q.scores() - q.actual).abs().max())

    t, (table, scores, _) = _time(lambda: composition(m))
    res["composition_s"], res["composition_pairs"] = t, int((~torch.isnan(scores[..., 0])).sum())
    res["load_avg_end"] = os.getloadavg()[0]
    _show(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
