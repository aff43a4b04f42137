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
  z-scored, median-filtered attention, end-of-text row included) falls inside;
- ``alignment.score`` = their mean, used for ranking; ``alignment.rank`` (1 = best);
- ``alignment.published``: whether the head is one of OpenAI's published alignment heads.

Which heads time the run's own audio (``heads``): ``"scored"`` = our top ``n_heads``;
``"published"`` = OpenAI's published heads for the model (no probe speech, so the score
columns are NaN); ``"auto"`` (default) = scored when espeak-ng is installed, else the
published heads. ``summary["heads_used"]`` and ``summary["heads_source"]`` say which and why.

Choices made here: a frame f spans [f/50, (f+1)/50) s (50 encoder frames per second) and
counts at its centre; word intervals are widened by ``tol_s`` (default half the inter-word
silence, 0.075 s) on each side so that frames of a silence count for the nearer word;
decoding is teacher-forced on the true text (the rows are those the model computes when it
transcribes correctly). Word times for any clip (the run's audio, transcribed greedily):
``workbench.word_timing.word_timestamps`` on the mean of the chosen heads, as Whisper's
``timing.py`` does (the end-of-text row ends the last word; a long first word after leading
silence is cut), and kept within the clip's speech (an energy detector, in place of
Whisper's segment timestamps), so the first word does not start at 0 s nor the last end at
the clip's end unless the speech does. ``summary["timing_error_s"]``: mean absolute error of word
start/end on each synthetic clip with heads chosen on the *other* clips (leave-one-out;
in-sample with a single clip); ``summary["openai_overlap"]``: how many of OpenAI's
published alignment heads for the model are among our top heads. Raises UserError for a
model without cross-attention, for ``heads="scored"`` without espeak-ng, for an espeak-ng
voice that does not exist, and when neither espeak-ng nor published heads are available;
ValueError for audio longer than 30 s (from ``prepare_audio``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.capture import Pattern
from workbench.errors import UserError
from workbench.word_timing import (FPS, OPENAI_ALIGNMENT_HEADS, dtw, normalise,  # noqa: F401 (dtw re-exported)
                                   published_heads, speech_bounds, token_segments, word_timestamps)

from ._context import Analysis, Context, Params, Result, param
from ._speech import espeak_ng, synth_words, word_tokens, words_of

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
    ``n_heads`` best heads used for word times; ``heads``: which heads time the run's
    audio (see the module docstring)."""

    sentences: tuple[str, ...] | None = param(None, doc="probe sentences; None: the built-in four")
    gap_s: float = param(0.15, lo=0.02, hi=2, doc="silence between probe words (s)")
    tol_s: float | None = param(None, lo=0, hi=1, doc="word interval widening (s); None: gap_s / 2")
    n_heads: int = param(8, lo=1, doc="best heads averaged for word times")
    voice: str = param("en-us", doc="espeak-ng voice of the probe speech")
    speed: int = param(160, lo=80, hi=450, doc="espeak-ng speaking rate (words per minute)")
    heads: str = param("auto", choices=("auto", "scored", "published"),
                       doc="heads for word times: scored on probe speech, OpenAI's published ones, or auto")


def applies(model) -> str | None:
    if model.kind != "speech-seq2seq":
        return f"alignment heads are cross-attention heads of Whisper-like models; {model.name} is a {model.kind} model"
    return None


def cross_attention(model, wave: np.ndarray, text_ids: list[int] | None) -> tuple[np.ndarray, list[int], dict]:
    """Cross-attention rows that predict each text token, then the row that predicts
    end-of-text: [layer, head, n_tokens + 1, real frame] (rows renormalised over real
    frames), the n text ids, and the batch item."""
    batch = model.prepare_audio([wave], transcripts=None if text_ids is None else [text_ids])
    trace = model.run(batch, capture=[Pattern("cross")])
    p = len(model.meta["prompt_ids"])
    item = batch.items[0]
    ids = batch.model_inputs["decoder_input_ids"][0, p:].tolist()
    n = int(batch.query_mask["decoder"][0].sum()) - p
    layers = sorted(l for (s, l) in trace.pattern if s == "cross")
    att = torch.stack([trace.pattern[("cross", l)][0, :, p - 1: p + n, : item["n_frames"]] for l in layers])
    att = att / att.sum(-1, keepdim=True).clamp_min(1e-12)
    return att.float().numpy(), ids[:n], item


def score_clip(att: np.ndarray, owner: list[int], intervals: list[tuple[float, float]], tol_s: float) -> dict:
    """Per head hit counts of one clip (``att`` from ``cross_attention``: n token rows + the
    end-of-text row): {"peak": [layer, head], "dtw": [layer, head], "n": tokens, "z": att z-scored}."""
    n = len(owner)
    lo = np.array([intervals[w][0] - tol_s for w in owner]) * FPS
    hi = np.array([intervals[w][1] + tol_s for w in owner]) * FPS
    centre = att[:, :, :n].argmax(-1) + 0.5                                # [layer, head, token]
    peak = ((centre >= lo) & (centre < hi)).sum(-1)
    z = normalise(att)
    L, H = att.shape[:2]
    dtw_hits = np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            mid = token_segments(z[l, h])[:n].mean(-1) + 0.5
            dtw_hits[l, h] = ((mid >= lo) & (mid < hi)).sum()
    return {"peak": peak.astype(float), "dtw": dtw_hits, "n": n, "z": z}


def word_times(z_heads: np.ndarray, tokens: list[str], owner: list[int] | None = None,
               wave: np.ndarray | None = None) -> list[tuple[float, float]]:
    """(start_s, end_s) per word from the mean of z-scored heads [head, n_tokens + 1, frame]
    (``workbench.word_timing.word_timestamps``; ``owner`` imposes the token-to-word grouping;
    with the clip's 16 kHz ``wave``, words are kept within its speech)."""
    speech = None if wave is None else speech_bounds(wave)
    words = word_timestamps(z_heads.mean(0), tokens, owner, speech=speech)
    return [(w.start, w.end) for w in words]


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


def _choose(model, p: AlignmentParams) -> tuple[str, str]:
    """("scored" | "published", why) before any compute; raises UserError when neither works."""
    ref = published_heads(model.name)
    have_espeak = espeak_ng() is not None
    if p.heads == "scored" or (p.heads == "auto" and have_espeak):
        if not have_espeak:
            raise UserError("alignment needs espeak-ng to synthesise probe speech for scoring heads (apt-get install "
                            "espeak-ng), or heads='published' to use OpenAI's published alignment heads")
        return "scored", f"top {p.n_heads} heads scored on synthetic speech with known word times (espeak-ng)"
    if not ref:
        why = "heads='published' was asked for" if p.heads == "published" else "espeak-ng is not installed"
        raise UserError(f"alignment: {why} and OpenAI published no alignment heads for {model.name}; install "
                        "espeak-ng (apt-get install espeak-ng) to score heads on synthetic speech")
    why = "heads='published' was asked for" if p.heads == "published" else \
        "espeak-ng is not installed, so no probe speech could be synthesised to score heads"
    return "published", f"OpenAI's published alignment heads for {model.name} ({why})"


def _score(model, p: AlignmentParams) -> tuple[pd.DataFrame, list[tuple[int, int]], dict]:
    """Score every cross-attention head on the probe sentences: (table, ranked heads, summary)."""
    gap = p.gap_s
    tol = gap / 2 if p.tol_s is None else p.tol_s
    clips = []
    for text in p.sentences or SENTENCES:
        words = words_of(text)
        wave, intervals = synth_words(words, gap_s=gap, voice=p.voice, speed=p.speed)
        ids, owner = word_tokens(model.tokenizer, words)
        att, _, _ = cross_attention(model, wave, ids)
        clips.append({"text": text, "intervals": intervals, "owner": owner, "tokens": model.token_strings(ids), "wave": wave,
                      **score_clip(att, owner, intervals, tol)})
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
        best = _rank(rest, L, H)[:p.n_heads]
        est = word_times(np.stack([c["z"][l, h] for l, h in best]), c["tokens"], c["owner"], c["wave"])
        err = np.abs(np.array(est) - np.array(c["intervals"])).mean()
        errors.append({"text": c["text"], "mean_abs_error_s": round(float(err), 4)})
    summary = {"timing_error_s": errors, "tokens_scored": int(tot["n"]), "tol_s": tol, "gap_s": gap,
               "voice": p.voice, "speed_wpm": p.speed}
    return pd.DataFrame(rows), ranked, summary


def _clip_words(model, batch, heads: list[tuple[int, int]]) -> pd.DataFrame:
    """Word times of the run's own audio clips (greedy transcripts) from ``heads``."""
    from workbench.inputs import load_audio

    timings = []
    for i, item in enumerate(batch.items if batch is not None else []):
        if not item.get("path"):
            continue
        wave = load_audio(item["path"])
        att, ids, _ = cross_attention(model, wave, None)
        z = normalise(att)
        words = word_timestamps(np.stack([z[l, h] for l, h in heads]).mean(0), model.token_strings(ids),
                                speech=speech_bounds(wave))
        timings += [{"input": i, "word": w.word.strip(), "start_s": w.start, "end_s": w.end} for w in words]
    return pd.DataFrame(timings, columns=["input", "word", "start_s", "end_s"])


def _run(ctx: Context) -> Result:
    model, p = ctx.model, ctx.params
    reason = applies(model)
    if reason:
        raise UserError(reason)
    source, why = _choose(model, p)
    ref = published_heads(model.name) or ()
    layers = 1 + max(s.layer for s in model.sites if s.stream == "cross")
    n_head = next(s.n_heads for s in model.sites if s.stream == "cross")
    if source == "scored":
        table, ranked, summary = _score(model, p)
        best = ranked[:p.n_heads]
    else:
        table = pd.DataFrame([{"stream": "cross", "layer": l, "head": h} for l in range(layers) for h in range(n_head)])
        for col in ("alignment.peak_hit", "alignment.dtw_hit", "alignment.score", "alignment.rank"):
            table[col] = np.nan
        ranked, summary, best = [], {}, [lh for lh in ref if lh[0] < layers and lh[1] < n_head]
    table["alignment.published"] = [(l, h) in set(ref) for l, h in zip(table["layer"], table["head"])]
    summary = {"heads_used": [f"cross/{l}/{h}" for l, h in best], "heads_source": why, **summary}
    if source == "scored":
        summary["top_heads"] = summary["heads_used"]
    if ref:
        summary["openai_heads"] = [f"cross/{l}/{h}" for l, h in ref]
        if ranked:
            top = ranked[: len(ref)]
            summary["openai_overlap"] = f"{len(set(top) & set(ref))} of {len(ref)} (our top {len(ref)})"
    return Result(table, tables={"word_times": _clip_words(model, ctx.batch, best)}, summary=summary)


ANALYSIS = Analysis("alignment", _run, applies, params=AlignmentParams)
