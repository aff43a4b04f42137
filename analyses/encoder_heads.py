"""Head types of audio encoder self-attention from attention-by-frame-offset statistics.

Source: studies of self-supervised speech encoders (e.g. Yang et al. 2020, "Understanding
Self-Attention of Self-Supervised Audio Transformers") describe diagonal (local), vertical
(every query attends to the same few frames) and global (broad) heads; ../shared/METHODS.md.
Axes are encoder frames (Whisper: 50 per second, 20 ms each).

Per head, over the real frames of every clip (queries and keys cropped to frames holding
audio, rows renormalised over them; Whisper's encoder has no padding mask, so the mass its
rows put on the silent padding frames is reported separately as ``pad_mass``):
- ``local_mass``: mean over queries of sum_{|k-q| <= w} A_qk (w = ``window`` = 2 frames);
- ``peak_offset``: the offset k - q (frames) with the largest mean attention;
- ``vertical_mass``: the share of all attention that goes to the top 5% most attended
  frames (column means sorted; at least one frame): 0.05 for uniform or purely local
  heads, near 1 when every query looks at the same few frames;
- ``entropy_norm``: mean row entropy / ln(n real frames) (1 = uniform);
- ``type``: first match of local (local_mass >= 0.5), vertical (vertical_mass >= 0.25, or
  pad_mass >= 0.25: a sink on the padding frames), global (entropy_norm >= 0.8), else
  other. Thresholds live in ``THRESHOLDS``.
Tensors ``offset_profile/<stream>/<layer>``: [head, 2 * max_offset + 1] mean attention by
offset -max_offset..max_offset (max_offset = 50 frames = 1 s). Inputs: the run's audio,
or the bundled speech clips when the run has none.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.capture import Pattern

from ._context import Analysis, Context, Result

THRESHOLDS = {"local_mass": 0.5, "vertical_mass": 0.25, "pad_mass": 0.25, "entropy_norm": 0.8}
TOP_FRACTION = 0.05
WINDOW = 2
MAX_OFFSET = 50


def applies(model) -> str | None:
    if not model.is_audio:
        return f"encoder head types are defined on audio frames; {model.name} is a {model.kind} model"
    return None


def head_offsets(pattern: torch.Tensor, n: int, window: int = WINDOW, max_offset: int = MAX_OFFSET) -> dict:
    """Statistics of one clip and layer: ``pattern`` [head, Q, K] (full), ``n`` real frames."""
    pad = pattern[:, :n, n:].sum(-1).mean(-1) if pattern.shape[-1] > n else torch.zeros(pattern.shape[0], device=pattern.device)
    a = pattern[:, :n, :n].double()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    q = torch.arange(n, device=a.device)[:, None]
    off = torch.arange(n, device=a.device)[None, :] - q                                  # [Q, K] offset k - q
    local = (a * (off.abs() <= window)).sum(-1).mean(-1)
    prof = torch.zeros(a.shape[0], 2 * max_offset + 1, dtype=a.dtype, device=a.device)
    cnt = torch.zeros(2 * max_offset + 1, dtype=a.dtype, device=a.device)
    inside = off.abs() <= max_offset
    idx = (off + max_offset)[inside]
    prof.index_add_(1, idx, a[:, inside])
    cnt.index_add_(0, idx, torch.ones_like(idx, dtype=a.dtype))
    prof = prof / cnt.clamp_min(1)
    ent = -torch.special.xlogy(a, a).sum(-1).mean(-1) / np.log(max(n, 2))
    top = max(1, round(TOP_FRACTION * n))
    vertical = a.mean(-2).sort(-1, descending=True).values[:, :top].sum(-1)
    return {"pad_mass": pad.double(), "local_mass": local, "vertical_mass": vertical,
            "entropy_norm": ent, "profile": prof}


def classify(local: float, vertical: float, entropy: float, pad: float = 0.0, thresholds: dict = THRESHOLDS) -> str:
    if local >= thresholds["local_mass"]:
        return "local"
    if vertical >= thresholds["vertical_mass"] or pad >= thresholds["pad_mass"]:
        return "vertical"
    if entropy >= thresholds["entropy_norm"]:
        return "global"
    return "other"


def _stream(model) -> str:
    return "encoder" if model.kind == "speech-seq2seq" else "self"


def _run(ctx: Context) -> Result:
    model = ctx.model
    reason = applies(model)
    if reason:
        raise ValueError(reason)
    batch = ctx.batch
    if batch is None or not len(batch):
        from workbench.inputs import builtin_clips, load_audio

        clips = builtin_clips()
        tr = [[] for _ in clips] if model.kind == "speech-seq2seq" else None  # encoder only: no decoding
        batch = model.prepare_audio([load_audio(c) for c in clips], paths=[str(c) for c in clips], transcripts=tr)
    stream = _stream(model)
    acc: dict = {}
    for i, item in enumerate(batch.items):
        trace = model.run(batch.select([i]), capture=[Pattern(stream)])
        for (s, layer), pat in trace.pattern.items():
            st = head_offsets(pat[0], int(item["n_frames"]))
            for k, v in st.items():
                acc.setdefault((layer, k), []).append(v)
    layers = sorted({l for l, _ in acc})
    rows, tensors = [], {}
    for l in layers:
        m = {k: torch.stack(acc[(l, k)]).mean(0) for k in ("pad_mass", "local_mass", "vertical_mass", "entropy_norm",
                                                              "profile")}
        tensors[f"offset_profile/{stream}/{l}"] = m["profile"].float().contiguous()
        for h in range(m["local_mass"].shape[0]):
            lm, vm, en = float(m["local_mass"][h]), float(m["vertical_mass"][h]), float(m["entropy_norm"][h])
            pm = float(m["pad_mass"][h])
            rows.append({"stream": stream, "layer": l, "head": h, "encoder_heads.local_mass": lm,
                         "encoder_heads.peak_offset": int(m["profile"][h].argmax()) - MAX_OFFSET,
                         "encoder_heads.vertical_mass": vm, "encoder_heads.entropy_norm": en,
                         "encoder_heads.pad_mass": pm, "encoder_heads.type": classify(lm, vm, en, pm)})
    table = pd.DataFrame(rows)
    summary = {"counts": table["encoder_heads.type"].value_counts().to_dict(), "thresholds": THRESHOLDS,
               "window_frames": WINDOW, "frames_per_second": batch.items[0].get("frame_rate"), "clips": len(batch)}
    return Result(table, tensors={"encoder_heads": tensors}, summary=summary)


ANALYSIS = Analysis("encoder_heads", _run, applies)
