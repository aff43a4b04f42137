"""Attention rollout per self-attention stack.

Definition (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"):

    per layer l: A_l = mean over heads of the attention probabilities   [T, T]
                 A_hat_l = 0.5 A_l + 0.5 I, rows renormalised to sum 1   (residual connection)
    rollout:     R_1 = A_hat_1,  R_l = A_hat_l R_{l-1}

R_l[i, j] is how much of position i's representation after layer l comes from input
token j. Choices made here (the paper leaves them open):

- Cropping: padding positions (and, for the Whisper encoder, frames holding no audio) are
  removed from both axes *before* renormalising (each row is renormalised over the kept
  keys), then the residual identity is added. Whisper encoder keys beyond the audio carry
  real attention mass in the model; it is dropped, as the paper's cropping advice says.
- Heads are averaged with equal weight (GQA query heads count one each).
- Streams: every self-attention stack (``self``; Whisper ``encoder`` and ``decoder``);
  cross-attention is not a self-attention stack and is skipped.
- Per-input-token importance at layer l is one row of R_l: ``query="last"`` (the last real
  token: the position that predicts the next token of a causal LM), ``"first"`` (BERT's
  [CLS]) or ``"mean"`` (the mean over all real rows; the audio default). Defaults: causal
  and Whisper decoder "last", text encoders "first", audio encoders "mean".

The per-head table has no metric columns (rollout is per layer, not per head); the
per-token table ``rollout`` has one row per (input, stream, layer, position) with the raw
head-mean attention of that layer's chosen row (``raw``) and ``rollout``.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench import _rollout

from ._context import Analysis, Context, Params, Result, param

SELF_STREAMS = ("self", "encoder", "decoder")


QUERIES = ("last", "first", "mean")


@dataclass(frozen=True)
class RolloutParams(Params, analysis="rollout"):
    query: str | None = param(None, choices=QUERIES, doc="output row(s) to explain; None: the model's default")
    save_full: int = param(2, lo=0, doc="inputs whose full [layer, T, T] rollout is saved")


def residual_matrices(pattern_means: torch.Tensor) -> torch.Tensor:
    """A_hat = 0.5 A + 0.5 I with rows renormalised, per layer (``workbench._rollout``, the one
    definition the dashboard uses too).

    Args:
        pattern_means: [layer, T, T] head-mean attention, already cropped to real positions.
    Returns:
        [layer, T, T] float64 on the device of ``pattern_means``.
    """
    a_hat = _rollout.residual_matrices(pattern_means.detach().double().cpu().numpy())
    return torch.from_numpy(a_hat).to(pattern_means.device)


def rollout(a_hat: torch.Tensor) -> torch.Tensor:
    """Rollout of residual-augmented matrices: [layer, T, T] -> [layer, T, T], R_l = A_hat_l R_{l-1}
    (``workbench._rollout.rollout``)."""
    r = _rollout.rollout(a_hat.detach().double().cpu().numpy())
    return torch.from_numpy(r).to(device=a_hat.device, dtype=a_hat.dtype)


def stacks(model) -> list[str]:
    """The self-attention streams of ``model`` (``self``, or Whisper ``encoder``/``decoder``)."""
    return [s for s in SELF_STREAMS if any(site.stream == s for site in model.sites)]


def default_query(model, stream: str) -> str:
    if stream == "decoder" or model.kind == "causal":
        return "last"
    return "mean" if model.is_audio else "first"


def layer_means(model, batch, stream: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-mean attention of input ``index`` at every layer of ``stream``, cropped.

    Returns ``(means [layer, T, T] float32, keep [T_full] bool)`` where ``keep`` marks the
    real positions (query mask of the stream) of the uncropped input.
    """
    from workbench.capture import Pattern

    one = batch.select([index])
    trace = model.run(one, capture=[Pattern(stream)])
    layers = sorted(l for (s, l) in trace.pattern if s == stream)
    first = trace.pattern[(stream, layers[0])]
    qm = one.query_mask.get(stream)
    keep = torch.ones(first.shape[-1], dtype=torch.bool, device=first.device) if qm is None else qm[0, : first.shape[-1]].bool().to(first.device)
    idx = torch.nonzero(keep).flatten()
    means = torch.stack([trace.pattern[(stream, l)][0].mean(0)[idx][:, idx] for l in layers])
    return means, keep


def query_row(kind: str, t: int) -> int | None:
    if kind == "last":
        return t - 1
    if kind == "first":
        return 0
    if kind == "mean":
        return None
    raise ValueError(f"query must be 'last', 'first' or 'mean', got {kind!r}")


def pick(mat: torch.Tensor, row: int | None) -> torch.Tensor:
    """[layer, T, T] -> [layer, T]: one row, or the mean over rows when ``row`` is None."""
    return mat.mean(-2) if row is None else mat[:, row]


def _tokens(batch, stream: str, index: int, keep: torch.Tensor) -> list[str]:
    toks = batch.items[index].get("tokens", {}).get(stream)
    pos = torch.nonzero(keep).flatten().tolist()
    if toks:
        return [toks[p] if p < len(toks) else "" for p in pos]
    return [f"frame {p}" for p in pos]


def _run(ctx: Context) -> Result:
    model, batch = ctx.model, ctx.batch
    save_full = ctx.params.save_full
    rows, tensors, summary = [], {}, {}
    for stream in stacks(model):
        q = ctx.params.query or default_query(model, stream)
        for i in range(len(batch)):
            means, keep = layer_means(model, batch, stream, i)
            roll = rollout(residual_matrices(means))
            row = query_row(q, means.shape[-1])
            raw_imp, roll_imp = pick(means.double(), row), pick(roll, row)
            tensors.setdefault("rollout", {})[f"importance/{stream}/{i}"] = roll_imp.float().contiguous()
            if i < save_full:
                tensors["rollout"][f"rollout/{stream}/{i}"] = roll.float().contiguous()
            toks = _tokens(batch, stream, i, keep)
            for l in range(means.shape[0]):
                for p in range(means.shape[-1]):
                    rows.append({"input": i, "stream": stream, "layer": l, "position": p, "token": toks[p],
                                 "raw": float(raw_imp[l, p]), "rollout": float(roll_imp[l, p])})
        summary[stream] = {"query": q}
    heads = pd.DataFrame([{"stream": h.stream, "layer": h.layer, "head": h.head} for h in model.heads()])
    return Result(heads, tensors=tensors, tables={"rollout": pd.DataFrame(rows)}, summary=summary)


ANALYSIS = Analysis("rollout", _run, params=RolloutParams)
