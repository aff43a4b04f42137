"""Path patching between heads (Wang et al. 2022, "Interpretability in the Wild", IOI).

Effect of sender head s on receiver head r through r's query, key or value input:

1. Sender patch, everything else frozen: in the clean run, z_s is replaced by z'_s (its
   value on the corrupt input: ``resample``; 0: ``zero``; its mean over every valid
   position of the clean inputs: ``mean``, as ``Model.mean_z``) and every other component
   (heads and MLPs) keeps its clean output, so the residual that r's attention reads
   becomes x_r + (z'_s - z_s) W_O[s] (x_r: the clean one; only the direct path s -> r).
   Post-norm stacks (BERT) renormalise the residual inside every layer: there the delta
   passes the post-norms between s and r linearised at the clean run (``NormLin``, 1/sigma
   frozen), the same linearisation that makes ``decompose``'s components sum to the residual.
2. r's query (or key, or value) is recomputed from that residual by the model's own norm
   module and r's projection weights (rotary at the true positions); the other two inputs
   stay clean, r's pattern and z_r' follow (``_attention.attention_probs``, as the trace).
3. Only z_r' is patched into the clean run; every layer from r's on is recomputed.

    effect(s, r, kind) = metric(clean run with z_r := z_r') - metric(clean run)

per input, averaged over inputs (metric units, e.g. nats of logit difference). Step 3 runs
all (sender, kind, input) variants of a receiver as batches through the HF layer modules
from r's layer on (the fast patching path's ``Resumable``: layers below are not
recomputed, causal models skip the unchanged prefix). ``naive_path_patching`` is the
reference: one full forward per (sender, receiver, kind) through ``Model.run``.

Receivers: chosen heads, or the top-k heads by |effect| of a patching run
(``top_receivers``). Senders: every head of an earlier site of the same stack. Whisper's
cross-attention reads keys and values from the encoder: only its query path exists.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from .._attention import attention_probs
from .._types import Head
from ..capture import SetZ, Z
from ..errors import UserError
from ._capture import NormLin, record, stack_sites
from ._parts import attn_norm, check, head_site, qkv, reproduces, rotary, rotate

KINDS = ("q", "k", "v")
ABLATIONS = ("resample", "zero", "mean")


def top_receivers(result, k: int = 5) -> list[Head]:
    """The k heads with the largest |effect| of a ``PatchResult`` or a per-head table with a
    ``patch.effect`` column."""
    if hasattr(result, "effect") and hasattr(result, "heads"):
        order = torch.argsort(result.effect.abs(), descending=True, stable=True)[:k]
        return [result.heads[i] for i in order.tolist()]
    if "patch.effect" not in getattr(result, "columns", []):
        raise UserError("top_receivers needs a PatchResult or a heads table with a patch.effect column")
    t = result.reindex(result["patch.effect"].abs().sort_values(ascending=False).index).head(k)
    return Head.from_table(t)


@dataclass
class PathResult:
    """Path-patching effects.

    Attributes:
        senders, receivers: heads; effects: float32 [sender, receiver, 3 (q|k|v), input]
        (NaN where the path does not exist: sender not before receiver, a cross-attention
        receiver's k and v); clean_metric float32 [input]; seconds: wall-clock time.
    """

    senders: list
    receivers: list
    effects: torch.Tensor
    clean_metric: torch.Tensor
    ablation: str
    seconds: float = 0.0

    def tensor(self) -> torch.Tensor:
        """Mean over inputs: float32 [sender, receiver, 3]."""
        return self.effects.mean(-1)

    def table(self) -> pd.DataFrame:
        """Tidy: one row per existing (sender, receiver, kind): sender, receiver, kind, effect."""
        t = self.tensor()
        rows = [(s.name, r.name, kind, float(t[i, j, k])) for i, s in enumerate(self.senders)
                for j, r in enumerate(self.receivers) for k, kind in enumerate(KINDS) if not torch.isnan(t[i, j, k])]
        return pd.DataFrame(rows, columns=["sender", "receiver", "kind", "effect"])


def _check(model, receivers, ablation: str, corrupt) -> None:
    check(model)
    if not receivers:
        raise UserError("no receivers: give heads, e.g. top_receivers(patch_result, 5)")
    for r in receivers:
        head_site(model, r)
    if ablation not in ABLATIONS:
        raise UserError(f"path patching ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    if ablation == "resample" and corrupt is None:
        raise UserError("resample path patching patches in the corrupt run's sender outputs: give corrupt")


def _source_z(model, clean, corrupt, senders, ablation: str, z_clean: dict) -> dict:
    """Per site key of the senders: z'_s [n, T, head, d_head] (only the senders' heads are read)."""
    keys = sorted({h.site_key for h in senders})
    if ablation == "zero":
        return {k: torch.zeros_like(z_clean[k]) for k in keys}
    if ablation == "mean":
        means = model.mean_z(clean, senders)
        out = {k: torch.zeros_like(z_clean[k]) for k in keys}
        for h, m in means.items():
            out[h.site_key][:, :, h.head] = m.to(out[h.site_key].dtype)
        return out
    if corrupt is None:
        raise UserError("resample path patching patches in the corrupt run's sender outputs: give corrupt")
    with torch.no_grad():
        return model.run(corrupt, capture=[Z(keys)]).z


class _Receiver:
    """Recompute one receiver head's z from a residual with sender deltas (steps 1-2)."""

    def __init__(self, model, clean, head: Head):
        self.model, self.head = model, head
        self.site = model.site(head.stream, head.layer)
        self.module = model.attention_module(*self.site.key)
        self.norm = attn_norm(model, self.site)
        self.layer = model.stack_of(*self.site.key)[1]
        # the residual the attention reads: its norm's input, or (post-norm) the layer's input
        self.x = clean.norm_in[("attn", self.site.key)] if self.norm is not None else clean.resid_in[self.layer]
        self.w = qkv(model, self.site)
        q, k, v, self.mask, self.call, _ = clean.qkv[self.site.key]
        kvh = head.head // (self.site.n_heads // self.site.n_kv_heads)
        self.qkv0 = (q[:, head.head], k[:, kvh], v[:, kvh])                 # [n, T, dh] as the model passed them
        self.kvh = kvh
        self.rope = rotary(model, clean.attn_in[self.site.key][1])
        own = self.project(self.x[None], "q")[0], self.project(self.x[None], "k")[0], self.project(self.x[None], "v")[0]
        kinds = ("q",) if head.stream == "cross" else KINDS
        for kind in kinds:                                                  # the recomputation reproduces the model
            reproduces(own[KINDS.index(kind)], self.qkv0[KINDS.index(kind)], f"{head.name}'s {kind}", model)
        self.kinds = kinds

    def project(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """x [S, n, T, d] residual -> [S, n, T, dh] the head's q/k/v (norm, projection, rotary)."""
        if self.norm is None:
            y = x.double()
        else:
            with torch.no_grad():
                y = self.norm(x.to(self.norm.weight.dtype)).double()
        h = self.head.head if kind == "q" else self.kvh
        out = y @ self.w[f"W_{kind.upper()}"][h] + self.w[f"b_{kind.upper()}"][h]
        if self.rope is not None and kind in ("q", "k"):
            out = rotate(out, *self.rope)                                  # cos/sin [n, T, dh]
        return out

    def z(self, delta: torch.Tensor, kind: str) -> torch.Tensor:
        """z_r' [S, n, T, dh] for sender deltas [S, n, T, d] entering through ``kind``."""
        s, n, t = delta.shape[:3]
        new = self.project(self.x[None].double() + delta, kind).to(self.qkv0[0].dtype)
        q, k, v = (x[None].expand(s, -1, -1, -1) for x in self.qkv0)
        q, k, v = (new if kind == "q" else q), (new if kind == "k" else k), (new if kind == "v" else v)
        fl = lambda x: x.reshape(s * n, 1, x.shape[2], x.shape[3])         # noqa: E731
        mask = None if self.mask is None else self.mask.repeat(s, *([1] * (self.mask.dim() - 1)))
        pattern, _ = attention_probs(self.module, fl(q), fl(k), mask, *self.call)
        return (pattern.to(v.dtype) @ fl(v))[:, 0].view(s, n, -1, v.shape[-1])


def path_patching(model, clean, metric, receivers, *, corrupt=None, ablation: str = "resample",
                  senders=None, max_tokens: int = 2048) -> PathResult:
    """Path-patching effects of every earlier head on each receiver via q, k and v (module docstring).

    Args:
        model: a wrapped model (causal LM, Whisper, BERT-like encoder); clean / corrupt:
            paired ``Batch``es; metric: a patching metric (e.g. ``LogitDiff``,
            ``CosineSimilarity`` for an encoder).
        receivers: heads (e.g. ``top_receivers(patch_result, 5)``).
        ablation: ``resample`` (sender z from the corrupt run), ``zero`` or ``mean`` (the
            sender's mean z over the clean inputs' valid positions).
        senders: heads to try (default: every head of the receivers' stack).
        max_tokens: variants x replayed positions per replay batch.

    Returns:
        ``PathResult`` ([sender, receiver, 3, input] effects).

    Raises:
        UserError: unknown heads or ablation, resample without corrupt inputs, a family the
            decompositions do not cover.
    """
    from ..patching._resume import Resumable

    t0 = time.perf_counter()
    receivers = sorted(set(receivers))
    _check(model, receivers, ablation, corrupt)
    stack = model.stack_of(receivers[0].stream, receivers[0].layer)[0]
    if any(model.stack_of(r.stream, r.layer)[0] is not stack for r in receivers):
        raise UserError("receivers must be in one layer stack (e.g. all decoder heads of Whisper)")
    order = stack_sites(model, stack)
    rank = {s.key: i for i, s in enumerate(order)}
    senders = sorted(set(senders)) if senders is not None else [h for s in order for h in s.heads()]
    n = len(clean)
    rec = record(model, clean, stack)
    z_src = _source_z(model, clean, corrupt, senders, ablation, rec.z)
    post = _PostNorms(rec)
    pos = metric.positions()
    res = Resumable(model, clean, [], pos, metric.output)
    with torch.no_grad():
        clean_metric = metric.evaluate(res.output).float().cpu()
    effects = torch.full((len(senders), len(receivers), 3, n), float("nan"))
    for j, r in enumerate(receivers):
        recv = _Receiver(model, rec, r)
        before = [i for i, s in enumerate(senders) if rank[s.site_key] < rank[recv.site.key]]
        if not before:
            continue
        deltas = torch.stack([post(model, _delta(model, rec.z, z_src, senders[i]), senders[i], recv.layer)
                              for i in before])                                       # [S, n, T, d]
        for kind in recv.kinds:
            z_new = recv.z(deltas, kind)                                                  # [S, n, T, dh]
            eff = _replay(res, recv, z_new, rec.z[recv.site.key], metric, clean_metric, max_tokens)
            effects[torch.tensor(before), j, KINDS.index(kind)] = eff
    return PathResult(senders, receivers, effects, clean_metric, ablation, time.perf_counter() - t0)


def _delta(model, z: dict, z_src: dict, s: Head) -> torch.Tensor:
    """(z'_s - z_s) W_O[s]: [n, T, d_model] float64."""
    dz = (z_src[s.site_key][:, :, s.head].to(z[s.site_key].dtype) - z[s.site_key][:, :, s.head]).double()
    return dz @ model.W_O(*s.site_key).detach().double()[s.head]


class _PostNorms:
    """Carry a sender's delta through the post-norms between its layer and a receiver's,
    linearised at the clean run (identity in pre-norm stacks)."""

    def __init__(self, rec):
        self.rec, self.lin = rec, {}

    def __call__(self, model, delta: torch.Tensor, sender: Head, recv_layer: int) -> torch.Tensor:
        keys = sorted(k for k in self.rec.norms if isinstance(k, tuple) and k[0] == "post"
                      and model.stack_of(*sender.site_key)[1] <= k[1] < recv_layer)
        for k in keys:
            if k not in self.lin:
                self.lin[k] = NormLin(self.rec.norms[k], self.rec.norm_in[k])
            delta = self.lin[k].linear(delta)
        return delta


def _replay(res, recv: _Receiver, z_new: torch.Tensor, z_site: torch.Tensor, metric, clean_metric, max_tokens: int):
    """Patch z_r' of each (sender, input) variant into the clean run: effects [S, n]."""
    s, n, t, dh = z_new.shape
    sname, layer = res.site_stack(recv.site.key)
    rows_all = torch.arange(n).repeat(s)                                       # variant v = (sender v // n, input v % n)
    x = z_site[None].expand(s, -1, -1, -1, -1).clone()                       # [S, n, T, H, dh]
    x[:, :, :, recv.head.head] = z_new
    changed = (x != z_site[None]).flatten(3).any(-1).reshape(s * n, t)
    x = x.reshape(s * n, t, -1)
    out = torch.zeros(s * n)
    step = max(1, max_tokens // t)
    index = torch.arange(len(clean_metric))
    for c in range(0, s * n, step):
        sl = slice(c, min(c + step, s * n))
        ch = changed[sl]
        if not bool(ch.any()):
            continue                                                            # nothing changes: effect exactly 0
        start = int(torch.nonzero(ch.any(0))[0]) if res.can_skip_prefix(recv.site.key) else 0
        rows = rows_all[sl]
        with torch.no_grad():
            o = res.run_rows(sname, [layer] * len(rows), rows, [(recv.site.key, 0, len(rows), "z", x[sl])], start)
        out[sl] = (metric(o, index[rows]) - clean_metric[rows].to(o.device)).float().cpu()
    return out.view(s, n)


def naive_path_patching(model, clean, metric, sender: Head, receiver: Head, kind: str, *, corrupt=None,
                        ablation: str = "resample") -> torch.Tensor:
    """Reference for one (sender, receiver, kind): the receiver's z recomputed from the clean
    residual plus the sender's delta, then ONE full forward with ``SetZ(receiver, z')``.
    Returns float32 [input]."""
    _check(model, [receiver], ablation, corrupt)
    stack = model.stack_of(receiver.stream, receiver.layer)[0]
    rec = record(model, clean, stack)
    z_src = _source_z(model, clean, corrupt, [sender], ablation, rec.z)
    recv = _Receiver(model, rec, receiver)
    z_new = recv.z(_PostNorms(rec)(model, _delta(model, rec.z, z_src, sender), sender, recv.layer)[None], kind)[0]
    with torch.no_grad():
        base = metric.evaluate(model.run(clean).output)
        patched = metric.evaluate(model.run(clean, edits=[SetZ(receiver, z_new)]).output)
    return (patched - base).float().cpu()
