"""The panels of the Head detail page, built from one head's saved slices (no Dash callbacks).

- ``pattern``: the head's pattern with summaries (``fig_pattern``), on a linear or log colour
  scale, optionally with the colour range taken without the first token (sinks);
- ``value_weighted``: the same pattern scaled per key by ``||v_j W_O[h]||`` (Kobayashi et al.
  2020, "Attention is Not Only a Weight"), rows renormalised to sum to 1 so it reads on the
  same scale as the raw pattern; absent when the run saved no ``value_norm/...``;
- ``thumbs``: every head of the layer as thumbnails (``fig_thumbs``), the shown head marked;
- ``tokens``: the CircuitsVis-like token view (``fig_tokens``) for token x token patterns.

A patch run's corrupt prompts (``prompt="corrupt"``) read ``patterns_corrupt.safetensors``
and ``meta.inputs.corrupt_items`` instead of the clean ones.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .components import attempt, message
from .fig_pattern import column_mean, pattern_figure
from .fig_thumbs import layer_thumbnails
from .fig_tokens import MAX_TOKENS, token_view_figure
from .routes import audio_url
from .run import Run, RunError

CLEAN, CORRUPT = "clean", "corrupt"
CORRUPT_STEM = "patterns_corrupt"
MAX_THUMB_VALUES = 64_000_000     # a whole site is read for the thumbnails: 6 x 1500^2 (Whisper 30 s) is 13.5M
SINK_HINT = 0.5          # mean attention on the first key above which the page suggests the sink colour range


def has_corrupt(store, run: Run) -> bool:
    """Whether a patch run saved patterns of its corrupt prompts."""
    return bool(run.meta["inputs"].get("corrupt_items")) and store.has_patterns(run.name, CORRUPT_STEM)


def variant(store, run: Run, prompt) -> tuple[Run, str, str]:
    """(run whose ``items`` are the prompts shown, patterns file stem, prompt) for ``prompt``
    (``"clean"`` or ``"corrupt"``; anything else or a run without corrupt patterns: clean)."""
    if prompt == CORRUPT and has_corrupt(store, run):
        inputs = {**run.meta["inputs"], "items": run.meta["inputs"]["corrupt_items"]}
        return replace(run, meta={**run.meta, "inputs": inputs}), CORRUPT_STEM, CORRUPT
    return run, "patterns", CLEAN


def value_weighted(pattern: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """``pattern [query, key]`` times ``norms [key]`` (``||f(x_j)||``), each row divided by its sum
    (rows that sum to 0 stay 0): the share of the head's output norm each key provides."""
    w = pattern.astype(np.float64) * norms.astype(np.float64)[None, :]
    s = w.sum(-1, keepdims=True)
    return np.divide(w, s, out=np.zeros_like(w), where=s > 0).astype(np.float32)


@dataclass
class Panels:
    pattern: object = None
    value_weighted: object = None
    thumbs: object = None
    tokens: object = None
    audio: str | None = None
    messages: list | None = None


def build(store, run: Run, stream: str, layer: int, head: int, index: int | None, *, log: bool = False,
          skip_first: bool = False, stem: str = "patterns") -> Panels:
    """Every figure of the page for one head and input; an unreadable or missing file hides
    only the panels that need it, with a message saying why."""
    out = Panels(messages=[])
    if index is None:
        out.messages.append(message(f"run {run.name!r} lists no inputs", "info"))
        return out
    out.audio = audio_url(run.name, index) if run.kind == "audio" and stem == "patterns" else None
    if not store.has_patterns(run.name, stem):
        out.messages.append(message(f"run {run.name!r} saved no patterns; re-run with patterns saved to "
                                    "see this head's attention", "info"))
        return out
    try:
        q, k = run.axes(stream, index)
        pattern = store.pattern(run.name, stream, layer, index, head, stem)
    except (RunError, ValueError) as exc:
        out.messages.append(message(str(exc)))
        return out
    mel = None
    if run.kind == "audio":
        mel, note = attempt(store.mel, run.name, index)
        out.messages += [note] if note else []
    name = f"{stream} L{layer} H{head} · {run.input_label(index)}"
    opts = {"log": log, "skip_first": skip_first}
    out.pattern = pattern_figure(pattern, q, k, mel=mel, title=name, **opts)
    first = float(column_mean(pattern)[0]) if pattern.shape[1] > 1 else 0.0
    if first > SINK_HINT and not skip_first and not log:
        out.messages.append(message(f"this head puts {first:.0%} of its attention on the first token (a sink): tick "
                                    "'colour range without the first token' or the log scale to see the rest",
                                    "info"))
    norms, note = attempt(store.value_norm, run.name, stream, layer, index, head, stem)
    if note is not None:
        out.messages.append(note)
    elif norms is not None and norms.shape[0] == pattern.shape[1]:
        out.value_weighted = pattern_figure(
            value_weighted(pattern, norms), q, k, mel=mel, quantity="weighted", **opts,
            title=f"value-weighted α‖f(x)‖ (Kobayashi et al. 2020), rows sum to 1 · {stream} L{layer} H{head}")
    shape, note = attempt(store.site_shape, run.name, stream, layer, index, stem)
    if shape is not None and int(np.prod(shape)) > MAX_THUMB_VALUES:
        site, note = None, message(f"layer thumbnails are drawn for sites of at most {MAX_THUMB_VALUES:,} values "
                                   f"(this one: {' x '.join(map(str, shape))}); open heads one by one", "info")
    else:
        site, note = attempt(store.site_patterns, run.name, stream, layer, index, stem)
    if note is not None:
        out.messages.append(note)
    elif site is not None:
        out.thumbs = layer_thumbnails(site, selected=head, title=f"all heads of {stream} layer {layer} · "
                                      f"input {index} (click one to open it)", **opts)
    if q.kind == "tokens" and q == k and len(q.labels) <= MAX_TOKENS:
        out.tokens = token_view_figure(pattern, list(q.labels), title=f"L{layer} H{head} · ", **opts)
    elif q.kind == "tokens" and q == k:
        out.messages.append(message(f"token view: this input has {len(q.labels)} tokens; it shows inputs of at "
                                    f"most {MAX_TOKENS}", "info"))
    return out
