"""Patching nodes: a head's output ``z`` or its query, key or value input (``q``, ``k``, ``v``).

Node values are the tensors the model passes to its attention function (``_attention``):
``q`` [batch, head, query_pos, d_head] and ``k`` / ``v`` [batch, kv_head, key_pos, d_head],
i.e. after rotary embeddings, q/k norms (Qwen3, OLMo 2, Gemma 3) and Whisper's query
pre-scaling, before GQA repeats the key/value heads. The unit patched is

- ``z``, ``q``: one query head (``Head(stream, layer, head)``, head < n_heads);
- ``k``, ``v``: one key/value head (``Head(stream, layer, kv_head)``, kv_head < n_kv_heads),
  shared by the query heads kv_head * r .. kv_head * r + r - 1 (r = n_heads / n_kv_heads):
  TransformerLens' convention for ``hook_k`` / ``hook_v`` under grouped-query attention.
  Without GQA a k/v unit is one head. Results of a k/v sweep have one row per KV head.

Patching q or k changes the attention pattern: the softmax is recomputed from the patched
query / key (the model's own attention function runs on them). A unit's node affects only
the z of the query heads that read it, so the patched z of every head is obtained from ONE
call of the attention function with every unit of the site replaced at once
(``patched_z``), and exact q/k/v patching is z patching of the unit's heads with that z'.

Ablations of a node: ``resample`` (the node's value in the paired run), ``zero`` (0: for q
or k, scores 0, i.e. uniform attention over the visible keys), ``mean`` (mean of the node
over every valid position of the reference inputs, per unit). Denoising with zero/mean
(restoring one node into a model with every node ablated) is not supported for q/k/v.

The capture and edit point is ``_attention.INPUTS``: while ``hooked`` is active, every call
of the workbench attention function passes its inputs through it. Every site asked for must
fire, else ``SiteNotFiredError``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .. import _attention
from .._types import Head
from ..errors import UserError

NODES = ("z", "q", "k", "v")
_INDEX = {"q": 0, "k": 1, "v": 2}


def check_node(node: str, ablation: str, direction: str, per_position: bool, cli: bool = False) -> None:
    """Raise UserError for an unknown node or a combination q/k/v nodes do not support (the
    message names Python arguments, or command-line flags with ``cli``)."""
    def arg(name: str, value=None) -> str:
        if cli:
            flag = "--" + name.replace("_", "-")
            return flag if value in (None, True) else f"no {flag}" if value is False else f"{flag} {value}"
        return name if value is None else f"{name}={value!r}"

    if node not in NODES:
        raise UserError(f"unknown {arg('node')} {node!r}; use one of {', '.join(NODES)}")
    if node == "z":
        return
    if direction == "denoising" and ablation != "resample":
        raise UserError(f"{arg('node', node)} with {arg('direction', 'denoising')} needs {arg('ablation', 'resample')} "
                        "(restoring one q/k/v node into a model with every node zero/mean-ablated is not "
                        f"supported); or use {arg('node', 'z')}")
    if per_position and node in ("k", "v"):
        raise UserError(f"{arg('per_position', True)} is supported for node z and q only (a key/value position "
                        f"feeds every later query); use {arg('per_position', False)} with {arg('node', node)}")


def n_units(site, node: str) -> int:
    """Units of a site for a node: query heads (z, q) or key/value heads (k, v)."""
    return site.n_kv_heads if node in ("k", "v") else site.n_heads


def units(model, node: str) -> list[Head]:
    """Every unit of the model for ``node`` (module docstring), sorted."""
    return sorted(Head(s.stream, s.layer, u) for s in model.sites for u in range(n_units(s, node)))


def groups(site, node: str, unit_ids: list[int]) -> list[list[int]]:
    """The query heads whose z each unit changes: [[head, ...] per unit]."""
    if node not in ("k", "v"):
        return [[u] for u in unit_ids]
    r = site.n_heads // site.n_kv_heads
    return [list(range(u * r, (u + 1) * r)) for u in unit_ids]


@dataclass
class Call:
    """One attention call's inputs as the model passed them (module docstring)."""

    module: torch.nn.Module
    qkv: tuple                         # query [n, head, T, d], key / value [n, kv_head, Tk, d]
    mask: torch.Tensor | None
    scaling: float | None
    kwargs: dict = field(default_factory=dict)

    def node(self, node: str) -> torch.Tensor:
        return self.qkv[_INDEX[node]]


class _Hook:
    """The ``_attention.INPUTS`` callable: records calls of chosen sites and replaces nodes."""

    def __init__(self, model, keys, capture: bool, replace: dict | None):
        self.site_of = {id(model.attention_module(*k)): k for k in keys}
        self.capture, self.replace = capture, replace or {}
        self.calls: dict = {}
        self.fired: set = set()

    def __call__(self, module, query, key, value, mask, scaling, kwargs):
        k = self.site_of.get(id(module))
        if k is None:
            return query, key, value
        self.fired.add(k)
        qkv = [query, key, value]
        for node, vals in self.replace.get(k, ()):
            i = _INDEX[node]
            t = qkv[i].clone()
            for u, v in vals.items():
                t[:, u] = v.to(t.device, t.dtype)
            qkv[i] = t
        if self.capture and k not in self.calls:           # the first call (a seq2seq tail may call again)
            self.calls[k] = Call(module, tuple(qkv), mask, scaling, dict(kwargs))
        return tuple(qkv)


@contextmanager
def hooked(model, keys, *, capture: bool = False, replace: dict | None = None):
    """Within: calls of sites ``keys`` are recorded (``capture``: ``hook.calls`` {key: Call},
    tensors as passed, in the autograd graph under ``grad=True``) and ``replace``
    {key: [(node, {unit: value [n, T, d]}), ...]} is applied. Raises SiteNotFiredError
    when a site never fired."""
    from ..trace import SiteNotFiredError

    hook = _Hook(model, keys, capture, replace)
    token = _attention.INPUTS.set(hook)
    try:
        yield hook
    finally:
        _attention.INPUTS.reset(token)
    missing = sorted(set(keys) - hook.fired)
    if missing:
        raise SiteNotFiredError("q/k/v node sites never fired during the forward: "
                                + ", ".join(f"{s}/{l}" for s, l in missing))


def capture(model, batch, keys, edits=(), *, grad: bool = False, capture_z: bool = False):
    """One run of ``batch``: (trace, {key: Call}). ``capture_z`` also captures z (in the
    graph with ``grad``)."""
    from ..capture import Z

    with hooked(model, keys, capture=True) as hook:
        trace = model.run(batch, capture=[Z(list(keys), grad=grad)] if capture_z else [], edits=list(edits),
                          grad=grad)
    return trace, hook.calls


def patched_z(call: Call, node: str, value: torch.Tensor) -> torch.Tensor:
    """z [n, T, head, d_head] of the site with ``node`` replaced by ``value`` (every unit at
    once; same shape as the node), from the model's own attention function (no trace)."""
    qkv = list(call.qkv)
    qkv[_INDEX[node]] = value.to(qkv[_INDEX[node]].device, qkv[_INDEX[node]].dtype)
    t_in, t_tr = _attention.INPUTS.set(None), _attention.ACTIVE.set(None)
    try:
        with torch.no_grad():
            out, _ = _attention.workbench_attention(call.module, *[x.detach() for x in qkv], call.mask,
                                                    scaling=call.scaling, dropout=0.0, **call.kwargs)
    finally:
        _attention.ACTIVE.reset(t_tr)
        _attention.INPUTS.reset(t_in)
    return out


def valid_positions(batch, site, node: str, t: int) -> torch.Tensor | None:
    """bool [n, t] real positions of a node's position axis (queries: the site's stream;
    keys/values: the stream they come from, the encoder for cross-attention), None if all."""
    stream = "encoder" if (site.stream == "cross" and node in ("k", "v")) else site.stream
    m = batch.query_mask.get(stream)
    return None if m is None else m[:, -t:].bool()


def means(model, batch, keys, node: str) -> dict:
    """Mean of the node over every valid position of ``batch``: {key: [unit, d_head]} (float32)."""
    _, calls = capture(model, batch, keys)
    out = {}
    for k in keys:
        x = calls[k].node(node).detach().float()                             # [n, U, T, d]
        m = valid_positions(batch, model.site(*k), node, x.shape[2])
        w = torch.ones(x.shape[0], x.shape[2], device=x.device) if m is None else m.to(x.device).float()
        out[k] = torch.einsum("nutd,nt->ud", x, w) / w.sum().clamp_min(1)
    return out


def source_fn(model, ablation: str, node: str, keys, src_batch=None, mean: dict | None = None):
    """The node's values patched in, as a function (site key, base node [n, U, T, d]) -> same
    shape: resample (the node in one run of ``src_batch``, run here), zero, or ``mean``
    ({key: [U, d]}, from ``means``) at every position."""
    if ablation == "resample":
        _, calls = capture(model, src_batch, keys)
        vals = {k: calls[k].node(node).detach() for k in keys}
        return lambda key, base: vals[key].to(base.device, base.dtype)
    if ablation == "zero":
        return lambda key, base: torch.zeros_like(base)
    return lambda key, base: mean[key].to(base.device, base.dtype)[None, :, None].expand_as(base).clone()


def naive_effects(model, batch, edits, key, unit_ids: list[int], node: str, src: torch.Tensor, base: torch.Tensor,
                  metric, index: torch.Tensor, base_metric: torch.Tensor, *, per_position: bool = False,
                  query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One full forward per unit (and per query position, node q) with the unit's node
    replaced inside the attention function: float32 [units, n] or [units, n, pos].
    ``src`` / ``base`` [n, U, T, d]: the values patched in / the base run's."""
    n, t = base.shape[0], base.shape[2]
    qm = torch.ones(n, t, dtype=torch.bool) if query_mask is None else query_mask[:, -t:].bool().cpu()
    out = torch.zeros(len(unit_ids), n, t) if per_position else torch.zeros(len(unit_ids), n)

    def one(u, value):
        with torch.no_grad(), hooked(model, [key], replace={key: [(node, {u: value})]}):
            tr = model.run(batch, edits=list(edits))
        return (metric.evaluate(tr.output, index).cpu() - base_metric.cpu()).float()

    for j, u in enumerate(unit_ids):
        if not per_position:
            out[j] = one(u, src[:, u])
            continue
        for q in range(t):
            value = base[:, u].clone()
            value[:, q] = src[:, u, q]
            out[j, :, q] = one(u, value) * qm[:, q]
    return out
