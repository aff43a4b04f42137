"""Metrics for patching: one scalar per input, read from the model output at chosen positions.

A metric names the output positions it reads (``positions``: long [input, k]) so the
patching engine only applies the output head (final norm + unembedding) where it is
needed, and evaluates ``metric(out, rows)``:

    out   [rows, k, vocab] logits (``output == "logits"``) or [rows, k, d_model] hidden
          states (``output == "hidden"``: the encoder's ``last_hidden_state``);
    rows  long [rows], the index of the input each row belongs to (several patched
          variants of one input share its index);
    ->    float [rows] (float32, or float64 for a float64 model).

Metrics are computed in float32 (float64 for a float64 model) on the device of ``out``;
index tensors (positions, targets, rows) may live on the CPU and are moved there.

Units: logits and log-probabilities in nats. The effect of a patch is always
``metric(patched) - metric(base)`` per input, averaged over inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["Metric", "LogitDiff", "LogProb", "KL", "TokenLogProb", "Loss", "CosineSimilarity",
           "last_positions", "output_tensor"]


def last_positions(batch) -> torch.Tensor:
    """Index of the last real token of each input, long [input] (right padding)."""
    mask = batch.model_inputs.get("attention_mask")
    if mask is None:
        ids = batch.model_inputs["input_ids"]
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
    return mask.long().sum(1) - 1


def output_tensor(output, kind: str) -> torch.Tensor:
    """The tensor metrics read from a HF output: ``logits`` or ``last_hidden_state``."""
    t = getattr(output, "logits" if kind == "logits" else "last_hidden_state", None)
    if t is None:
        raise ValueError(f"the model output has no {'logits' if kind == 'logits' else 'last_hidden_state'}; "
                         f"this metric needs a model that returns it")
    return t


def _f(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _at(x: torch.Tensor, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` on the device of ``like`` (metric tensors stay where they were built)."""
    return x[rows.to(x.device)].to(like.device)


def _as_pos(positions, n: int | None = None) -> torch.Tensor:
    p = torch.as_tensor(positions, dtype=torch.long)
    if p.dim() == 0:
        p = p.expand(n if n is not None else 1)
    return p[:, None] if p.dim() == 1 else p


class Metric:
    """Base class. Subclasses set ``name``, ``output``, ``pos`` ([input, k]) and ``__call__``."""

    name = "metric"
    output = "logits"
    pos: torch.Tensor

    def positions(self) -> torch.Tensor:
        """Positions read, long [input, k]."""
        return self.pos

    def __call__(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def bind(self, clean_out: torch.Tensor) -> None:
        """Receive the clean run's output at ``positions()`` ([input, k, *]); default: nothing."""

    def evaluate(self, output, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Metric of a full HF model output for inputs ``rows`` (default: all), float32 [rows]."""
        t = output_tensor(output, self.output)
        rows = torch.arange(t.shape[0]) if rows is None else rows.cpu()
        return self(gather_positions(t, self.pos[rows]), rows)

    def describe(self) -> dict:
        return {"name": self.name, "output": self.output}


def gather_positions(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """t [rows, T, *] at pos [rows, k] -> [rows, k, *] (on ``t``'s device)."""
    idx = pos.to(t.device).clamp(0, t.shape[1] - 1).reshape(*pos.shape, *([1] * (t.dim() - 2)))
    return torch.take_along_dim(t, idx.expand(*pos.shape, *t.shape[2:]), dim=1)


class LogitDiff(Metric):
    """logit[target] - logit[distractor] at one position per input (nats).

    Args:
        positions: long [input] (e.g. ``last_positions(batch)``).
        target, distractor: token ids, long [input].
    """

    name = "logit_diff"

    def __init__(self, positions, target: Sequence[int], distractor: Sequence[int]):
        self.target = torch.as_tensor(target, dtype=torch.long)
        self.distractor = torch.as_tensor(distractor, dtype=torch.long)
        self.pos = _as_pos(positions, len(self.target))
        if not (len(self.pos) == len(self.target) == len(self.distractor)):
            raise ValueError("positions, target and distractor need one entry per input")

    def __call__(self, out, rows):
        lg = _f(out[:, 0])
        return lg.gather(1, _at(self.target, rows, lg)[:, None])[:, 0] - lg.gather(1, _at(self.distractor, rows, lg)[:, None])[:, 0]


class LogProb(Metric):
    """log p(target) at one position per input (nats)."""

    name = "logprob"

    def __init__(self, positions, target: Sequence[int]):
        self.target = torch.as_tensor(target, dtype=torch.long)
        self.pos = _as_pos(positions, len(self.target))

    def __call__(self, out, rows):
        lp = torch.log_softmax(_f(out[:, 0]), -1)
        return lp.gather(1, _at(self.target, rows, lp)[:, None])[:, 0]


class KL(Metric):
    """KL(clean || patched) of the next-token distribution, mean over the positions read (nats).

    The clean distribution is the unedited model on the clean inputs (``bind``).
    """

    name = "kl"

    def __init__(self, positions):
        self.pos = _as_pos(positions)
        self.ref: torch.Tensor | None = None

    def bind(self, clean_out):
        self.ref = torch.log_softmax(_f(clean_out), -1)

    def __call__(self, out, rows):
        if self.ref is None:
            raise RuntimeError("KL metric has no clean distribution; the engine binds it (metric.bind)")
        lp = torch.log_softmax(_f(out), -1)
        ref = _at(self.ref, rows, lp).to(lp.dtype)
        return (ref.exp() * (ref - lp)).sum(-1).mean(-1)


class TokenLogProb(Metric):
    """Sum (or mean) over positions of log p(target token) (nats): teacher-forced sequence log-prob.

    Args:
        positions: long [input, k] positions whose next-token prediction is read.
        targets: long [input, k] the token expected there.
        weights: float [input, k], 0 for padding entries (default all 1).
        reduce: ``"sum"`` (sequence log-prob, e.g. a Whisper transcript) or ``"mean"``.
    """

    name = "token_logprob"

    def __init__(self, positions, targets, weights=None, reduce: str = "sum"):
        self.pos = torch.as_tensor(positions, dtype=torch.long)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.weights = torch.ones(self.pos.shape) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.reduce = reduce

    def __call__(self, out, rows):
        lp = torch.log_softmax(_f(out), -1)
        lp = lp.gather(2, _at(self.targets, rows, lp)[..., None])[..., 0]
        w = _at(self.weights, rows, lp).to(lp.dtype)
        s = (lp * w).sum(-1)
        return s if self.reduce == "sum" else s / w.sum(-1).clamp_min(1)

    def describe(self):
        return {**super().describe(), "reduce": self.reduce}


class Loss(TokenLogProb):
    """Mean next-token cross-entropy over the positions read (nats): ``-TokenLogProb(mean)``."""

    name = "loss"

    def __init__(self, positions, targets, weights=None):
        super().__init__(positions, targets, weights, reduce="mean")

    def __call__(self, out, rows):
        return -super().__call__(out, rows)

    @classmethod
    def next_token(cls, batch, start: int = 0) -> "Loss":
        """Loss over every real position >= ``start`` that has a real next token."""
        ids = batch.model_inputs["input_ids"]
        mask = batch.model_inputs.get("attention_mask", torch.ones_like(ids))
        t = ids.shape[1]
        pos = torch.arange(t - 1).expand(ids.shape[0], -1)
        w = (mask[:, 1:] * mask[:, :-1]).float() * (pos >= start).float()
        return cls(pos, ids[:, 1:], w)


class CosineSimilarity(Metric):
    """Cosine similarity between the mean-pooled hidden states of each input and a reference
    embedding (sentence-transformers mean pooling over the real tokens).

    Args:
        weights: float [input, T], 1 for real tokens (the attention mask).
        reference: float [input, d_model], e.g. the embedding of a paraphrase.
    """

    name = "cosine_similarity"
    output = "hidden"

    def __init__(self, weights, reference):
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.reference = torch.as_tensor(reference, dtype=torch.float32)
        n, t = self.weights.shape
        self.pos = torch.arange(t).expand(n, t)

    def __call__(self, out, rows):
        emb = mean_pool(out, _at(self.weights, rows, out))
        return torch.nn.functional.cosine_similarity(emb, _at(self.reference, rows, emb).to(emb.dtype), dim=-1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [batch, T, d] over positions where mask [batch, T] is 1 (weights in
    general), float32 [batch, d] (float64 for a float64 model)."""
    w = mask[..., None].to(hidden.device, _f(hidden).dtype)
    return (_f(hidden) * w).sum(1) / w.sum(1).clamp_min(1e-9)
