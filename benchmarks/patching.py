"""Benchmark: all-heads exact activation patching on smollm2-135m for an IOI batch.

Compares, on the same clean/corrupt IOI batch (resample ablation, noising, per head over
all positions, metric = logit(IO) - logit(S) at the last token):

- fast path (``workbench.patching``, method ``exact``; ``update=z`` and ``update=rank``),
- our naive loop (one ``Model.run`` per head with a ``SetZ`` edit),
- a TransformerLens ``TransformerBridge`` loop: one ``run_with_hooks`` per head, overwriting
  ``blocks.{l}.attn.hook_z[:, :, h]`` with the corrupt run's value (optional: needs
  ``pip install transformer-lens``; skipped with the reason otherwise),
- AtP and AtP* (time, Spearman correlation of |effect| and of the signed effect, and
  recall of the exact top-20 heads by |effect|),
- verified AtP* (``workbench.patching.verified``) at K = 20 and 40 (``--verify-k``), with
  ``--verify-sample`` random other heads patched exactly for the false-negative estimate:
  time, max |diff| of the verified heads' effects against the exact sweep, Spearman of its
  ranking (verified heads by |exact effect|, then the rest by AtP* score) against exact
  |effect|, recall of the exact top 20 among its top 20, how many of the exact top 20 are in
  the AtP* top K ("found"), and the time budget AtP* + K / n_heads x exact.

q, k, v nodes (``--nodes z,q,k``; ``workbench.patching.nodes``): the same rows for patching a
head's query (270 query heads) or key / value input (90 key/value heads: smollm2 has 3 KV heads
per layer), plus "AtP + QK fix" (AtP*'s exact softmax for the patched q/k, without GradDrop;
computed in the AtP* run, so no time of its own). The TransformerLens loop runs for z only.
For ``atp*`` rows the Spearman is of the AtP* magnitude against exact |effect|; ``rho e`` (the
signed Spearman) is given for the signed estimates. For verified AtP*, the exact top-20 units
not in the AtP* top K are listed with their exact rank, AtP* rank and plain-AtP rank.

Figures (2026-12-02 00:44-01:06 UTC, one run: ``--n 8 --corruption both --nodes z,q,k --reps 1
--loop-heads 30``, 1 torch thread, load average 4.5-7 from other jobs; CPU seconds, loops extrapolated
from 30 units; "found" = exact top 20 in the AtP* top K; budget = AtP* + K/N x exact, CPU s):

    task   exact  naive  TL    AtP  AtP*  rho|e| AtP/AtP*/QK  verified K=40: found, CPU s (budget; + sample)
    s2 z   23.6   175.0  174.7 2.9  9.3   0.941/0.843/-      20/20, 13.3 (12.8; 14.6)
    s2 q   23.4   174.1  -     2.9  11.7  0.925/0.831/0.965  20/20, 15.2 (15.2; 16.9)
    s2 k   10.7   51.9   -     2.7  9.2   0.878/0.778/0.991  20/20, 14.9 (14.0; 16.4)
    abc z  52.5   183.6  193.8 3.0  10.1  0.917/0.804/-      19/20 (self/17/0: exact rank 13, AtP* 44), 19.9 (17.9; 21.8)
    abc q  52.7   173.9  -     2.6  8.9   0.899/0.857/0.965  20/20, 20.1 (16.8; 20.7)
    abc k  20.7   55.9   -     2.4  9.1   0.866/0.853/0.931  20/20, 22.9 (18.3; 22.9)

max |diff| fast (update=z) vs naive 0 everywhere; TransformerLens loop vs fast 1.7e-5 (s2) and 2.3e-5 (abc).
The whole printed tables are in the issue-11 closing note.

Run by hand:  python benchmarks/patching.py [--n 8] [--corruption s2|abc|both] [--nodes z,q,k]
[--loop-nodes z] [--reps 2] [--skip-naive] [--skip-lens] [--verify-k 20,40] [--verify-sample 20]
Prints a table per corruption and node; ``--json FILE`` also writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def recall_at(a: torch.Tensor, ref: torch.Tensor, k: int = 20) -> float:
    top = set(torch.argsort(ref.abs(), descending=True)[:k].tolist())
    got = set(torch.argsort(a.abs(), descending=True)[:k].tolist())
    return len(top & got) / k


def lens_runner(model, task, heads):
    """A callable timing one TransformerBridge loop: one run_with_hooks per head, returning the
    per-input effects [head, input]. Bridge boot (outside the timing) needs transformer-lens."""
    import transformers as tf
    from transformer_lens.model_bridge import TransformerBridge

    folder = model.meta.get("cache") or model.source
    hf = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=model.tokenizer, device="cpu")
    clean = task.clean.model_inputs["input_ids"]
    corrupt = task.corrupt.model_inputs["input_ids"]
    met = task.metric
    idx = torch.arange(len(clean))

    def run() -> torch.Tensor:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(corrupt, names_filter=lambda n: n.endswith("attn.hook_z"))
            base = met(bridge(clean)[idx[:, None], met.positions()], idx)
            out = torch.zeros(len(heads), len(clean))
            for i, h in enumerate(heads):
                name = f"blocks.{h.layer}.attn.hook_z"

                def hook(z, hook, h=h, name=name):
                    z[:, :, h.head] = cache[name][:, :, h.head]
                    return z

                logits = bridge.run_with_hooks(clean, fwd_hooks=[(name, hook)])
                out[i] = met(logits[idx[:, None], met.positions()], idx) - base
            return out
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="IOI prompt pairs (default 8)")
    ap.add_argument("--template", type=int, default=0, help="IOI template index (one template: no padding)")
    ap.add_argument("--corruption", default="s2",
                    help="IOI corruption: s2 (one token differs), abc (names differ from position 1), both, or a "
                         "comma-separated order (abc,s2)")
    ap.add_argument("--verify-k", default="20,40", help="K values of verified AtP* (comma-separated; '' for none)")
    ap.add_argument("--verify-sample", type=int, default=20, help="verified AtP*: random other heads patched")
    ap.add_argument("--nodes", default="z,q,k", help="nodes to patch, comma-separated from z, q, k, v (default z,q,k)")
    ap.add_argument("--loop-heads", type=int, default=0,
                    help="naive and TransformerLens loops on this many units spread evenly over the model "
                         "(0: all); their time is extrapolated to every unit and max |diff| is over those units")
    ap.add_argument("--skip-rank", action="store_true", help="no fast exact (update=rank) row")
    ap.add_argument("--lean", action="store_true",
                    help="only the exact sweep and AtP* run (for a loaded machine): the AtP row is AtP*'s signed "
                         "AtP, and verified AtP* at each K is derived (AtP* top K given their exact effects, "
                         "no sample), so those rows have no time of their own")
    ap.add_argument("--loop-nodes", default="z,q,k,v",
                    help="nodes for which the naive (and, for z, TransformerLens) loops run (default all)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-lens", action="store_true")
    ap.add_argument("--reps", type=int, default=1, help="repetitions, round robin; the fastest is reported")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import workbench as wb

    model = wb.load("smollm2-135m")
    figures = {}
    order = ("s2", "abc") if args.corruption == "both" else tuple(args.corruption.split(","))
    if not set(order) <= {"s2", "abc"}:
        ap.error(f"--corruption {args.corruption}: use s2, abc, both or a comma-separated list of them")
    for corruption in order:
        for node in [x.strip() for x in args.nodes.split(",") if x.strip()]:
            figures[f"{corruption}/{node}"] = one_task(model, corruption, args, node)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


def one_task(model, corruption: str, args, node: str = "z") -> dict:
    from workbench import tasks
    from workbench.patching import patch, verified_patch

    task = tasks.ioi(model, n=args.n, template=None if args.template < 0 else args.template,
                     corruption=corruption)

    def ours(method, **kw):
        return lambda: patch(model, task.clean, task.metric, corrupt=task.corrupt, method=method, node=node, **kw)

    from workbench.patching.nodes import units

    runners = {"fast exact (update=z)": ours("exact")}
    if not args.skip_rank:
        runners["fast exact (update=rank)"] = ours("exact", update="rank")
    every = units(model, node)
    sub = every if args.loop_heads <= 0 else every[::max(1, len(every) // args.loop_heads)][:args.loop_heads]
    sub_rows = torch.tensor([every.index(h) for h in sub])
    scale = len(every) / len(sub)                    # loop times are extrapolated to every unit
    loops = node in args.loop_nodes.split(",")
    if not args.skip_naive and loops:
        runners["naive loop (Model.run per head)"] = ours("naive", heads=sub)
    notes = []
    if len(sub) < len(every) and loops:
        notes.append(f"naive / TransformerLens loops: {len(sub)} of {len(every)} units (every "
                     f"{len(every) // len(sub)}th), time x {scale:.1f} to all units, max |diff| over those units")
    if not args.skip_lens and node == "z" and loops:
        try:
            runners["TransformerLens bridge loop"] = lens_runner(model, task, sub)
        except ImportError as exc:
            notes.append(f"TransformerLens loop skipped: {exc.name} is not installed (pip install transformer-lens)")
    if args.lean:
        runners = {name: fn for name, fn in runners.items() if name.startswith("fast exact")}
        notes.append("--lean: AtP row = AtP*'s signed AtP; verified rows derived from the AtP* top K and the exact "
                     "sweep (no false-negative sample); no loops")
    else:
        runners["AtP"] = ours("atp")
    runners["AtP*"] = ours("atp*")
    for k in [int(x) for x in args.verify_k.split(",") if x.strip() and not args.lean]:
        runners[f"verified AtP* K={k} (+{args.verify_sample})"] = (
            lambda k=k: verified_patch(model, task.clean, task.metric, corrupt=task.corrupt, k=k,
                                       sample=args.verify_sample, top=min(20, k), node=node))
    best: dict = {}
    cpu: dict = {}                                   # process CPU seconds (robust on a shared machine)
    results: dict = {}
    for _ in range(args.reps):                       # round robin, keep the fastest of each
        for name, fn in runners.items():
            t, c = time.perf_counter(), time.process_time()
            r = fn()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if name.startswith(("naive", "TransformerLens")):
                dt, dc = dt * scale, dc * scale
            best[name] = min(best.get(name, float("inf")), dt)
            cpu[name] = min(cpu.get(name, float("inf")), dc)
            results[name] = r
    exact = results["fast exact (update=z)"]
    ref = exact.per_input
    if args.lean:
        import dataclasses

        star = results["AtP*"]
        results = {**{n: r for n, r in results.items() if n != "AtP*"},
                   "AtP": dataclasses.replace(star, per_input=star.extra["atp"], method="atp", extra={}),
                   "AtP*": star}
        best["AtP"] = cpu["AtP"] = float("nan")

    def effects(r):
        return r if torch.is_tensor(r) else r.per_input

    rows, extra = [], []
    n_heads = len(exact.heads)
    for name, r in results.items():
        if name.startswith("verified"):
            v = r.verification
            done = ~torch.isnan(r.per_input[:, 0])
            diff = float((r.per_input[done] - ref[done]).abs().max())
            score = (len(r.heads) + 1 - r.rank()).double()   # higher = earlier in its ranking, > 0
            top_exact = set(torch.argsort(exact.effect.abs(), descending=True)[:20].tolist())
            top_k = {i for i, role in enumerate(r.role) if role == "top-k"}
            budget = best["AtP*"] + v["k"] / n_heads * best["fast exact (update=z)"]
            budget_m = best["AtP*"] + (v["k"] + v["sample"]) / n_heads * best["fast exact (update=z)"]
            cbudget = cpu["AtP*"] + v["k"] / n_heads * cpu["fast exact (update=z)"]
            cbudget_m = cpu["AtP*"] + (v["k"] + v["sample"]) / n_heads * cpu["fast exact (update=z)"]
            rows.append((name, best[name], diff, spearman(score, exact.effect.abs()), None,
                         recall_at(score, exact.effect.abs())))
            missed = sorted(top_exact - top_k, key=lambda i: -float(exact.effect[i].abs()))
            if missed:
                star_rank = rank_of(results["AtP*"].effect)
                atp_rank = rank_of(results["AtP"].effect.abs())
                ex_rank = rank_of(exact.effect.abs())
                extra.append(f"{name}: missed " + "; ".join(
                    f"{exact.heads[i].name} (exact {float(exact.effect[i]):+.3f}, rank {ex_rank[i]}; AtP* "
                    f"{float(results['AtP*'].effect[i]):.3f}, rank {star_rank[i]}; AtP {float(results['AtP'].effect[i]):+.3f},"
                    f" rank {atp_rank[i]})" for i in missed))
            extra.append(f"{name}: exact top-20 found in the AtP* top {v['k']}: {len(top_exact & top_k)}/20; "
                         f"time {best[name]:.1f} s (AtP* {v['seconds_atp_star']:.1f} + exact "
                         f"{v['seconds_exact']:.1f}) vs budget AtP* + K/N exact = {budget:.1f} s "
                         f"(+ sample: {budget_m:.1f} s); CPU {cpu[name]:.1f} s vs budget {cbudget:.1f} s (+ sample: "
                         f"{cbudget_m:.1f} s); false negatives: {v['important_in_sample']}/{v['sample']} "
                         f"sampled >= tau {v['tau']:.3g}, estimate {v['false_negatives_estimate']:.1f}, "
                         f"95% bound {v['false_negatives_ucb']} of {v['unverified']}")
            continue
        if name.startswith("AtP"):
            signed = spearman(r.effect, exact.effect) if name == "AtP" else None
            rows.append((name, best[name], None, spearman(r.effect.abs(), exact.effect.abs()), signed,
                         recall_at(r.effect, exact.effect)))
            if name == "AtP*" and "atp_qk" in r.extra:
                qk = r.extra["atp_qk"].mean(1)
                rows.append(("AtP + QK fix (no GradDrop)", float("nan"), None, spearman(qk.abs(), exact.effect.abs()),
                             spearman(qk, exact.effect), recall_at(qk, exact.effect)))
        else:
            part = ref[sub_rows] if effects(r).shape[0] < ref.shape[0] else ref
            rows.append((name, best[name], float((effects(r) - part).abs().max()), None, None, None))
    fig = {"exact": best["fast exact (update=z)"]}
    ids = task.clean.model_inputs["input_ids"]
    first = int(torch.nonzero((ids != task.corrupt.model_inputs["input_ids"]).any(0))[0])
    unit = "KV heads" if node in ("k", "v") else "heads"
    print(f"\nsmollm2-135m, IOI ({corruption} corruption, first differing token at position {first}), node {node}: "
          f"{ids.shape[0]} pairs x {ids.shape[1]} tokens, {len(exact.heads)} {unit}, resample "
          f"noising; clean LD {float(exact.clean_metric.mean()):.3f}, corrupt LD "
          f"{float(exact.corrupt_metric.mean()):.3f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}, "
          f"best of {args.reps}")
    for note in notes:
        print(note)
    hdr = (f"{'method':34s} {'time s':>8s} {'t/t_fast':>8s} {'cpu s':>7s} {'c/c_fast':>8s} {'max|diff|':>10s} "
           f"{'rho |e|':>8s} {'rho e':>7s} {'top20':>6s}")
    print(hdr)
    print("-" * len(hdr))
    for name, sec, diff, rho_abs, rho, rec in rows:
        f = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None and v == v else f"{'':>{w}s}"  # noqa: E731
        speed = sec / fig["exact"] if sec == sec else None
        c = cpu.get(name, float("nan"))
        cspeed = c / cpu["fast exact (update=z)"] if c == c else None
        dstr = f"{diff:>10.2e}" if diff is not None else f"{'':>10s}"
        print(f"{name:34s} {f(sec, 8, 1)} {f(speed, 7, 2)}x {f(c, 7, 1)} {f(cspeed, 7, 2)}x {dstr} {f(rho_abs, 8, 3)} "
              f"{f(rho, 7, 3)} {f(rec, 6, 2)}")
    if args.lean:
        for k in [int(x) for x in args.verify_k.split(",") if x.strip()]:
            extra.append(derived_verified(exact, results["AtP*"], results["AtP"], k))
    for line in extra:
        print(line)
    return {"rows": rows, "notes": extra, "seconds": best, "cpu_seconds": cpu, "n": ids.shape[0], "tokens": ids.shape[1],
            "corruption": corruption, "node": node, "reps": args.reps}


def derived_verified(exact, star, atp, k: int) -> str:
    """Verified AtP* at K from the AtP* scores and the exact sweep: its ranking (the AtP* top K by
    |exact effect|, then the rest by AtP* score), Spearman and top-20 recall against exact |effect|,
    the exact top 20 found in the AtP* top K, and the ones missed."""
    ex = exact.effect.abs()
    top_k = torch.argsort(star.effect, descending=True, stable=True)[:k]
    verified = set(top_k.tolist())
    order = sorted(range(len(ex)), key=lambda i: (i not in verified, -float(ex[i] if i in verified else star.effect[i])))
    score = torch.empty(len(ex), dtype=torch.float64)
    score[torch.tensor(order)] = torch.arange(len(ex), 0, -1, dtype=torch.float64)   # > 0, larger = earlier
    top_exact = set(torch.argsort(ex, descending=True)[:20].tolist())
    missed = sorted(top_exact - set(top_k.tolist()), key=lambda i: -float(ex[i]))
    sr, ar, er = rank_of(star.effect), rank_of(atp.effect.abs()), rank_of(ex)
    line = (f"verified AtP* K={k} (derived): Spearman {spearman(score, ex):.3f}, top-20 recall "
            f"{recall_at(score, ex):.2f}, exact top-20 found in the AtP* top {k}: {len(top_exact) - len(missed)}/20")
    if missed:
        line += "; missed " + "; ".join(
            f"{exact.heads[i].name} (exact {float(exact.effect[i]):+.3f}, rank {er[i]}; AtP* "
            f"{float(star.effect[i]):.3f}, rank {sr[i]}; AtP {float(atp.effect[i]):+.3f}, rank {ar[i]})" for i in missed)
    return line


def rank_of(score: torch.Tensor) -> list[int]:
    """1 = largest score."""
    order = torch.argsort(score, descending=True, stable=True)
    r = torch.empty_like(order)
    r[order] = torch.arange(1, len(order) + 1)
    return r.tolist()


if __name__ == "__main__":
    raise SystemExit(main())
