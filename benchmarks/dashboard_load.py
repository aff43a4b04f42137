"""Bounded loopback load test for the dashboard, and report generation (run by hand; not part of
the test suite).

    python benchmarks/dashboard_load.py                    # synthetic runs, 8 clients x 50
    python benchmarks/dashboard_load.py --real runs-bench  # real runs (built with the CLI if missing)
    python benchmarks/dashboard_load.py --real runs-bench --reports   # + workbench report timings
    python benchmarks/dashboard_load.py --url http://127.0.0.1:8050 --runs-dir RUNS

Starts the app on a free loopback port (unless --url), then N client threads each send M
requests, cycling through a mix that matches what the browser sends: the index page, the
page-router callback for every page (each builds the page's figures server-side: the head
grid with its ranked list, the head detail with the layer's thumbnails, the value-weighted
pattern and the token view, a 1500-frame Whisper encoder head, the cross-attention head, the
alignment view, the patching page with its task panel, a patch run's corrupt prompt in the
head detail, the circuits page), the detail redraw in log scale without the first token, a
grid click, a metric switch on the grid, the word alignment with chosen heads, a CSV download,
the HTML and Markdown reports and the audio file. Every request has a timeout and the whole
test has a wall-clock limit. Prints p50 / p95 / max latency per kind and overall, and exits 1
if any request failed.

``--real DIR`` builds (once; existing folders are reused) the runs of ``make demo`` with the
CLI, on a 30-layer model and a 30 s clip: ``smollm2-135m`` (8 natural prompts x 64 tokens, the
demo's text analyses), ``whisper-30s`` (whisper-tiny.en on a 30 s clip made by concatenating the
bundled speech clips, the demo's audio analyses), ``smollm2-135m-ioi-patching`` (8 pairs;
exact, AtP, AtP*), ``smollm2-135m-prune`` (IOI, step 0.2, importance and one random order) and ``smollm2-135m-circuit``
(DLA). ``--reports`` times ``workbench report`` (HTML and Markdown, in-process) for every run
folder served and prints each file's size.

Measured 2026-12-01 on the shared 2-core machine (load average 10-12 from other jobs), real
runs smollm2-135m (8 x 64 tokens, 30 x 9 heads), whisper-30s (30 s clip, 1500 frames),
smollm2-135m-prune and -circuit, the synthetic 30 x 9 run for the patch role: 8 clients x 50
requests, 21 kinds, 0 errors, p95 4.7 s over all (p95 per kind: grid 30x9 1.6 s, detail text
3.4 s, detail 1500 frames 7.3 s, detail cross 5.2 s, flow whisper 4.7 s, word alignment with
chosen heads 4.5 s, patching 2.5 s, circuits 1.1 s, HTML report 4.7 s); workbench report HTML
0.2-1.5 s and 4.7-5.6 MiB per run (plotly.js inlined), Markdown with PNGs 6-12 s.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "app"))

from _dash_client import callback_body, router_request  # noqa: E402  (the test suite's Dash bodies)

TEXT_ANALYSES = "entropy,sinks,hidden_sinks,massive,rollout,flow,taxonomy"      # as in the Makefile's demo
AUDIO_ANALYSES = "entropy,sinks,hidden_sinks,rollout,alignment,encoder_heads,taxonomy"
REAL = {"text": "smollm2-135m", "audio": "whisper-30s", "long": "whisper-30s",
        "patch": "smollm2-135m-ioi-patching", "prune": "smollm2-135m-prune", "circuit": "smollm2-135m-circuit"}
SYNTH = {"text": "smol", "audio": "whisper", "long": "whisper-long", "patch": "smol", "prune": "smol",
         "circuit": None}


def _click(text_run: str) -> dict:
    return {"output": "grid-selected.children",
            "outputs": {"id": "grid-selected", "property": "children"},
            "inputs": [{"id": "grid-head", "property": "data", "value": ["self", 18, 8]}],
            "state": [{"id": "grid-run", "property": "value", "value": text_run},
                      {"id": "grid-view", "property": "data", "value": {"run": text_run}}],
            "changedPropIds": ["grid-head.data"]}


def request_mix(runs: dict, deps: list | None = None) -> list[tuple]:
    """(kind, method, path, json body or None) in the order each client cycles through.
    ``runs``: {role: run name} for roles text, audio, long (30 s clip), patch, prune, circuit.
    ``deps``: the app's ``/_dash-dependencies`` (for callbacks other than the page router)."""
    text, audio, long_, patch, prune, circuit = (runs.get(k) for k in
                                                  ("text", "audio", "long", "patch", "prune", "circuit"))
    page = lambda p, q: ("POST", "/_dash-update-component", router_request(p, q))  # noqa: E731
    mix = [
        ("index html", "GET", f"/grid?run={text}", None),
        ("runs page", *page("/", "")),
        ("grid 30x9", *page("/grid", f"?run={text}&stream=self&layer=18&head=8")),
        ("grid click", "POST", "/_dash-update-component", _click(text)),
        ("detail text", *page("/detail", f"?run={text}&layer=18&head=8")),
        ("detail 1500 frames", *page("/detail", f"?run={long_}&stream=encoder&layer=1")),
        ("detail cross", *page("/detail", f"?run={audio}&stream=cross&layer=2")),
        ("flow whisper", *page("/flow", f"?run={audio}")),
        ("flow text", *page("/flow", f"?run={text}")),
        ("patching", *page("/patching", f"?run={patch}")),
        ("detail corrupt", *page("/detail", f"?run={patch}&layer=9&head=6&prompt=corrupt")),
        ("pruning", *page("/patching", f"?run={prune}")),
        ("export", *page("/export", f"?run={text}")),
        ("csv download", "GET", f"/download/{text}/heads.csv", None),
        ("html report", "GET", f"/download/{patch}/report.html", None),
        ("md report", "GET", f"/download/{patch}/report.md", None),
        ("wav audio", "GET", f"/media/{long_}/audio/0.wav", None),
    ]
    if circuit:
        mix.append(("circuits", *page("/circuits", f"?run={circuit}")))
    if deps is not None:
        try:      # the detail redraw: log colour scale, colour range without the first token
            from workbench.app._color import LOG, SKIP_FIRST

            body = callback_body(deps, "detail-graph.figure", ["self", 18, 8, 0, LOG, [SKIP_FIRST], "clean"],
                                 [text, {"run": text}], changed=4)
            mix.insert(5, ("detail log scale", "POST", "/_dash-update-component", body))
        except (ImportError, KeyError):
            pass
        more = [("grid metric", "grid-heatmap.figure", ["entropy.mean_norm", None, None], [text, {"run": text}]),
                ("flow align heads", "flow-align-graph.figure", [0, ["2/1", "3/3"]], [long_, {"run": long_}])]
        for kind, first_output, inputs, state in more:
            try:
                mix.append((kind, "POST", "/_dash-update-component", callback_body(deps, first_output, inputs, state)))
            except KeyError:
                pass
    return mix


def _send(base: str, method: str, path: str, body, timeout: float) -> tuple[int, int]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, len(r.read())


def run_load(base: str, mix: list[tuple], clients: int, requests: int, limit_s: float,
             timeout: float) -> list[tuple]:
    results: list[tuple] = []  # (kind, seconds, ok, detail)
    lock = threading.Lock()
    deadline = time.monotonic() + limit_s

    def client(offset: int) -> None:
        for i in range(requests):
            if time.monotonic() > deadline:
                return
            kind, method, path, body = mix[(offset + i) % len(mix)]
            t0 = time.perf_counter()
            try:
                status, _ = _send(base, method, path, body, timeout)
                ok, detail = status == 200, str(status)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            with lock:
                results.append((kind, time.perf_counter() - t0, ok, detail))

    threads = [threading.Thread(target=client, args=(c * 3,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit_s + timeout + 5)
    return results


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def report(results: list[tuple], wall: float) -> str:
    kinds = list(dict.fromkeys(r[0] for r in results))
    lines = [f"{'kind':<20} {'n':>5} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"]
    for kind in kinds + ["ALL"]:
        rows = [r for r in results if kind in ("ALL", r[0])]
        ts = [r[1] * 1000 for r in rows]
        lines.append(f"{kind:<20} {len(rows):>5} {sum(not r[2] for r in rows):>6} "
                     f"{_pct(ts, 0.5):>8.1f} {_pct(ts, 0.95):>8.1f} {max(ts):>8.1f}")
    lines.append(f"{len(results)} requests in {wall:.1f} s ({len(results) / wall:.1f} req/s)")
    return "\n".join(lines)


def _synthetic_runs() -> Path:
    from _synth_runs import make_audio_run, make_text_run

    root = Path(tempfile.mkdtemp(prefix="workbench-load-"))
    make_text_run(root, "smol")
    make_audio_run(root, "whisper")
    make_audio_run(root, "whisper-long", durations=(30.0,), seed=3)
    return root


def clip_30s(path: Path, seconds: float = 30.0, gap_s: float = 0.25) -> Path:
    """A 16 kHz mono WAV of ``seconds``: the bundled speech clips one after another (whole clips,
    ``gap_s`` of silence between them) as long as they fit, then silence to the full length."""
    import numpy as np
    import soundfile as sf

    from workbench.inputs import builtin_clips, load_audio
    from workbench.schema import SAMPLE_RATE

    clips = [load_audio(c) for c in builtin_clips()]
    total, gap = int(seconds * SAMPLE_RATE), np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    parts, n, i = [], 0, 0
    while n + len(clips[i % len(clips)]) <= total:
        parts += [clips[i % len(clips)], gap]
        n += len(clips[i % len(clips)]) + len(gap)
        i += 1
    wave = np.concatenate(parts)[:total]
    wave = np.concatenate([wave, np.zeros(total - len(wave), np.float32)])
    sf.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")
    return path


def build_real_runs(root: Path, names=None) -> dict[str, float]:
    """Write the real run folders (``names``, default all) into ``root`` with the CLI (a folder
    already there is kept). Returns {run: seconds} for the runs built now."""
    root.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "workbench.cli"]
    ioi = ["--task", "ioi"]
    commands = {
        REAL["text"]: ["run", "smollm2-135m", "--prompts", "natural", "--max-prompts", "8", "--max-tokens", "64",
                       "--analyses", TEXT_ANALYSES],
        REAL["audio"]: ["run", "whisper-tiny.en", "--audio", "CLIP", "--analyses", AUDIO_ANALYSES],
        REAL["patch"]: ["patch", "smollm2-135m", *ioi, "--n", "8", "--method", "exact,atp,atp-star"],
        REAL["prune"]: ["prune", "smollm2-135m", *ioi, "--step", "0.2", "--orders", "importance,random", "--seeds", "1"],
        REAL["circuit"]: ["circuit", "smollm2-135m", *ioi, "--analysis", "dla"],
    }
    seconds = {}
    for name, args in commands.items():
        out = root / name
        if (out / "meta.json").is_file() or (names is not None and name not in names):
            continue
        if "CLIP" in args:
            args[args.index("CLIP")] = str(clip_30s(root / "clip-30s.wav"))
        t0 = time.perf_counter()
        print(f"building {out}: workbench {' '.join(args)}", flush=True)
        subprocess.run([*cli, *args, "--out", str(out), "--quiet"], check=True)
        seconds[name] = time.perf_counter() - t0
    return seconds


def report_timings(root: Path, names: list[str]) -> str:
    """``workbench report`` (HTML and Markdown) of every run in ``names``: seconds and sizes."""
    from workbench.commands.report import write_report

    lines = [f"{'run':<28} {'html s':>7} {'html MiB':>9} {'md s':>6} {'md + figures MiB':>17}"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = [f"{name:<28}"]
            for fmt in ("html", "md"):
                out = Path(tmp) / f"{name}.{fmt}"
                t0 = time.perf_counter()
                write_report(root / name, out, fmt)
                dt = time.perf_counter() - t0
                size = out.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob(f"{name}_files/*"))
                row.append(f"{dt:>7.2f} {size / 2 ** 20:>9.2f}" if fmt == "html" else f"{dt:>6.2f} {size / 2 ** 20:>17.2f}")
            lines.append(" ".join(row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", type=Path, help="runs to serve (default: synthetic runs)")
    ap.add_argument("--real", type=Path, metavar="DIR", help="build the real runs into DIR (if missing) and serve them")
    ap.add_argument("--reports", action="store_true", help="also time workbench report on every served run")
    ap.add_argument("--url", help="load an already running dashboard instead of starting one")
    ap.add_argument("--text-run")
    ap.add_argument("--audio-run")
    ap.add_argument("--long-run", help="run with a 30 s clip")
    ap.add_argument("--patch-run")
    ap.add_argument("--prune-run")
    ap.add_argument("--circuit-run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole test")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = ap.parse_args(argv)
    runs = dict(REAL if args.real else SYNTH)
    runs.update({k: v for k, v in (("text", args.text_run), ("audio", args.audio_run), ("long", args.long_run),
                                   ("patch", args.patch_run), ("prune", args.prune_run),
                                   ("circuit", args.circuit_run)) if v})
    if args.real:
        for name, s in build_real_runs(args.real).items():
            print(f"built {name} in {s:.0f} s")
    root = args.real or args.runs_dir
    server = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        from workbench.app.server import make_app_server

        root = root or _synthetic_runs()
        server = make_app_server(root, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with urllib.request.urlopen(base + "/_dash-dependencies", timeout=args.timeout) as r:
        deps = json.loads(r.read())
    mix = request_mix(runs, deps)
    for kind, method, path, body in mix:  # warm caches once, fail fast on a bad setup
        _send(base, method, path, body, args.timeout)
    t0 = time.perf_counter()
    results = run_load(base, mix, args.clients, args.requests, args.time_limit, args.timeout)
    wall = time.perf_counter() - t0
    print(f"{args.clients} clients x {args.requests} requests against {base} ({len(mix)} request kinds)")
    print(report(results, wall))
    failures = [r for r in results if not r[2]]
    for kind, _, _, detail in failures[:10]:
        print(f"FAILED {kind}: {detail}")
    if server is not None:
        server.shutdown()
    expected = args.clients * args.requests
    if len(results) < expected:
        print(f"stopped by the {args.time_limit:.0f} s limit after {len(results)}/{expected}")
    if args.reports and root is not None:
        names = [p.name for p in sorted(Path(root).iterdir()) if (p / "meta.json").is_file()]
        print(report_timings(Path(root), names))
    return 1 if failures or len(results) < expected else 0


if __name__ == "__main__":
    sys.exit(main())
