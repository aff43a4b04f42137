"""Whisper cross-attention alignment heads, scored against known word times, and word
timestamps from the best heads.

Source: Whisper (Radford et al. 2022) ships per model a set of cross-attention "alignment
heads", chosen by how well their attention matched word-level timing; ``timing.py`` turns
their attention into word timestamps: the attention over real frames (softmax over the
frames holding audio), z-scored per head along the token axis, median-filtered along
frames (width 7), averaged over the heads and aligned with DTW. We score each head the same
way, against speech whose word times are known by construction (``_speech.synth_words``:
each word synthesised separately with espeak-ng and concatenated with silences), not by
monotonicity or peak concentration alone (a head that stares at one frame scores low here).

Per cross-attention head, over every text token of every clip (tokens of a word are scored
against that word's interval):
- ``alignment.peak_hit``: fraction of tokens whose attention peak (argmax frame of the
  head's row at the query that predicts the token) falls inside its word's interval;
- ``alignment.dtw_hit``: fraction whose DTW segment midpoint (DTW through that head's
  z-scored, median-filtered attention) falls inside;
- ``alignment.score`` = their mean, used for ranking; ``alignment.rank`` (1 = best).

Choices made here: a frame f spans [f/50, (f+1)/50) s (50 encoder frames per second) and
counts at its centre; word intervals are widened by ``tol_s`` (default half the inter-word
silence, 0.075 s) on each side so that frames of a silence count for the nearer word;
decoding is teacher-forced on the true text (the rows are those the model computes when it
transcribes correctly). Word times for any clip (the run's audio, transcribed greedily):
DTW on the mean of the top ``n_heads`` (8) heads; a word starts at its first token's DTW
start and ends where its last token's segment ends. ``summary["timing_error_s"]``: mean
absolute error of word start/end on each synthetic clip with heads chosen on the *other*
clips (leave-one-out; in-sample with a single clip); ``summary["openai_overlap"]``: how many
of OpenAI's published alignment heads for the model are among our top heads. Raises ValueError for a model without cross-attention and for audio
longer than 30 s (from ``prepare_audio``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.capture import Pattern
from workbench.word_timing import (FPS, OPENAI_ALIGNMENT_HEADS, dtw, normalise,  # noqa: F401 (dtw re-exported)
                                   token_segments)

from ._context import Analysis, Context, Params, Result, param
from ._speech import synth_words, word_tokens, words_of

OPENAI_HEADS = OPENAI_ALIGNMENT_HEADS   # used only to report the overlap with ours
SENTENCES = (
    "The quick brown fox jumps over the lazy dog",
    "Attention heads in language models",
    "Please call Stella and ask her to bring these things with her from the store",
    "Seven green lanterns were hanging above the narrow wooden bridge",
)


@dataclass(frozen=True)
class AlignmentParams(Params, analysis="alignment"):
    """Probe speech (espeak-ng: ``sentences``, ``voice``, ``speed`` in words per minute,
    ``gap_s`` of silence between words), scoring tolerance ``tol_s`` (None: gap_s / 2),
    ``n_heads`` best heads used for word times."""

    sentences: tuple[str, ...] | None = param(None, doc="probe sentences; None: the built-in four")
    gap_s: float = param(0.15, lo=0.02, hi=2, doc="silence between probe words (s)")
    tol_s: float | None = param(None, lo=0, hi=1, doc="word interval widening (s); None: gap_s / 2")
    n_heads: int = param(8, lo=1, doc="best heads averaged for word times")
    voice: str = param("en-us", doc="espeak-ng voice of the probe speech")
    speed: int = param(160, lo=80, hi=450, doc="espeak-ng speaking rate (words per minute)")


def applies(model) -> str | None:
    if model.kind != "speech-seq2seq":
        return f"alignment heads are cross-attention heads of Whisper-like models; {model.name} is a {model.kind} model"
    return None


def cross_attention(model, wave: np.ndarray, text_ids: list[int] | None) -> tuple[np.ndarray, list[int], dict]:
    """Cross-attention rows that predict each text token: [layer, head, token, real frame]
    (rows renormalised over real frames), the text ids, and the batch item."""
    batch = model.prepare_audio([wave], transcripts=None if text_ids is None else [text_ids])
    trace = model.run(batch, capture=[Pattern("cross")])
    p = len(model.meta["prompt_ids"])
    item = batch.items[0]
    ids = batch.model_inputs["decoder_input_ids"][0, p:].tolist()
    n = int(batch.query_mask["decoder"][0].sum()) - p
    layers = sorted(l for (s, l) in trace.pattern if s == "cross")
    att = torch.stack([trace.pattern[("cross", l)][0, :, p - 1: p - 1 + n, : item["n_frames"]] for l in layers])
    att = att / att.sum(-1, keepdim=True).clamp_min(1e-12)
    return att.numpy(), ids[:n], item


def score_clip(att: np.ndarray, owner: list[int], intervals: list[tuple[float, float]], tol_s: float) -> dict:
    """Per head hit counts of one clip: {"peak": [layer, head], "dtw": [layer, head], "n": tokens}."""
    lo = np.array([intervals[w][0] - tol_s for w in owner]) * FPS
    hi = np.array([intervals[w][1] + tol_s for w in owner]) * FPS
    centre = att.argmax(-1) + 0.5                                       # [layer, head, token]
    peak = ((centre >= lo) & (centre < hi)).sum(-1)
    z = normalise(att)
    L, H = att.shape[:2]
    dtw_hits = np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            seg = token_segments(z[l, h])
            mid = seg.mean(-1) + 0.5
            dtw_hits[l, h] = ((mid >= lo) & (mid < hi)).sum()
    return {"peak": peak.astype(float), "dtw": dtw_hits, "n": len(owner), "z": z}


def word_times(z_heads: np.ndarray, owner: list[int]) -> list[tuple[float, float]]:
    """(start_s, end_s) per word from DTW on the mean of z-scored heads [head, token, frame]."""
    seg = token_segments(z_heads.mean(0))
    out = []
    for w in range(max(owner) + 1):
        idx = [i for i, o in enumerate(owner) if o == w]
        out.append((seg[idx[0], 0] / FPS, seg[idx[-1], 1] / FPS))
    return out


def owners_from_tokens(strings: list[str]) -> list[int]:
    """Word index of each decoded token: a token starting with a space starts a new word."""
    out, w = [], -1
    for i, s in enumerate(strings):
        if i == 0 or s.startswith(" "):
            w += 1
        out.append(w)
    return out


def _rank(tot: dict, layers: int, heads: int) -> list[tuple[int, int]]:
    score = (tot["peak"] + tot["dtw"]) / (2 * max(tot["n"], 1))
    order = np.argsort(-score.reshape(-1), kind="stable")
    return [(int(i) // heads, int(i) % heads) for i in order]


def _run(ctx: Context) -> Result:
    model, p = ctx.model, ctx.params
    reason = applies(model)
    if reason:
        raise ValueError(reason)
    gap, tol = p.gap_s, p.tol_s
    tol = gap / 2 if tol is None else tol
    n_best = p.n_heads
    clips = []
    for text in p.sentences or SENTENCES:
        words = words_of(text)
        wave, intervals = synth_words(words, gap_s=gap, voice=p.voice, speed=p.speed)
        ids, owner = word_tokens(model.tokenizer, words)
        att, _, _ = cross_attention(model, wave, ids)
        clips.append({"text": text, "intervals": intervals, "owner": owner, **score_clip(att, owner, intervals, tol)})
    L, H = clips[0]["peak"].shape
    tot = {k: sum(c[k] for c in clips) for k in ("peak", "dtw", "n")}
    ranked = _rank(tot, L, H)
    rank_of = {lh: r + 1 for r, lh in enumerate(ranked)}
    rows = [{"stream": "cross", "layer": l, "head": h, "alignment.peak_hit": tot["peak"][l, h] / tot["n"],
             "alignment.dtw_hit": tot["dtw"][l, h] / tot["n"],
             "alignment.score": (tot["peak"][l, h] + tot["dtw"][l, h]) / (2 * tot["n"]),
             "alignment.rank": rank_of[(l, h)]} for l in range(L) for h in range(H)]
    errors = []
    for i, c in enumerate(clips):  # leave-one-out timing error (in-sample when there is one clip)
        others = [d for j, d in enumerate(clips) if j != i] or clips
        rest = {k: sum(d[k] for d in others) for k in ("peak", "dtw", "n")}
        best = _rank(rest, L, H)[:n_best]
        est = word_times(np.stack([c["z"][l, h] for l, h in best]), c["owner"])
        err = np.abs(np.array(est) - np.array(c["intervals"])).mean()
        errors.append({"text": c["text"], "mean_abs_error_s": round(float(err), 4)})
    best = ranked[:n_best]
    timings = []
    if ctx.batch is not None and len(ctx.batch):
        from workbench.inputs import load_audio

        for i, item in enumerate(ctx.batch.items):
            if not item.get("path"):
                continue
            att, ids, it = cross_attention(model, load_audio(item["path"]), None)
            strings = model.token_strings(ids)
            owner = owners_from_tokens(strings)
            z = normalise(att)
            for w, (s, e) in enumerate(word_times(np.stack([z[l, h] for l, h in best]), owner)):
                word = "".join(t for t, o in zip(strings, owner) if o == w).strip()
                timings.append({"input": i, "word": word, "start_s": s, "end_s": e})
    ref = OPENAI_HEADS.get(model.name.rsplit("whisper-", 1)[-1]) if "whisper-" in model.name else None
    summary = {"top_heads": [f"cross/{l}/{h}" for l, h in best], "timing_error_s": errors,
               "tokens_scored": int(tot["n"]), "tol_s": tol, "gap_s": gap}
    if ref:
        top = ranked[: len(ref)]
        summary["openai_heads"] = [f"cross/{l}/{h}" for l, h in ref]
        summary["openai_overlap"] = f"{len(set(top) & set(ref))} of {len(ref)} (our top {len(ref)})"
    tables = {"word_times": pd.DataFrame(timings, columns=["input", "word", "start_s", "end_s"])}
    return Result(pd.DataFrame(rows), tables=tables, summary=summary)


ANALYSIS = Analysis("alignment", _run, applies, params=AlignmentParams)
