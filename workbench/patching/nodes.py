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

Per position (``per_position=True``): for q the unit is (head, query position) as for z; for
k and v it is (KV head, *key* position p): replacing key/value p changes the z of every head
of the group at every query position that sees p (>= p under a causal mask; every decoder
position for Whisper's cross-attention, whose key positions are encoder frames). The fast
path gets the z' of every unit at key position p from one attention call with position p of
every unit replaced (``key_position_z``; a work unit holds P x the site's z). Results have
the per-position layout of z and q, [unit, input, pos], with pos the key position
(cross-attention: the encoder position).
Positions that are padding in an input (of the node's position axis: query positions for q,
key positions for k / v) get effect 0 and are not run.

Ablations of a node: ``resample`` (the node's value in the paired run), ``zero`` (0: for q
or k, scores 0, i.e. uniform attention over the visible keys), ``mean`` (mean of the node
over every valid position of the reference inputs, per unit; for k this is the same as
zero: a key constant over positions scores every visible key alike). Denoising with zero / mean is
defined as for z: the base run is the clean input with the node of every unit of the sweep
ablated (at every position, in every layer, ``ablated``; replays of the fast path keep it
for the sites downstream of a patch) and one unit is restored to its value in the clean,
un-ablated run; effect = M(restored) - M(base).

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


def check_node(node: str, cli: bool = False) -> None:
    """Raise UserError for an unknown node (the message names the Python argument, or the
    command-line flag with ``cli``). Every ablation, direction, ``per_position`` and method
    applies to every node."""
    if node not in NODES:
        raise UserError(f"unknown {'--node' if cli else 'node'} {node!r}; use one of {', '.join(NODES)}")


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


def members(n_heads: int, unit_ids: list, unit_groups: list | None = None) -> torch.Tensor:
    """bool [unit, head]: the heads whose z each unit patches; ``unit_groups`` [[head, ...] per
    unit] (``groups``), default one head per unit (the unit's own index)."""
    m = torch.zeros(len(unit_ids), n_heads, dtype=torch.bool)
    for j, u in enumerate(unit_ids):
        m[j, unit_groups[j] if unit_groups is not None else [u]] = True
    return m


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
def replacing(model, replace: dict | None):
    """Within: ``replace`` (as ``hooked``) applies to whichever of its sites run; no site is
    required to fire (the fast path's replays run only the layers after a patch)."""
    if not replace:
        yield
        return
    token = _attention.INPUTS.set(_Hook(model, list(replace), False, replace))
    try:
        yield
    finally:
        _attention.INPUTS.reset(token)


def ablated(by_key: dict, node: str, ablation: str, mean: dict | None = None) -> dict:
    """The base run of zero / mean denoising: every unit's node ablated at every position,
    {key: [(node, {unit: value})]} for ``hooked`` / ``replacing``; value 0 (zero) or the
    unit's mean [d_head] (``mean[Head(stream, layer, unit)]``, from ``means``), broadcast over
    inputs and positions."""
    if ablation not in ("zero", "mean"):
        raise ValueError(f"ablated: ablation zero or mean, not {ablation!r}")
    return {k: [(node, {u: torch.zeros(()) if ablation == "zero" else mean[Head(k[0], k[1], u)] for u in us})]
            for k, us in by_key.items()}


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


def capture(model, batch, keys, edits=(), *, grad: bool = False, capture_z: bool = False,
            replace: dict | None = None):
    """One run of ``batch``: (trace, {key: Call}). ``capture_z`` also captures z (in the
    graph with ``grad``); ``replace`` (as ``hooked``) applies in the run, the calls hold the
    replaced nodes."""
    from ..capture import Z

    with hooked(model, sorted(set(keys) | set(replace or {})), capture=True, replace=replace) as hook:
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
    """Mean of the node over every valid position of ``batch``, for every unit of the sites
    ``keys``: {Head(stream, layer, unit): [d_head]} (float32; keyed like ``Model.mean_z``)."""
    _, calls = capture(model, batch, keys)
    out = {}
    for k in keys:
        x = calls[k].node(node).detach().float()                             # [n, U, T, d]
        m = valid_positions(batch, model.site(*k), node, x.shape[2])
        w = torch.ones(x.shape[0], x.shape[2], device=x.device) if m is None else m.to(x.device).float()
        mean = torch.einsum("nutd,nt->ud", x, w) / w.sum().clamp_min(1)
        out.update({Head(k[0], k[1], u): mean[u] for u in range(mean.shape[0])})
    return out


def source_fn(model, ablation: str, node: str, keys, src_batch=None, mean: dict | None = None):
    """The node's values patched in, as a function (site key, base node [n, U, T, d]) -> same
    shape: resample (the node in one run of ``src_batch``, run here), zero, or ``mean``
    ({Head: [d]}, from ``means``) at every position."""
    if ablation == "resample":
        _, calls = capture(model, src_batch, keys)
        vals = {k: calls[k].node(node).detach() for k in keys}
        return lambda key, base: vals[key].to(base.device, base.dtype)
    if ablation == "zero":
        return lambda key, base: torch.zeros_like(base)
    def mean_src(key, base):
        m = torch.stack([mean[Head(key[0], key[1], u)] for u in range(base.shape[1])])
        return m.to(base.device, base.dtype)[None, :, None].expand_as(base).clone()
    return mean_src


def key_position_z(call: Call, node: str, src: torch.Tensor, zb: torch.Tensor, groups: list) -> torch.Tensor:
    """z' of a site per key position (node k or v, ``per_position``): float [P, n, T, head, d_head],
    entry p the site's z with key/value position p of every unit replaced by ``src`` (units are
    independent: one attention call per key position serves them all). Heads whose unit does
    not change at p keep ``zb`` bit for bit. ``src`` [n, unit, P, d_head] the values patched in,
    ``zb`` [n, T, head, d_head] the base run's z, ``groups`` [[head, ...] per unit] (``groups``).
    Memory: P times the site's z."""
    base = call.node(node).detach()
    src = src.to(base.device, base.dtype)
    member = members(zb.shape[2], list(range(base.shape[1])), groups).to(zb.device)
    out = zb[None].repeat(base.shape[2], 1, 1, 1, 1)
    changed = (src != base).any(-1).to(zb.device)                                 # [n, unit, P]
    for p in range(base.shape[2]):
        if not changed[:, :, p].any():
            continue
        value = base.clone()
        value[:, :, p] = src[:, :, p]
        z = patched_z(call, node, value).to(zb.device, zb.dtype)
        heads = (changed[:, :, p, None] & member[None]).any(1)                     # [n, head]
        out[p] = torch.where(heads[:, None, :, None], z, zb)
    return out


def z_source(model, node: str, calls: dict, source, keys, per_key: bool):
    """The z patched in for node q/k/v, as the fast path takes it: (site key, base z) -> z'
    [n, pos, head, d_head] of every head with its unit's node replaced by ``source``
    (``source_fn``) in the base run's ``calls``; ``per_key`` (k / v per key position): [P, n,
    pos, head, d_head] (``key_position_z``), computed when a work unit asks for its site."""
    if per_key:
        def per_key_z(key, zb):
            c, site = calls[key], model.site(*key)
            return key_position_z(c, node, source(key, c.node(node).detach()), zb,
                                  groups(site, node, list(range(n_units(site, node)))))
        return per_key_z
    z_src = {k: patched_z(calls[k], node, source(k, calls[k].node(node).detach())) for k in keys}
    return lambda key, zb: z_src[key]


def _with_unit(replace: dict | None, key, node: str, unit: int, value: torch.Tensor) -> dict:
    """``replace`` (the base run's, e.g. ``ablated``) with ``node`` of ``unit`` at ``key`` set to ``value``."""
    rep = dict(replace or {})
    vals = {u: v for nd, vs in rep.get(key, []) if nd == node for u, v in vs.items()}
    rep[key] = [x for x in rep.get(key, []) if x[0] != node] + [(node, {**vals, unit: value})]
    return rep


def naive_effects(model, batch, edits, key, unit_ids: list[int], node: str, src: torch.Tensor, base: torch.Tensor,
                  metric, index: torch.Tensor, base_metric: torch.Tensor, *, per_position: bool = False,
                  query_mask: torch.Tensor | None = None, replace: dict | None = None) -> torch.Tensor:
    """One full forward per unit (and per position of the node's position axis: query
    positions for q, key positions for k / v) with the unit's node replaced inside the
    attention function: float32 [units, n] or [units, n, pos]. ``src`` / ``base`` [n, U, T, d]:
    the values patched in / the base run's; ``query_mask`` bool [n, T]: the valid positions of
    that axis (``valid_positions``; others get 0); ``replace``: the base run's node edits
    (``ablated``), kept for every other unit."""
    n, t = base.shape[0], base.shape[2]
    qm = torch.ones(n, t, dtype=torch.bool) if query_mask is None else query_mask[:, -t:].bool().cpu()
    out = torch.zeros(len(unit_ids), n, t) if per_position else torch.zeros(len(unit_ids), n)

    def one(u, value):
        rep = _with_unit(replace, key, node, u, value)
        with torch.no_grad(), hooked(model, sorted(rep), replace=rep):
            tr = model.run(batch, edits=list(edits))
        return (metric.evaluate(tr.output, index).cpu() - base_metric.cpu()).float()

    for j, u in enumerate(unit_ids):
        if not per_position:
            out[j] = one(u, src[:, u])
            continue
        for q in range(t):
            if not qm[:, q].any():
                continue
            value = base[:, u].clone()
            value[:, q] = src[:, u, q]
            out[j, :, q] = one(u, value) * qm[:, q]
    return out
