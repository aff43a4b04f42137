"""What the circuit analyses read about a model, all from its family record.

``Model`` names the layer stacks, attention modules, output projections, per-head
W_Q/W_K/W_V/W_O and biases, the final norm and the unembedding; the family record
(``adapters.FAMILIES``, one declaration per family) also declares what the decompositions
need, read here through ``Model``'s accessors and ``model.family``:

- the norm whose output each attention reads (``StreamSpec.in_norm``, ``Model.attn_in_norm``);
  None: it reads the residual itself (post-norm BERT, wav2vec2);
- norms applied to the residual inside a layer (``StackSpec.post_norms``, ``Model.post_norms``);
- rotary (``Family.rotary``): ``"rotate-half"`` rotates q and k by the ``position_embeddings``
  (cos, sin) the attention module is called with (HF ``apply_rotary_pos_emb``; partial
  rotary, GPT-NeoX and Phi-3, rotates the first ``cos.shape[-1]`` dims of each head);
- a norm on the attention output before the residual add (``StreamSpec.out_norm``, OLMo 2,
  Gemma): the decompositions need the output projection's output added as is, so these
  families are refused (``check``) until that norm is linearised too.

No family name appears in ``workbench.circuits``. What a record cannot declare per layer
(q/k norms of Qwen3; SmolLM3's layers without rotary) is caught where q or k is recomputed:
the recomputation must reproduce the model's own q/k (``reproduces``), else UserError.
(Whisper's pre-scaling of q by d_head^-0.5 is inside ``Model.W_Q`` / ``b_Q`` already.)
"""
from __future__ import annotations

import torch

from .._types import Site
from ..errors import UserError


def check(model) -> None:
    """UserError (before any compute) for a model whose declared parts the decompositions do
    not cover: a norm on an attention output, a rotary other than rotate-half."""
    outs = sorted({s.stream for s in model.sites if model.attn_out_norm(*s.key) is not None})
    if outs:
        raise UserError(f"circuit analyses need each attention's output added to the residual as is; {model.name} "
                        f"({model.family.name}) normalises the {', '.join(outs)} attention output first")
    if model.family.rotary not in (None, "rotate-half"):
        raise UserError(f"circuit analyses apply rotate-half rotary only; {model.name} declares "
                        f"{model.family.rotary!r}")


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
    return model.attn_in_norm(*site.key)


def post_norms(stack, layer: int) -> list[torch.nn.Module]:
    """Norms applied to the residual inside layer ``layer`` of ``stack``, in order."""
    return list(stack.post_norms[layer]) if stack.post_norms else []


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
    if model.family.rotary is None:
        return None
    return attn_kwargs["position_embeddings"]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary (Su et al. 2021; HF ``apply_rotary_pos_emb``) of x [..., pos, d_head]
    with cos/sin [..., pos, d_rot] broadcastable to it (e.g. [pos, d_rot] or [batch, pos, d_rot]),
    float64. Partial rotary (d_rot < d_head: GPT-NeoX, Phi-3) rotates the first d_rot dims."""
    from transformers.models.llama.modeling_llama import rotate_half

    r = cos.shape[-1]
    rot = x[..., :r] * cos.double() + rotate_half(x[..., :r]) * sin.double()
    return rot if r == x.shape[-1] else torch.cat([rot, x[..., r:]], -1)


def reproduces(got: torch.Tensor, want: torch.Tensor, what: str, model) -> None:
    """UserError unless ``got`` (a recomputed q, k or v, float64) equals the model's ``want``
    within 1e-4 relative: the model applies something its family record does not declare."""
    want = want.double()
    err = float((got - want).abs().max())
    if err > 1e-4 * max(1.0, float(want.abs().max())):
        raise UserError(f"{what}: recomputing it from the residual does not reproduce {model.name}'s own (max |diff| "
                        f"{err:.3g}): its attention applies something the {model.family.name} family record does not "
                        "declare (q/k norms, rotary off in some layers); circuit analyses cannot decompose it")
