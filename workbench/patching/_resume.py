"""Resume a forward from any layer: the clean-run state the fast exact path reuses.

How it stays exact without re-implementing a model:
- A *capture run* (one ordinary forward of the base inputs through ``Model.run``) records,
  with forward pre-hooks on every decoder/encoder layer module, the positional and keyword
  arguments each layer was called with (hidden states = the residual entering the layer,
  attention mask, rotary embeddings, encoder states, ...), and the output of each stack's
  last layer. Hooks are removed in ``finally``.
- ``run_rows(stack, layers, rows, patches)`` calls the HF layer modules themselves from the
  patched layer to the last, on a batch of patched variants (row ``r`` is a variant of
  input ``rows[r]``, joining the batch at its own layer; every tensor argument with the
  inputs on its first axis is indexed by the rows). Only the patched layer's attention
  output changes, o_proj(concat z') = o_proj(concat z) + (z'_h - z_h) W_O[h]; a hook on that
  layer's output projection applies the patch, either by substituting z'_h into its input
  or by adding the rank-d_head update to its output (``fast.py``). The capture run checks
  the premise (the output projection's input is exactly concat_h z_h), and that the output
  head (final norm, unembedding, Whisper's decoder) reproduces the model output.
- Causal decoder-only models: when every delta is exactly zero before position ``p``, the
  replay runs only positions ``p..T-1`` with the clean keys/values of positions ``< p``
  taken from the capture run's KV cache; positions ``< p`` of the output are the clean
  ones. The per-layer arguments for the suffix (mask, rotary angles, cache positions) come
  from a *shell run*: one ordinary HF forward of the base inputs' suffix with that cache.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..adapters import LayerStack
from ..batch import Batch
from ..capture import Z
from .metrics import gather_positions

@dataclass
class Stack:
    """One stack of layer modules (a ``ModuleList``) and what follows its last layer."""

    name: str                       # module path of the ModuleList, e.g. "model.layers"
    layers: list                    # layer modules, index = layer number
    kind: str                       # "causal" | "encoder" | "seq2seq-encoder" (feeds a decoder) | "seq2seq-decoder"
    spec: LayerStack                # the model's stack: its final norm


def _stacks(model) -> tuple[dict[str, Stack], dict[tuple, tuple[str, int]]]:
    """The model's layer stacks (``Model.stacks``) by name, and each site's (stack name, layer index)."""
    stacks: dict[str, Stack] = {}
    every = model.stacks
    for i, ls in enumerate(every):
        if model.kind == "speech-seq2seq":
            kind = "seq2seq-decoder" if i == len(every) - 1 else "seq2seq-encoder"
        else:
            kind = "causal" if model.kind == "causal" else "encoder"
        stacks[ls.name] = Stack(ls.name, ls.layers, kind, ls)
    where = {}
    for site in model.sites:
        ls, j = model.stack_of(*site.key)
        where[site.key] = (ls.name, j)
    return stacks, where


def _first_hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _expand(x, rows: torch.Tensor, n: int, cache):
    """Index every per-input tensor (first axis == n inputs, >= 2 dims) by ``rows``; swap caches."""
    from transformers.cache_utils import Cache

    if isinstance(x, Cache):
        return cache
    if torch.is_tensor(x):
        return x.index_select(0, rows.to(x.device)) if x.dim() >= 2 and x.shape[0] == n else x
    if isinstance(x, (tuple, list)):
        return type(x)(_expand(v, rows, n, cache) for v in x)
    if isinstance(x, dict):
        return {k: _expand(v, rows, n, cache) for k, v in x.items()}
    return x


class Resumable:
    """Clean (base) run of one batch, ready to resume from any site's layer.

    Args:
        model: the wrapped ``Model``.
        batch: base inputs (n inputs).
        edits: edits active in the base run and in every replay (e.g. heads ablated in a
            denoising run); z is captured after them.
        pos: long [n, k] output positions the metric reads.
        output: ``"logits"`` or ``"hidden"``.
        node_edits: q/k/v nodes replaced in every replay and shell run, as
            ``nodes.replacing`` takes them (zero / mean denoising of a q/k/v node: every unit
            ablated). The caller applies them in the capture run (inside its ``nodes.hooked``).
    """

    def __init__(self, model, batch: Batch, edits, pos: torch.Tensor, output: str, node_edits: dict | None = None):
        self.model = model
        self.batch = batch
        self.edits = list(edits)
        self.node_edits = node_edits
        self.pos = pos
        self.output_kind = output
        self.n = len(batch)
        self.stacks, self.where = _stacks(model)
        self.suffix_ok = model.family.kv_suffix_exact
        self._shells: dict[int, dict] = {}
        self._capture()

    # -- capture -----------------------------------------------------------------------
    def _flags(self) -> dict:
        if self.suffix_ok:
            from transformers.cache_utils import DynamicCache

            # a cache built without the config keeps every position of sliding-window layers
            # (the model's own keeps only the window), so any prefix can be cut from it
            return {"use_cache": True, "past_key_values": DynamicCache()}
        if self.model.kind == "speech-seq2seq":
            return {"use_cache": False}
        return {}

    def _capture(self) -> None:
        inputs, final, oin = {}, {}, {}
        hooks = []
        try:
            for sname, st in self.stacks.items():
                for j, layer in enumerate(st.layers):
                    hooks.append(layer.register_forward_pre_hook(_saver(inputs, (sname, j)), with_kwargs=True))
                hooks.append(st.layers[-1].register_forward_hook(_out_saver(final, sname)))
            for site in self.model.sites:
                hooks.append(self.model.out_proj(*site.key).register_forward_pre_hook(_in_saver(oin, site.key)))
            b = Batch({**self.batch.model_inputs, **self._flags()}, self.batch.query_mask, self.batch.items)
            with torch.no_grad():
                trace = self.model.run(b, capture=[Z(None)], edits=self.edits)
        finally:
            for h in hooks:
                h.remove()
        self.inputs, self.final, self.z, self.output = inputs, final, trace.z, trace.output
        self.kv = getattr(trace.output, "past_key_values", None) if self.suffix_ok else None
        for key, z in self.z.items():   # premise of the o_proj identity: its input is concat_h z_h
            x = oin[key]
            if x.shape != (*z.shape[:2], z.shape[2] * z.shape[3]) or not torch.equal(x, z.reshape(x.shape).to(x.device)):
                raise RuntimeError(f"site {key}: the output projection's input is not concat_h z_h; the "
                                   "rank-d_head patch identity does not hold here, use method='naive'")
        from .metrics import output_tensor

        want = gather_positions(output_tensor(self.output, self.output_kind), self.pos)
        for sname in self.stacks:
            with torch.no_grad(), self._edits_active():       # Whisper's tail runs the decoder: edits apply
                got = self._tail(sname, self.final[sname], torch.arange(self.n))
            tol = 1e-4 * max(1.0, float(want.abs().max()))
            if got.shape != want.shape or float((got.to(want.device) - want).abs().max()) > tol:
                raise RuntimeError(f"fast path: the output head after {sname} does not reproduce the model "
                                   f"output ({self.model.family.name}); use method='naive'")

    # -- tail --------------------------------------------------------------------------
    def _tail(self, sname: str, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Model output at the metric positions, [rows, k, *], from the last layer's output."""
        st = self.stacks[sname]
        if st.kind == "seq2seq-encoder":
            mi = self.batch.model_inputs
            dmask = mi["decoder_attention_mask"][rows].to(hidden.device) if "decoder_attention_mask" in mi else None
            dec = self.model.hf.get_decoder()(input_ids=mi["decoder_input_ids"][rows].to(hidden.device), attention_mask=dmask,
                               encoder_hidden_states=st.spec.final_norm(hidden), use_cache=False)
            h = gather_positions(dec.last_hidden_state, self.pos[rows])      # the decoder's final norm applied
            return self.model.unembed(h) if self.output_kind == "logits" else h
        h = gather_positions(hidden, self.pos[rows])
        if self.output_kind == "logits":
            if self.model.unembed is None:
                raise ValueError("this metric reads logits but the model has no output head")
            return self.model.logits_from_resid(h, st.spec)
        return h if st.spec.final_norm is None else st.spec.final_norm(h)

    # -- replay ------------------------------------------------------------------------
    def site_stack(self, key) -> tuple[str, int]:
        return self.where[key]

    def can_skip_prefix(self, key) -> bool:
        return self.suffix_ok and self.kv is not None

    def run_rows(self, sname: str, layers: list[int], rows: torch.Tensor, patches: list, start: int = 0) -> torch.Tensor:
        """Replay stack ``sname`` for a batch of patched variants; returns the model output at the
        metric positions [V, k, *].

        Row r is a variant of input ``rows[r]`` that joins the batch at layer ``layers[r]``
        (``layers`` ascending): from there on all rows that have joined run through each layer
        as one batch. ``patches`` lists ``(key, lo, hi, kind, tensor)``: rows lo..hi-1 (all
        joining at the layer of site ``key``) are patched there, ``kind`` ``"z"`` (tensor
        [hi-lo, T, head * d_head] replaces the output projection's input, concat_h z_h) or
        ``"rank"`` (tensor [hi-lo, T, d_model] is added to its output: the rank-d_head update)
        or ``"out"`` (tensor [hi-lo, T, d_model] replaces its output: the fused kernel's result).
        ``start`` > 0 (causal decoder-only models only) replays positions ``start..T-1``; the
        caller guarantees no patch changes anything before ``start``.
        """
        st = self.stacks[sname]
        if start > 0:
            src_inputs = self._shell(start)["inputs"]
        else:
            src_inputs = self.inputs
        bounds = {}                                                   # layer -> (lo, hi) of joining rows
        for r, l in enumerate(layers):
            lo, _ = bounds.get(l, (r, r))
            bounds[l] = (lo, r + 1)
        by_layer: dict[int, list] = {}
        for key, lo, hi, kind, t in patches:
            by_layer.setdefault(self.where[key][1], []).append((key, lo, hi, kind, t[:, start:]))
        with self._edits_active():
            return self._replay(st, sname, layers, rows, bounds, by_layer, src_inputs, start)

    @contextmanager
    def _edits_active(self):
        """The base run's edits (e.g. heads ablated for denoising) apply to layers called inside."""
        from .. import _attention
        from ..trace import Tracer
        from .nodes import replacing

        token = _attention.ACTIVE.set(Tracer(self.model, [], self.edits, {})) if self.edits else None
        try:
            with replacing(self.model, self.node_edits):
                yield
        finally:
            if token is not None:
                _attention.ACTIVE.reset(token)

    def _replay(self, st, sname, layers, rows, bounds, by_layer, src_inputs, start) -> torch.Tensor:
        hooks: list = []
        hidden, active = None, 0
        try:
            for j in range(layers[0], len(st.layers)):
                args, kwargs = src_inputs[(sname, j)]
                if j in bounds:
                    lo, hi = bounds[j]
                    new = _expand(_first_hidden(args, kwargs), rows[lo:hi], self.n, None)
                    hidden = new if hidden is None else torch.cat([hidden, new])
                    active = hi
                for key, lo, hi, kind, t in by_layer.get(j, []):
                    hooks.append(_patch_hook(self.model.out_proj(*key), lo, hi, kind, t))
                r = rows[:active]
                cache = self._prefix_cache(r, start, only=j) if start > 0 else None
                a = _expand(tuple(args[1:]), r, self.n, cache)
                kw = _expand({k: v for k, v in kwargs.items() if k != "hidden_states"}, r, self.n, cache)
                if "use_cache" in kw:
                    kw["use_cache"] = cache is not None
                out = st.layers[j](hidden, *a, **kw) if args else st.layers[j](hidden_states=hidden, *a, **kw)
                hidden = out[0] if isinstance(out, tuple) else out
                while hooks:
                    hooks.pop().remove()
            if start > 0:
                hidden = torch.cat([_expand(self.final[sname], rows, self.n, None)[:, :start].to(hidden.device), hidden], dim=1)
            return self._tail(sname, hidden, rows)
        finally:
            for h in hooks:
                h.remove()

    def _prefix_cache(self, rows: torch.Tensor, p: int, only: int | None = None):
        """Clean keys/values of positions < p for inputs ``rows``, every layer or only layer ``only``."""
        from transformers.cache_utils import DynamicCache

        data = [(lay.keys[:, :, :p].index_select(0, rows.to(lay.keys.device)),
                 lay.values[:, :, :p].index_select(0, rows.to(lay.keys.device)))
                if only is None or j == only else (None, None) for j, lay in enumerate(self.kv.layers)]
        return DynamicCache(ddp_cache_data=data)

    def _shell(self, p: int) -> dict:
        """Layer arguments for a forward of positions p..T-1 on top of the clean prefix cache."""
        if p in self._shells:
            return self._shells[p]
        mi = self.batch.model_inputs
        inputs: dict = {}
        hooks = []
        try:
            for sname, st in self.stacks.items():
                for j, layer in enumerate(st.layers):
                    hooks.append(layer.register_forward_pre_hook(_saver(inputs, (sname, j)), with_kwargs=True))
            model_inputs = {"input_ids": mi["input_ids"][:, p:], "use_cache": True,
                            "past_key_values": self._prefix_cache(torch.arange(self.n), p)}
            if "attention_mask" in mi:
                model_inputs["attention_mask"] = mi["attention_mask"]
            from .nodes import replacing

            with torch.no_grad(), replacing(self.model, self.node_edits):
                self.model.run(Batch(model_inputs, {}, self.batch.items), edits=self.edits)
        finally:
            for h in hooks:
                h.remove()
        if len(self._shells) > 64:
            self._shells.clear()
        self._shells[p] = {"inputs": inputs}
        return self._shells[p]


def _patch_hook(o_proj, lo: int, hi: int, kind: str, t: torch.Tensor):
    """Patch rows lo..hi-1 at an output projection (see ``Resumable.run_rows``)."""
    if kind == "out":                  # the projection's patched output itself (workbench.cuda.head_patch)
        def post_out(mod, args, out):
            out = out.clone()
            out[lo:hi] = t.to(out.device, out.dtype)
            return out
        return o_proj.register_forward_hook(post_out)
    if kind == "z":
        def pre(mod, args):
            x = args[0].clone()
            x[lo:hi] = t.to(x.device, x.dtype)
            return (x, *args[1:])
        return o_proj.register_forward_pre_hook(pre)

    def post(mod, args, out):
        out = out.clone()
        out[lo:hi] = (out[lo:hi].to(t.dtype) + t.to(out.device)).to(out.dtype)
        return out
    return o_proj.register_forward_hook(post)


def _saver(store: dict, key):
    def hook(mod, args, kwargs):
        store[key] = (args, kwargs)
    return hook


def _out_saver(store: dict, key):
    def hook(mod, args, out):
        store[key] = out[0] if isinstance(out, tuple) else out
    return hook


def _in_saver(store: dict, key):
    def hook(mod, args):
        store[key] = args[0]
    return hook
