"""The residual stream as a sum of upstream components, from one recorded clean run.

Components (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"):
``embed`` (the residual entering the first layer: token + position embeddings), each
head's output ``head_out = z_h W_O[h]``, ``bias`` per layer (the output projections'
biases; in post-norm models also the norms' beta), and ``mlp`` per layer (the layer's
residual update minus its attentions' outputs: in a pre-norm block exactly the MLP output
with its bias).

Pre-norm stacks (Llama-like, GPT-2, Whisper): the residual entering layer L is exactly
the sum of the components of layers < L (a telescoping sum of recorded tensors: only
float round-off separates it from the model's own). Post-norm stacks (BERT) normalise
the residual inside each layer; those norms are linearised at the clean run
(``NormLin``: 1/sigma frozen), which keeps the sum exact at the clean input and makes
every component's share well defined. All arithmetic is float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._types import Site
from ._capture import Clean, NormLin


@dataclass(frozen=True, order=True)
class Component:
    """One upstream component: ``kind`` embed | head | bias | mlp (layer/head -1 where n/a);
    ``stream``: a head's stream, ``in``/``out`` for the bias rows of QK attribution and DLA,
    ``encoder`` for the embed, mlp and bias rows of the encoder stack (cross-attention keys)."""

    kind: str
    stream: str = ""
    layer: int = -1
    head: int = -1

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"{self.stream}/{self.layer}/{self.head}"
        if self.kind == "bias" and self.stream in ("in", "out"):   # bias/out (unembedding side), bias/in (q/k side)
            return f"bias/{self.stream}"
        base = "embed" if self.kind == "embed" else f"{self.kind}/{self.layer}" if self.layer >= 0 else self.kind
        return f"{self.stream}/{base}" if self.stream else base    # encoder/embed: another stack's (cross keys)


def gather(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """x [batch, T, *] at pos [batch, k] -> [batch, k, *] (all positions when pos is None)."""
    if pos is None:
        return x
    pos = pos.to(x.device)
    idx = pos.reshape(*pos.shape, *([1] * (x.dim() - 2))).expand(*pos.shape, *x.shape[2:])
    return torch.take_along_dim(x, idx, dim=1)


def head_outputs(model, site: Site, z: torch.Tensor) -> torch.Tensor:
    """head_out per head: z [batch, k, head, d_head] -> float64 [head, batch, k, d_model]."""
    w_o = model.W_O(site.stream, site.layer).detach().double()
    return torch.einsum("nkhd,hdm->hnkm", z.double(), w_o)


def components(clean: Clean, stop: Site | None = None, pos: torch.Tensor | None = None):
    """Decompose the residual read by site ``stop`` (None: the one entering the final norm).

    Args:
        clean: the recorded run (``_capture.record``).
        stop: an attention site of ``clean.stream`` (its input residual: every component of
            the layers below and, for Whisper's cross-attention, this layer's
            self-attention), or None for the residual after the last layer.
        pos: long [batch, k] positions to keep (None: every position).

    Returns:
        (list of ``Component``, float64 [component, batch, k, d_model]); the sum over
        components is the residual (post-norm: as the linearised norms give it, which at
        the clean input is the residual itself).
    """
    model = clean.model
    names = [Component("embed")]
    parts = [gather(clean.resid_in[0], pos).double()[None]]
    n_layers = len(clean.resid_in)
    post = any(k[0] == "post" for k in clean.norms if isinstance(k, tuple))

    def renorm(key):
        lin = NormLin(clean.norms[key], gather(clean.norm_in[key], pos))
        x = torch.cat(parts)
        parts.clear()
        parts.append(lin.linear(x))
        layer = key[1]
        if lin.beta is not None:
            parts.append(lin.beta.expand_as(x[0])[None].clone())
            names.append(Component("bias", layer=layer))

    for j in range(n_layers):
        for site in clean.layer_sites(j):
            if stop is not None and site.key == stop.key:
                return _merge(names, torch.cat(parts))
            parts.append(head_outputs(model, site, gather(clean.z[site.key], pos)))
            names.extend(Component("head", site.stream, j, h) for h in range(site.n_heads))
            b = _bias(model, site, parts[-1].shape[1:])
            if b is not None:
                parts.append(b[None])
                names.append(Component("bias", layer=j))
            if post:
                renorm(("post", j, 0))
        if post:
            res = gather(clean.norm_in[("post", j, 1)], pos).double()
            parts.append((res - torch.cat(parts).sum(0))[None])
            names.append(Component("mlp", layer=j))
            renorm(("post", j, 1))
        else:
            upd = gather(clean.resid_out[j], pos).double() - gather(clean.resid_in[j], pos).double()
            for site in clean.layer_sites(j):
                upd = upd - gather(clean.attn_out[site.key], pos).double()
            parts.append(upd[None])
            names.append(Component("mlp", layer=j))
    if stop is not None:
        raise ValueError(f"site {stop.name} does not write the {clean.stream} residual stream")
    return _merge(names, torch.cat(parts))


def _bias(model, site: Site, shape) -> torch.Tensor | None:
    b = model.b_O(*site.key)
    return None if b is None else b.detach().double().expand(shape).clone()


def _merge(names: list, x: torch.Tensor):
    """Sum rows of the same component (several biases of one layer) into one, in first-seen order."""
    first: dict = {}
    for i, c in enumerate(names):
        first.setdefault(c, []).append(i)
    if len(first) == len(names):
        return names, x
    return list(first), torch.stack([x[idx].sum(0) for idx in first.values()])
