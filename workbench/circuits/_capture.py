"""One recorded forward: everything the circuit analyses read from the clean run.

``record(model, batch, stack)`` runs the HF forward once (the ``"workbench"`` attention
function, as ``Model.run`` does) with forward hooks, removed in ``finally``, that keep for
one layer stack (``model.stacks``; its residual stream):

- the residual entering and leaving each layer,
- per attention site: z [batch, pos, head, d_head], the output projection's output, the
  attention module's input (hidden states, rotary ``position_embeddings``) and, from the
  attention function itself, query/key/value as the module passes them (rotary applied,
  KV heads not repeated), the mask and the scaling,
- the input of every norm that the analyses linearise (the attention-input norms, the
  final norm; BERT's post-norms).

``NormLin`` is a LayerNorm or RMSNorm linearised at its clean input (the scale 1/sigma
frozen, the standard linearisation of Elhage et al. 2021 and of direct logit attribution):
y = center(x) * gamma / sigma + beta, affine in x, exact at the clean input. It checks that
it reproduces the module's own output and raises otherwise (a norm of another form).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import _attention
from .._types import Site
from ..capture import Z
from ..trace import Tracer


class _Recorder(Tracer):
    """A ``Tracer`` that also keeps query/key/value, mask and scaling of chosen sites."""

    def __init__(self, model, capture, edits, query_mask, record: set):
        super().__init__(model, capture, edits, query_mask)
        self.record, self.qkv = set(record), {}
        self.requested = self.requested | self.record

    def on_attention(self, module, query, key, value, mask, *rest):
        # rest: the attention call's description (``_attention.AttnCall``) and the output
        site = self.site_of.get(id(module))
        if site is not None and site.key in self.record:
            self.fired.add(site.key)
            call = rest[:-1]
            scaling = getattr(call[0], "scaling", call[0]) if call else None
            scaling = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else float(scaling)
            self.qkv[site.key] = (query.detach(), key.detach(), value.detach(), mask, call, scaling)
        return super().on_attention(module, query, key, value, mask, *rest)


def run_recorded(model, inputs: dict, query_mask: dict, capture=(), edits=(), record=()):
    """(HF output, tracer) of one forward with the workbench attention active; inputs move to
    the model's device as in ``Model.run``."""
    from ..model import _to_device

    dev = model.device
    tracer = _Recorder(model, list(capture), list(edits), {k: v.to(dev) for k, v in query_mask.items()}, set(record))
    token = _attention.ACTIVE.set(tracer)
    try:
        with torch.no_grad():
            output = model.hf(**_to_device(inputs, dev, model.dtype))
    finally:
        _attention.ACTIVE.reset(token)
    tracer.check_fired()
    return output, tracer


@dataclass
class Clean:
    """The recorded clean run of one layer stack's residual stream (module docstring)."""

    model: object
    batch: object
    stack: object                    # adapters.LayerStack
    sites: list                      # attention sites of the stack, in forward order
    output: object = None
    resid_in: list = field(default_factory=list)     # [batch, pos, d_model] per layer
    resid_out: list = field(default_factory=list)
    z: dict = field(default_factory=dict)            # site key -> [batch, pos, head, d_head]
    attn_out: dict = field(default_factory=dict)     # site key -> [batch, pos, d_model]
    attn_in: dict = field(default_factory=dict)      # site key -> (args, kwargs) of the attention module
    qkv: dict = field(default_factory=dict)          # site key -> (q, k, v, mask, call, scaling)
    norm_in: dict = field(default_factory=dict)      # name -> clean input of a linearised norm
    norms: dict = field(default_factory=dict)        # name -> norm module

    def layer_sites(self, layer: int) -> list[Site]:
        return [s for s in self.sites if s.layer == layer]


def stack_of_stream(model, stream: str):
    """The ``LayerStack`` holding ``stream``'s sites (ValueError naming the streams if none)."""
    for st in model.stacks:
        if stream in st.streams:
            return st
    raise ValueError(f"{model.name} has no stream {stream!r}; streams: {sorted({s.stream for s in model.sites})}")


def stack_sites(model, stack) -> list[Site]:
    """Sites of ``stack`` in forward order (per layer, in the stack's stream order: Whisper's
    decoder self-attention before its cross-attention)."""
    sites = [s for s in model.sites if s.stream in stack.streams]
    return sorted(sites, key=lambda s: (s.layer, stack.streams.index(s.stream)))


def record(model, batch, stack, *, edits=()) -> Clean:
    """Record the forward of ``batch`` for the residual stream of ``stack`` (module docstring);
    ``edits`` (``Ablate``, ``SetZ``) are active in it."""
    from ._parts import attn_norm, check, post_norms

    sites = stack_sites(model, stack)
    check(model)
    c = Clean(model, batch, stack, sites)
    n = len(stack.layers)
    c.resid_in, c.resid_out = [None] * n, [None] * n
    hooks = []

    def pre(store, key):
        def h(mod, args, kwargs):
            store[key] = args[0] if args else kwargs["hidden_states"]
        return h

    def post(store, key):
        def h(mod, args, out):
            store[key] = (out[0] if isinstance(out, tuple) else out).detach()
        return h

    def keep_call(store, key):
        def h(mod, args, kwargs):
            store[key] = (args, kwargs)
        return h

    try:
        for j, layer in enumerate(stack.layers):
            hooks.append(layer.register_forward_pre_hook(pre(c.resid_in, j), with_kwargs=True))
            hooks.append(layer.register_forward_hook(post(c.resid_out, j)))
            for i, mod in enumerate(post_norms(stack, j)):
                c.norms[("post", j, i)] = mod
                hooks.append(mod.register_forward_pre_hook(pre(c.norm_in, ("post", j, i)), with_kwargs=True))
        for s in sites:
            hooks.append(model.attention_module(*s.key).register_forward_pre_hook(keep_call(c.attn_in, s.key),
                                                                                  with_kwargs=True))
            hooks.append(model.out_proj(*s.key).register_forward_hook(post(c.attn_out, s.key)))
            norm = attn_norm(model, s)
            if norm is not None:
                c.norms[("attn", s.key)] = norm
                hooks.append(norm.register_forward_pre_hook(pre(c.norm_in, ("attn", s.key)), with_kwargs=True))
        if stack.final_norm is not None:
            c.norms["final"] = stack.final_norm
            hooks.append(stack.final_norm.register_forward_pre_hook(pre(c.norm_in, "final"), with_kwargs=True))
        keys = [s.key for s in sites]
        out, tracer = run_recorded(model, batch.model_inputs, batch.query_mask, [Z(keys)], edits, keys)
    finally:
        for h in hooks:
            h.remove()
    c.output, c.z, c.qkv = out, tracer.z, tracer.qkv
    missing = [j for j, x in enumerate(c.resid_in) if x is None]
    if missing:
        raise RuntimeError(f"layers {missing} of {stack.name} never ran during the forward")
    return c


class NormLin:
    """A LayerNorm / RMSNorm linearised at its clean input x [..., d] (module docstring)."""

    def __init__(self, module, x: torch.Tensor):
        w = module.weight.detach().double()
        b = getattr(module, "bias", None)
        self.center = isinstance(module, torch.nn.LayerNorm)
        eps = getattr(module, "eps", None)
        eps = getattr(module, "variance_epsilon", 1e-6) if eps is None else eps
        x = x.detach().double()
        xc = x - x.mean(-1, keepdim=True) if self.center else x
        self.inv = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)          # [..., 1] frozen 1/sigma
        self.gamma = w
        self.beta = None if b is None else b.detach().double()
        with torch.no_grad():
            want = module(x.to(module.weight.dtype)).double()
        got = self.linear(x) + (0 if self.beta is None else self.beta)
        tol = 1e-4 * max(1.0, float(want.abs().max())) if module.weight.dtype != torch.float64 else 1e-9
        if float((got - want).abs().max()) > tol:
            raise RuntimeError(f"{type(module).__name__} is not a LayerNorm/RMSNorm of the form gamma * "
                               "center(x) / sigma + beta; it cannot be linearised here")

    def select(self, fn) -> "NormLin":
        """A copy whose frozen scale is ``fn(inv)`` (e.g. gathered at some positions)."""
        out = object.__new__(NormLin)
        out.__dict__.update(self.__dict__, inv=fn(self.inv))
        return out

    def linear(self, c: torch.Tensor) -> torch.Tensor:
        """The linear part applied to components c [..., *x.shape[:-1], d] (float64)."""
        c = c.double()
        if self.center:
            c = c - c.mean(-1, keepdim=True)
        return c * self.inv * self.gamma

    def readout(self, u: torch.Tensor) -> torch.Tensor:
        """The vector g with linear(c) . u == c . g, for directions u [*x.shape[:-1], d]."""
        a = u.double() * self.gamma * self.inv
        return a - a.mean(-1, keepdim=True) if self.center else a
