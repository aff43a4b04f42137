"""What the circuit analyses need beyond ``Model``'s public accessors: THE one family mapping.

``Model`` names the layer stacks, attention modules, output projections, per-head
W_Q/W_K/W_V/W_O and biases, the final norm and the unembedding (``adapters.FAMILIES``).
Decomposing the residual stream and the attention scores needs three more facts per
family, kept here in ``EXTRA`` (the only place ``workbench.circuits`` looks at a family
name; meant to move into ``adapters.Family``):

- ``attn_norm``: per stream, the norm (relative to the layer module) whose output the
  attention reads; a stream absent from it reads the residual itself (post-norm BERT);
- ``post_norms``: norms applied to the residual inside a layer, in order (BERT: after the
  attention, after the MLP);
- ``rotary``: queries and keys get the rotate-half rotary of the ``position_embeddings``
  (cos, sin) the attention module is called with (Llama-like).

(Whisper's pre-scaling of q by d_head^-0.5 is inside ``Model.W_Q`` / ``b_Q`` already.)

Every family listed here also has the property the decompositions rely on: the output
projection's output is added to the residual as is (no norm after the attention output,
as OLMo 2 and Gemma have; those raise UserError until their norms are declared).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._types import Site
from ..errors import UserError


@dataclass(frozen=True)
class Extra:
    attn_norm: dict = field(default_factory=dict)
    post_norms: tuple = ()
    rotary: bool = False


EXTRA = {
    "llama-like": Extra({"self": "input_layernorm"}, rotary=True),
    "gpt2": Extra({"self": "ln_1"}),
    "bert": Extra({}, post_norms=("attention.output.LayerNorm", "output.LayerNorm")),
    "whisper": Extra({"encoder": "self_attn_layer_norm", "decoder": "self_attn_layer_norm",
                      "cross": "encoder_attn_layer_norm"}),
}


def extra(model) -> Extra:
    """The ``Extra`` facts of a wrapped model; UserError for a family not covered."""
    e = EXTRA.get(model.family.name)
    if e is None:
        raise UserError(f"circuit analyses cover the families {', '.join(EXTRA)}; {model.name} is "
                        f"{model.family.name}")
    return e


def head_site(model, head) -> Site:
    """The site of ``head``; UserError for a site or head index the model does not have."""
    try:
        site = model.site(head.stream, head.layer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not 0 <= head.head < site.n_heads:
        raise UserError(f"{head.name}: site {site.name} has heads 0..{site.n_heads - 1}")
    return site


def attn_norm(model, site: Site) -> torch.nn.Module | None:
    """The norm whose output the site's attention reads (None: it reads the residual)."""
    path = extra(model).attn_norm.get(site.stream)
    if path is None:
        return None
    stack, j = model.stack_of(site.stream, site.layer)
    return stack.layers[j].get_submodule(path)


def post_norms(model, stack, layer: int) -> list[torch.nn.Module]:
    return [stack.layers[layer].get_submodule(p) for p in extra(model).post_norms]


def qkv(model, site: Site) -> dict:
    """Per-head float64 weights of a site: W_Q [head, d_model, d_head], b_Q [head, d_head],
    W_K, W_V [kv_head, d_model, d_head], b_K, b_V [kv_head, d_head] (zeros where the model
    has no bias): q_h = x @ W_Q[h] + b_Q[h] is the query the attention function receives,
    before rotary."""
    s, l = site.stream, site.layer
    out = {}
    for name, w, b in (("Q", model.W_Q(s, l), model.b_Q(s, l)), ("K", model.W_K(s, l), model.b_K(s, l)),
                       ("V", model.W_V(s, l), model.b_V(s, l))):
        out[f"W_{name}"] = w.detach().double()
        out[f"b_{name}"] = torch.zeros(w.shape[0], w.shape[2], dtype=torch.float64) if b is None \
            else b.detach().double()
    return out


def rotary(model, attn_kwargs: dict):
    """(cos, sin) [batch, pos, d_head] the site's attention was called with, or None."""
    if not extra(model).rotary:
        return None
    return attn_kwargs["position_embeddings"]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary (Su et al. 2021; HF ``apply_rotary_pos_emb``) of x [..., pos, d_head]
    with cos/sin broadcastable to it (e.g. [pos, d_head] or [batch, pos, d_head]), float64."""
    from transformers.models.llama.modeling_llama import rotate_half

    return x * cos.double() + rotate_half(x) * sin.double()
