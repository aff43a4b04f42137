"""Direct logit attribution (DLA) per component, per head and per source position.

Definition (Elhage et al. 2021; nostalgebraist 2020 "logit lens"; the IOI paper's "direct
effect", Wang et al. 2022). The logits read by a metric are
``(final_norm(resid) @ W_U.T + b_U)[pos, token]``. With the final norm's scale 1/sigma frozen
at the clean run (the standard linearisation), the metric's logit combination is affine in
the residual, and the residual is a sum of components (``decompose``): embeddings, each
head's ``z_h W_O[h]``, each MLP, the biases. The DLA of component c is its share:

    dla(c) = sum_k w_k * linear(c[pos_k]) . (W_U[plus_k] - W_U[minus_k])

plus a ``bias/out`` component for the final norm's beta and the unembedding bias. The
components sum to the metric's logit combination exactly (float64 round-off) at the clean
input. Per source position: head h's output at query p is ``sum_j A[p, j] v_j W_O[h]``, so
its DLA splits over the key positions j it reads (``per_position``, sums to the head's DLA).

Readouts (``readout``): ``LogitDiff`` -> logit[target] - logit[distractor]; ``LogProb`` and
``TokenLogProb`` -> the weighted logits of the target tokens (the linear part of the
log-prob; Whisper's next transcript token); ``Loss`` -> minus those. Metrics that are not
built from logits (KL, cosine similarity) raise UserError.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .._attention import attention_probs
from ..errors import UserError
from ..patching import metrics as M
from ._capture import NormLin, record
from ._parts import check
from .decompose import Component, components, gather


@dataclass
class Readout:
    """A linear combination of logits: sum_k weight[i, k] * (logit[pos, plus] - logit[pos, minus]).

    pos, plus: long [input, k]; minus: long [input, k] or None; weight: float64 [input, k].
    """

    pos: torch.Tensor
    plus: torch.Tensor
    minus: torch.Tensor | None
    weight: torch.Tensor
    name: str = "logit"

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """The readout of full logits [input, T, vocab] -> float64 [input]."""
        lg = gather(logits, self.pos).double()                      # [n, k, vocab]
        v = lg.gather(2, self.plus[..., None])[..., 0]
        if self.minus is not None:
            v = v - lg.gather(2, self.minus[..., None])[..., 0]
        return (v * self.weight).sum(1)


def readout(metric) -> Readout:
    """The logit combination a patching metric is built on (module docstring)."""
    if isinstance(metric, Readout):
        return metric
    if isinstance(metric, M.LogitDiff):
        one = torch.ones(metric.pos.shape, dtype=torch.float64)
        return Readout(metric.pos, metric.target[:, None].expand(metric.pos.shape),
                       metric.distractor[:, None].expand(metric.pos.shape), one, "logit_diff")
    if isinstance(metric, M.TokenLogProb):
        w = metric.weights.double()
        if metric.reduce == "mean":
            w = w / w.sum(-1, keepdim=True).clamp_min(1)
        sign = -1.0 if isinstance(metric, M.Loss) else 1.0
        return Readout(metric.pos, metric.targets, None, sign * w, "minus_target_logit" if sign < 0 else
                       "target_logit")
    if isinstance(metric, M.LogProb):
        return Readout(metric.pos, metric.target[:, None].expand(metric.pos.shape), None,
                       torch.ones(metric.pos.shape, dtype=torch.float64), "target_logit")
    raise UserError(f"direct logit attribution needs a metric built from logits (logit difference, log-prob "
                    f"of a token); {getattr(metric, 'name', type(metric).__name__)} is not")


@dataclass
class DLAResult:
    """Direct logit attribution of one batch.

    Attributes:
        components: the ``Component`` rows; values: float64 [component, input] (logit units,
            nats), summing over components to ``total``.
        total: float64 [input] the sum; actual: float64 [input] the readout of the model's
            own logits (equal to ``total`` up to round-off: the norm linearisation is exact
            at the clean input).
        per_position: {site key: float64 [head, input, key_pos]} each head's DLA split over
            the key positions it attends to (None when not asked for).
        readout: the ``Readout``.
    """

    components: list
    values: torch.Tensor
    total: torch.Tensor
    actual: torch.Tensor
    per_position: dict | None
    readout: Readout

    def table(self) -> pd.DataFrame:
        """Tidy: one row per (component, input): component, kind, stream, layer, head, input, dla."""
        n = self.values.shape[1]
        rows = [(c.name, c.kind, c.stream, c.layer, c.head, i, float(self.values[r, i]))
                for r, c in enumerate(self.components) for i in range(n)]
        return pd.DataFrame(rows, columns=["component", "kind", "stream", "layer", "head", "input", "dla"])

    def head_table(self) -> pd.DataFrame:
        """One row per head: stream, layer, head, ``dla.value`` (mean over inputs), ``dla.rank``."""
        idx = [r for r, c in enumerate(self.components) if c.kind == "head"]
        v = self.values[idx].mean(1)
        order = torch.argsort(v.abs(), descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, len(order) + 1)
        cs = [self.components[r] for r in idx]
        return pd.DataFrame({"stream": [c.stream for c in cs], "layer": [c.layer for c in cs],
                             "head": [c.head for c in cs], "dla.value": v.numpy(), "dla.rank": rank.numpy()})

    def tensors(self) -> dict:
        t = {"values": self.values, "total": self.total, "actual": self.actual}
        for (s, l), v in (self.per_position or {}).items():
            t[f"per_position/{s}/{l}"] = v
        return t


def _unembed(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W_U [vocab, d_model] and b_U [vocab] or None (model dtype); UserError without an unembedding."""
    mod = model.unembed
    if mod is None or model.kind not in ("causal", "speech-seq2seq"):
        raise UserError(f"{model.name} has no unembedding (a {model.kind} model): logit attribution needs a "
                        "causal LM or Whisper")
    b = getattr(mod, "bias", None)
    return model.W_U.detach().T, None if b is None else b.detach()            # native dtype: rows cast when read


def _direction(model, clean, ro: Readout):
    """(g [n, k, d] float64 so that dla(c) = sum_k w_k c.g_k, bias/out value [n])."""
    w_u, b_u = _unembed(model)
    u = w_u[ro.plus].double() - (w_u[ro.minus].double() if ro.minus is not None else 0)     # [n, k, d]
    fin = NormLin(clean.norms["final"], gather(clean.norm_in["final"], ro.pos))
    g = fin.readout(u)
    bias = torch.zeros(u.shape[:2], dtype=torch.float64)
    if fin.beta is not None:
        bias = bias + (u * fin.beta).sum(-1)
    if b_u is not None:
        bias = bias + b_u[ro.plus].double() - (b_u[ro.minus].double() if ro.minus is not None else 0)
    return g, (bias * ro.weight).sum(1)


def dla(model, batch, metric, *, per_position: bool = True) -> DLAResult:
    """Direct logit attribution of every component (and head x key position) for ``batch``.

    Args:
        model: a wrapped causal LM or Whisper; batch: its inputs (``Batch``).
        metric: a patching metric (``LogitDiff``, ``LogProb``, ``TokenLogProb``, ``Loss``) or a
            ``Readout``; its positions index ``batch``'s logits.
        per_position: also split each head's DLA over key positions.

    Returns:
        ``DLAResult``. Cost: one forward with hooks plus per-head projections.

    Raises:
        UserError: a model without unembedding, a metric not built from logits.
    """
    ro = readout(metric)
    _unembed(model)                                                   # UserError before any compute
    check(model)
    clean = record(model, batch, model.stacks[-1])
    g, bias_out = _direction(model, clean, ro)
    names, comps = components(clean, None, ro.pos)                    # [C, n, k, d]
    values = torch.einsum("cnkd,nkd,nk->cn", comps, g, ro.weight)
    names = names + [Component("bias", layer=-1, stream="out")]
    values = torch.cat([values, bias_out[None]])
    actual = ro.value(clean.output.logits)
    pp = _per_position(model, clean, ro, g) if per_position else None
    return DLAResult(names, values, values.sum(0), actual, pp, ro)


def _per_position(model, clean, ro: Readout, g: torch.Tensor) -> dict:
    """{site key: [head, n, key_pos]}: A[p, j] (v_j W_O[h]) . g, weighted over the readout's k.

    Cost per site: the eager probabilities of the query rows the readout reads, and two small
    matmuls (g through W_O, then against the values, per KV head: no repeated keys/values)."""
    out = {}
    n, kk, d = g.shape
    lo, hi = int(ro.pos.min()), int(ro.pos.max()) + 1                   # only the query rows read
    rel = (ro.pos - lo)
    weight = ro.weight
    for site in clean.sites:
        q, k, v, mask, call, _ = clean.qkv[site.key]
        pattern, _ = attention_probs(model.attention_module(*site.key), q, k, mask, *call, rows=slice(lo, hi))
        h, s, kvh, dh = pattern.shape[1], pattern.shape[3], v.shape[1], v.shape[3]
        rows = torch.take_along_dim(pattern, rel.to(pattern.device)[:, None, :, None].expand(n, h, -1, s), dim=2)
        w_o = model.W_O(site.stream, site.layer).detach()                            # [H, dh, d]
        og = g.to(w_o.device) @ w_o.double().reshape(h * dh, d).T                  # [n, k, H * dh]
        og = og.view(n, kk, kvh, h // kvh, dh).permute(0, 2, 3, 1, 4).reshape(n, kvh, h // kvh * kk, dh)
        vog = (og @ v.double().transpose(2, 3)).view(n, h, kk, s)                    # (v_j W_O[h]) . g_k
        w = weight.to(vog.device)[:, None, :, None]
        out[site.key] = (rows.double() * vog * w).sum(2).transpose(0, 1).cpu()      # [H, n, S]
    return out
