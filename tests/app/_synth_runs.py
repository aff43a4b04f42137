"""Small but realistic synthetic run folders, written with numpy + pandas + safetensors.numpy.

They follow the run-folder contract of ``workbench/runs.py`` (schema_version 1) without
depending on the producer or torch:

- ``make_text_run``: a SmolLM2-like decoder-only run, 30 layers x 9 heads on stream ``self``,
  text prompts with token strings, patterns ``[head, query, key]`` (causal), optional extra
  tables ``flow.parquet`` and ``prune_curve.parquet`` and patching columns.
- ``make_audio_run``: a Whisper-like run, 4 layers x 6 heads on ``encoder`` / ``decoder`` /
  ``cross``; the encoder is cropped to the real frames (50 per second; a 30 s input gives the
  full 1500 frames), ``inputs.safetensors`` holds ``mel/<i>`` (80 x 100/s) and ``audio/<i>``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import save_file

SMOL_PROMPTS = [
    ["<|im_start|>", "The", " cat", " sat", " on", " the", " mat", ".", " The", " cat"],
    ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John",
     " gave", " a", " drink", " to"],
    ["1", ",", " 2", ",", " 3", ",", " 4", ",", " 5", ",", " 6", "\n"],
]
WHISPER_WORDS = [" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog",
                 "."]
# a 30 s clip's worth of speech (~2.5 words/s): its word labels must not collide (issue 14)
LONG_WORDS = [" " + w for w in (
    "The history of the city begins on a quiet river bank where a small group of traders built "
    "their first wooden houses and a market that soon drew farmers fishermen and travellers from "
    "every valley around it so that within a few generations the settlement had grown into a busy "
    "town with stone bridges narrow streets a cathedral a university and a harbour full of ships").split()] + ["."]
CLASSES = ["sink", "previous-token", "positional", "induction", "retrieval", "diffuse"]


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _causal_patterns(rng, n_heads: int, t: int, layer: int) -> np.ndarray:
    """[head, query, key] causal patterns: sinks, previous-token and diffuse heads."""
    logits = rng.standard_normal((n_heads, t, t), dtype=np.float32)
    q, k = np.indices((t, t))
    for h in range(n_heads):
        kind = (h + layer) % 3
        if kind == 0:
            logits[h, :, 0] += 4.0  # attention sink on the first token
        elif kind == 1:
            logits[h][k == q - 1] += 5.0  # previous-token head
    logits[:, k > q] = -np.inf
    return _softmax(logits).astype(np.float16)


def _write(path: Path, meta: dict, heads: pd.DataFrame, tensors: dict[str, dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    heads.to_parquet(path / "heads.parquet", index=False)
    for stem, tdict in tensors.items():
        save_file({k: np.ascontiguousarray(v) for k, v in tdict.items()},
                  str(path / f"{stem}.safetensors"))
    (path / "meta.json").write_text(json.dumps(meta, indent=2))
    return path


def _meta(model: dict, sites: list[dict], inputs: dict, analyses: list[str], seed: int) -> dict:
    return {
        "schema_version": 1, "model": model, "sites": sites, "inputs": inputs,
        "analyses": {a: {} for a in analyses}, "created": "2025-06-01T12:00:00+00:00",
        "command": "workbench run synthetic --out x", "seed": seed,
        "packages": {"numpy": np.__version__}, "git_commit": "0" * 40,
    }


def _head_table(rng, streams: dict[str, tuple[int, int]], patching: bool) -> pd.DataFrame:
    rows = []
    for stream, (n_layers, n_heads) in streams.items():
        for layer in range(n_layers):
            for head in range(n_heads):
                nats = float(rng.uniform(0.2, 2.5))
                alpha = float(rng.uniform(0, 1))
                row = {"stream": stream, "layer": layer, "head": head,
                       "entropy.mean_nats": nats, "entropy.mean_norm": nats / 2.5,
                       "sinks.alpha1": alpha, "sinks.is_sink": alpha > 0.6,
                       "sinks.top_pos": int(rng.integers(0, 3)), "sinks.top_alpha": alpha,
                       "retrieval.score": float(rng.uniform(0, 1)),
                       "taxonomy.class": CLASSES[(layer * 7 + head) % len(CLASSES)]}
                if patching:
                    exact = float(rng.normal(0, 0.05) * (3 if head == 2 else 1))
                    row["patch.effect"] = exact
                    row["patch.atp"] = exact + float(rng.normal(0, 0.01))
                    row["importance.michel"] = abs(exact) + float(rng.uniform(0, 0.01))
                rows.append(row)
    return pd.DataFrame(rows)


def make_text_run(runs_dir: Path, name: str = "smol", *, n_layers: int = 30, n_heads: int = 9,
                  seed: int = 0, extras: bool = True, model_name: str = "smollm2-135m") -> Path:
    rng = np.random.default_rng(seed)
    patterns = {}
    for layer in range(n_layers):
        for i, toks in enumerate(SMOL_PROMPTS):
            patterns[f"pattern/self/{layer}/{i}"] = _causal_patterns(rng, n_heads, len(toks), layer)
    items = [{"index": i, "text": "".join(t), "tokens": {"self": t}}
             for i, t in enumerate(SMOL_PROMPTS)]
    sites = [{"stream": "self", "layer": li, "n_heads": n_heads, "n_kv_heads": 3, "d_head": 64}
             for li in range(n_layers)]
    model = {"name": model_name, "source": "HuggingFaceTB/SmolLM2-135M", "family": "llama",
             "dtype": "float32", "weights_sha256": "ab" * 32}
    inputs = {"kind": "text", "prompt_set": "synthetic-prompts", "items": items}
    heads = _head_table(rng, {"self": (n_layers, n_heads)}, patching=extras)
    meta = _meta(model, sites, inputs, ["entropy", "sinks", "retrieval", "taxonomy"], seed)
    path = _write(Path(runs_dir) / name, meta, heads, {"patterns": patterns})
    if extras:
        _text_extras(path, rng, n_layers, patterns)
    return path


def _text_extras(path: Path, rng, n_layers: int, patterns: dict) -> None:
    curve = [{"method": m, "seed": s, "fraction_removed": f,
              "metric": float(np.exp(-f * (3 if m == "random" else 1)) + rng.normal(0, 0.02))}
             for m in ("michel", "random") for s in range(3) for f in np.linspace(0, 0.9, 10)]
    pd.DataFrame(curve).to_parquet(path / "prune_curve.parquet", index=False)
    rows = []
    for i, toks in enumerate(SMOL_PROMPTS):
        for layer in range(n_layers):
            att = patterns[f"pattern/self/{layer}/{i}"].astype(np.float32).mean(0)[-1]
            for pos, tok in enumerate(toks):
                rows.append({"stream": "self", "layer": layer, "input": i, "position": pos,
                             "token": tok, "rollout": float(att[pos] * (1 + layer / n_layers)),
                             "flow": float(rng.uniform(0, 1)), "attention": float(att[pos])})
    pd.DataFrame(rows).to_parquet(path / "flow.parquet", index=False)


def _cross_patterns(rng, n_heads: int, n_tok: int, n_frames: int, layer: int) -> np.ndarray:
    """Cross attention: later layers align tokens monotonically to frames."""
    logits = rng.standard_normal((n_heads, n_tok, n_frames), dtype=np.float32)
    centers = np.linspace(0.05, 0.95, n_tok) * n_frames
    frames = np.arange(n_frames)
    for h in range(n_heads):
        if layer >= 2 and h % 2 == 0:
            logits[h] += -((frames[None, :] - centers[:, None]) ** 2) / (2 * 8.0**2) * 3
    return _softmax(logits).astype(np.float16)


def _mel(rng, n: int, n_words: int) -> np.ndarray:
    """Speech-like log-mel [80, n]: a formant band per word with short pauses between."""
    t, b = np.arange(n)[None, :], np.arange(80)[:, None]
    word = np.minimum((t * n_words) // max(n, 1), n_words - 1)
    voiced = ((t * n_words) % max(n, 1)) / max(n, 1) * n_words < 0.8
    center = 12 + 6 * (word % 4)
    mel = np.exp(-((b - center) ** 2) / 30.0) + 0.5 * np.exp(-((b - 2 * center) ** 2) / 60.0)
    mel = -0.8 + 1.6 * mel * voiced + rng.normal(0, 0.08, (80, n))
    return mel.astype(np.float16)


_ENCODER_BASES: dict[int, np.ndarray] = {}


def _encoder_patterns(rng, n_heads: int, n: int) -> np.ndarray:
    """Encoder self-attention: odd heads local (a band), even heads low-rank content mixing.

    Long clips reuse two base heads per size (numpy's float16 cast is slow: ~0.2 s per
    1500 x 1500 head), so a 30 s fixture takes well under a second.
    """
    if n < 600 or n not in _ENCODER_BASES:
        q, k = np.indices((n, n), dtype=np.int32)
        band = -np.abs(q - k).astype(np.float32) / 4.0
        bases = np.empty((2, n, n), dtype=np.float16)
        for b in range(2):
            u = rng.standard_normal((n, 6), dtype=np.float32)
            v = rng.standard_normal((6, n), dtype=np.float32)
            bases[b] = _softmax((u @ v) * 0.4 + (band if b else 0.0))
        if n >= 600:
            _ENCODER_BASES[n] = bases
    else:
        bases = _ENCODER_BASES[n]
    return np.stack([bases[h % 2] for h in range(n_heads)])


def make_audio_run(runs_dir: Path, name: str = "whisper", *, durations=(3.0, 4.5),
                   n_layers: int = 4, n_heads: int = 6, seed: int = 1, words: list[str] = WHISPER_WORDS) -> Path:
    rng = np.random.default_rng(seed)
    dec = ["<|startoftranscript|>", "<|notimestamps|>"] + list(words) + ["<|endoftext|>"]
    items, patterns, inputs = [], {}, {}
    for i, dur in enumerate(durations):
        n_frames = int(round(dur * 50))
        items.append({"index": i, "path": f"clips/clip{i}.wav", "duration_s": dur,
                      "n_frames": n_frames, "tokens": {"decoder": dec}})
        t = np.arange(int(dur * 16000)) / 16000
        inputs[f"audio/{i}"] = (0.2 * np.sin(2 * np.pi * (220 + 80 * t) * t)).astype(np.float32)
        inputs[f"mel/{i}"] = _mel(rng, int(dur * 100), len(words))
        for layer in range(n_layers):
            patterns[f"pattern/encoder/{layer}/{i}"] = _encoder_patterns(rng, n_heads, n_frames)
            patterns[f"pattern/decoder/{layer}/{i}"] = _causal_patterns(
                rng, n_heads, len(dec), layer)
            patterns[f"pattern/cross/{layer}/{i}"] = _cross_patterns(
                rng, n_heads, len(dec), n_frames, layer)
    sites = [{"stream": s, "layer": li, "n_heads": n_heads, "n_kv_heads": n_heads, "d_head": 64}
             for s in ("encoder", "decoder", "cross") for li in range(n_layers)]
    model = {"name": "whisper-tiny.en", "source": "openai/whisper-tiny.en", "family": "whisper",
             "dtype": "float32", "weights_sha256": "cd" * 32}
    inp = {"kind": "audio", "prompt_set": "synthetic-clips", "items": items}
    heads = _head_table(rng, {s: (n_layers, n_heads) for s in ("encoder", "decoder", "cross")},
                        patching=False)
    meta = _meta(model, sites, inp, ["entropy", "sinks", "taxonomy"], seed)
    return _write(Path(runs_dir) / name, meta, heads, {"patterns": patterns, "inputs": inputs})


def make_broken_runs(runs_dir: Path, good: Path) -> dict[str, str]:
    """Broken siblings of ``good``; returns {run name: what is wrong}."""
    runs_dir = Path(runs_dir)
    out = {}

    def clone(name: str) -> Path:
        p = runs_dir / name
        p.mkdir()
        for f in good.iterdir():
            if f.name in ("meta.json", "heads.parquet"):
                (p / f.name).write_bytes(f.read_bytes())
        return p

    (runs_dir / "partial").mkdir()
    (runs_dir / "partial" / "meta.json").write_text((good / "meta.json").read_text())
    out["partial"] = "no heads.parquet"
    (clone("badjson") / "meta.json").write_text("{not json")
    out["badjson"] = "meta.json invalid"
    (clone("badparquet") / "heads.parquet").write_bytes(b"PAR1 garbage")
    out["badparquet"] = "heads.parquet corrupt"
    p = clone("badtensors")
    (p / "patterns.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    out["badtensors"] = "patterns.safetensors corrupt"
    meta = json.loads((good / "meta.json").read_text())
    meta["schema_version"] = 99
    (clone("future") / "meta.json").write_text(json.dumps(meta))
    out["future"] = "schema 99"
    (runs_dir / "notarun").mkdir()
    out["notarun"] = "empty folder"
    return out
