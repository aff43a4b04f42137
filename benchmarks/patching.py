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

Run by hand:  python benchmarks/patching.py [--n 8] [--corruption s2|abc|both] [--reps 2]
[--skip-naive] [--skip-lens] [--verify-k 20,40] [--verify-sample 20]
Prints a table per corruption; ``--json FILE`` also writes the figures.
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
    ap.add_argument("--corruption", default="s2", choices=("s2", "abc", "both"),
                    help="IOI corruption: s2 (one token differs), abc (names differ from position 1) or both")
    ap.add_argument("--verify-k", default="20,40", help="K values of verified AtP* (comma-separated; '' for none)")
    ap.add_argument("--verify-sample", type=int, default=20, help="verified AtP*: random other heads patched")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-lens", action="store_true")
    ap.add_argument("--reps", type=int, default=1, help="repetitions, round robin; the fastest is reported")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import workbench as wb

    model = wb.load("smollm2-135m")
    figures = {}
    for corruption in (("s2", "abc") if args.corruption == "both" else (args.corruption,)):
        figures[corruption] = one_task(model, corruption, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


def one_task(model, corruption: str, args) -> dict:
    from workbench import tasks
    from workbench.patching import patch, verified_patch

    task = tasks.ioi(model, n=args.n, template=None if args.template < 0 else args.template,
                     corruption=corruption)

    def ours(method, **kw):
        return lambda: patch(model, task.clean, task.metric, corrupt=task.corrupt, method=method, **kw)

    runners = {"fast exact (update=z)": ours("exact"), "fast exact (update=rank)": ours("exact", update="rank")}
    if not args.skip_naive:
        runners["naive loop (Model.run per head)"] = ours("naive")
    notes = []
    if not args.skip_lens:
        try:
            runners["TransformerLens bridge loop"] = lens_runner(model, task, model.heads())
        except ImportError as exc:
            notes.append(f"TransformerLens loop skipped: {exc.name} is not installed (pip install transformer-lens)")
    runners["AtP"] = ours("atp")
    runners["AtP*"] = ours("atp*")
    for k in [int(x) for x in args.verify_k.split(",") if x.strip()]:
        runners[f"verified AtP* K={k} (+{args.verify_sample})"] = (
            lambda k=k: verified_patch(model, task.clean, task.metric, corrupt=task.corrupt, k=k,
                                       sample=args.verify_sample, top=min(20, k)))
    best: dict = {}
    results: dict = {}
    for _ in range(args.reps):                       # round robin, keep the fastest of each
        for name, fn in runners.items():
            t = time.perf_counter()
            r = fn()
            dt = time.perf_counter() - t
            best[name] = min(best.get(name, float("inf")), dt)
            results[name] = r
    exact = results["fast exact (update=z)"]
    ref = exact.per_input

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
            rows.append((name, best[name], diff, spearman(score, exact.effect.abs()), None,
                         recall_at(score, exact.effect.abs())))
            extra.append(f"{name}: exact top-20 found in the AtP* top {v['k']}: {len(top_exact & top_k)}/20; "
                         f"time {best[name]:.1f} s (AtP* {v['seconds_atp_star']:.1f} + exact "
                         f"{v['seconds_exact']:.1f}) vs budget AtP* + K/N exact = {budget:.1f} s "
                         f"(+ sample: {budget_m:.1f} s); false negatives: {v['important_in_sample']}/{v['sample']} "
                         f"sampled >= tau {v['tau']:.3g}, estimate {v['false_negatives_estimate']:.1f}, "
                         f"95% bound {v['false_negatives_ucb']} of {v['unverified']}")
            continue
        if name.startswith("AtP"):
            signed = spearman(r.effect, exact.effect) if name == "AtP" else None
            rows.append((name, best[name], None, spearman(r.effect.abs(), exact.effect.abs()), signed,
                         recall_at(r.effect, exact.effect)))
        else:
            rows.append((name, best[name], float((effects(r) - ref).abs().max()), None, None, None))
    fig = {"exact": best["fast exact (update=z)"]}
    ids = task.clean.model_inputs["input_ids"]
    first = int(torch.nonzero((ids != task.corrupt.model_inputs["input_ids"]).any(0))[0])
    print(f"\nsmollm2-135m, IOI ({corruption} corruption, first differing token at position {first}): "
          f"{ids.shape[0]} pairs x {ids.shape[1]} tokens, {len(exact.heads)} heads, resample "
          f"noising; clean LD {float(exact.clean_metric.mean()):.3f}, corrupt LD "
          f"{float(exact.corrupt_metric.mean()):.3f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}, "
          f"best of {args.reps}")
    for note in notes:
        print(note)
    hdr = (f"{'method':34s} {'time s':>8s} {'t/t_fast':>8s} {'max|diff|':>10s} {'rho |e|':>8s} {'rho e':>7s} "
           f"{'top20':>6s}")
    print(hdr)
    print("-" * len(hdr))
    for name, sec, diff, rho_abs, rho, rec in rows:
        f = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None and v == v else f"{'':>{w}s}"  # noqa: E731
        speed = sec / fig["exact"] if sec == sec else None
        dstr = f"{diff:>10.2e}" if diff is not None else f"{'':>10s}"
        print(f"{name:34s} {f(sec, 8, 1)} {f(speed, 7, 2)}x {dstr} {f(rho_abs, 8, 3)} {f(rho, 7, 3)} {f(rec, 6, 2)}")
    for line in extra:
        print(line)
    return {"rows": rows, "notes": extra, "seconds": best, "n": ids.shape[0], "tokens": ids.shape[1],
            "corruption": corruption, "reps": args.reps}


if __name__ == "__main__":
    raise SystemExit(main())
