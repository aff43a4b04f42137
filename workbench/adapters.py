"""Model families: one declaration per family naming every component the workbench touches.

A family record never re-implements a model. It names, for the HF model of that family:
the layer stacks (``ModuleList`` paths), per stream the attention module and its output
projection inside a layer, the final norm after each stack, the query/key/value
projections (for per-head ``W_Q``/``W_K``/``W_V``), the HF class and the preprocessing
``workbench.load`` builds, how eager attention computes its softmax (HF's
``eager_attention_forward``: float32 for the Llama-style families, the query dtype for
GPT-2, BERT, Whisper, wav2vec2, HuBERT), whether suffix replay on a KV cache is exact
(the fast patching path's prefix skip) and the final logit soft-cap (Gemma 2/3).

Everything else (tracing, fast patching, AtP, importance, circuits) asks ``Model`` through
its public accessors (``attention_module``, ``out_proj``, ``stacks``, ``final_norm``,
``unembed``, ``W_Q``...), which read what ``resolve`` finds here. This is the only module
that reads private attributes of HF models. Adding a family = one ``Family(...)`` record in
``FAMILIES`` (one file, this one: the records are a few lines each, so one table reads
better than a package of near-empty files) plus a tiny-model entry in ``tests/tiny.py``.

Paths are dotted module names relative to a prefix found by matching the first stack's
path against ``named_modules()`` (``layers`` matches ``model.layers`` of a CausalLM and
``layers`` of a bare ``LlamaModel``), so task heads and bare models both resolve.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ._types import Site


@dataclass(frozen=True)
class StreamSpec:
    """One attention stream of a stack: module paths relative to a layer module."""

    stream: str                 # "self" | "encoder" | "decoder" | "cross"
    attn: str                   # the attention module ("self_attn")
    o_proj: str                 # its output projection ("self_attn.o_proj")
    in_norm: str | None = None  # the norm whose output the attention reads (None: the residual itself)
    out_norm: str | None = None  # a norm on the attention output before the residual add (OLMo 2, Gemma)


@dataclass(frozen=True)
class StackSpec:
    """A stack of layer modules and the norm applied to its last layer's output."""

    path: str                                   # the ModuleList ("layers", "encoder.layers")
    streams: tuple[StreamSpec, ...]
    final_norm: str | None = None               # module after the last layer ("norm")
    post_norms: tuple[str, ...] = ()            # norms applied to the residual inside a layer, in order
                                                # (post-norm layers: BERT, wav2vec2)
    if_flag: tuple | None = None                # (config attribute, StackSpec used instead when it is true)


@dataclass(frozen=True)
class QKV:
    """Where queries, keys and values are projected, relative to the attention module.

    ``layout``: ``"separate"`` (three Linear: q, k, v), ``"fused"`` (one projection whose
    outputs are [q all heads | k all kv heads | v all kv heads]: Phi-3, GPT-2's Conv1D) or
    ``"fused-per-head"`` (GPT-NeoX: outputs [head, (q|k|v), d_head]).
    """

    layout: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str                   # "causal" | "encoder" | "speech-seq2seq" | "speech-encoder"
    model_types: tuple[str, ...]
    stacks: tuple[StackSpec, ...]
    qkv: QKV
    hf_class: str = "AutoModel"             # transformers class ``load`` instantiates
    preprocess: tuple[str, ...] = ("tokenizer",)  # "tokenizer" and/or "feature_extractor"
    eager_softmax_fp32: bool = True         # HF eager: softmax(float32) vs softmax(query dtype)
    kv_suffix_exact: bool = False           # replaying positions p.. on a clean KV-cache prefix is exact
    final_logit_softcap: str | None = None  # config attribute: logits = c * tanh(logits / c)
    query_prescale: bool = False            # q = q_proj(x) * module.scaling before attention (Whisper)
    rotary: str | None = None               # "rotate-half": q, k rotated by the (cos, sin) ``position_embeddings``
                                            # the attention module gets (HF apply_rotary_pos_emb); GPT-NeoX
                                            # rotates only the first ``rotary_ndims`` dims of each head
    frames: Callable | None = field(default=None, compare=False)  # audio samples -> encoder frames

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return tuple(s for st in self.stacks for s in st.streams)


def _conv_frames(hf, lengths: torch.Tensor) -> torch.Tensor:
    """wav2vec2 / HuBERT: number of encoder frames of waveforms of ``lengths`` samples."""
    return hf._get_feat_extract_output_lengths(lengths)


_SEPARATE = QKV("separate", ("q_proj", "k_proj", "v_proj"))


def _decoder(name: str, model_types: tuple[str, ...], *, attn: str = "self_attn", o_proj: str = "o_proj",
             qkv: QKV = _SEPARATE, layers: str = "layers", norm: str = "norm", in_norm: str | None = "input_layernorm",
             out_norm: str | None = None, **kw) -> Family:
    """A decoder-only causal LM: one stack, one ``self`` stream, norm then unembedding."""
    spec = StackSpec(layers, (StreamSpec("self", attn, f"{attn}.{o_proj}", in_norm, out_norm),), norm)
    return Family(name, "causal", model_types, (spec,), qkv, hf_class="AutoModelForCausalLM",
                  kv_suffix_exact=True, **kw)


def _speech_encoder(name: str) -> Family:
    post = StackSpec("encoder.layers", (StreamSpec("self", "attention", "attention.out_proj"),),
                     post_norms=("layer_norm", "final_layer_norm"))
    stable = StackSpec("encoder.layers", (StreamSpec("self", "attention", "attention.out_proj", "layer_norm"),),
                       "encoder.layer_norm")
    spec = StackSpec(post.path, post.streams, post_norms=post.post_norms, if_flag=("do_stable_layer_norm", stable))
    return Family(name, "speech-encoder", (name,), (spec,), _SEPARATE, preprocess=("feature_extractor",),
                  eager_softmax_fp32=False, frames=_conv_frames)


FAMILIES = (
    _decoder("llama-like", ("llama", "mistral", "qwen2", "qwen3", "smollm3"), rotary="rotate-half"),
    _decoder("olmo2", ("olmo2",), in_norm=None, out_norm="post_attention_layernorm", rotary="rotate-half"),
    _decoder("phi3", ("phi3",), qkv=QKV("fused", ("qkv_proj",)), rotary="rotate-half"),
    _decoder("gemma", ("gemma2", "gemma3_text"), out_norm="post_attention_layernorm", rotary="rotate-half",
             final_logit_softcap="final_logit_softcapping"),
    _decoder("gpt-neox", ("gpt_neox",), attn="attention", o_proj="dense", norm="final_layer_norm",
             qkv=QKV("fused-per-head", ("query_key_value",)), rotary="rotate-half"),
    _decoder("gpt2", ("gpt2",), attn="attn", o_proj="c_proj", layers="h", norm="ln_f", in_norm="ln_1",
             qkv=QKV("fused", ("c_attn",)), eager_softmax_fp32=False),
    Family("bert", "encoder", ("bert", "roberta"),
           (StackSpec("encoder.layer", (StreamSpec("self", "attention.self", "attention.output.dense"),),
                      post_norms=("attention.output.LayerNorm", "output.LayerNorm")),),
           QKV("separate", ("query", "key", "value")), eager_softmax_fp32=False),
    Family("whisper", "speech-seq2seq", ("whisper",), (
        StackSpec("encoder.layers", (StreamSpec("encoder", "self_attn", "self_attn.out_proj", "self_attn_layer_norm"),),
                  "encoder.layer_norm"),
        StackSpec("decoder.layers", (StreamSpec("decoder", "self_attn", "self_attn.out_proj", "self_attn_layer_norm"),
                                     StreamSpec("cross", "encoder_attn", "encoder_attn.out_proj",
                                                "encoder_attn_layer_norm")), "decoder.layer_norm"),
    ), _SEPARATE, hf_class="WhisperForConditionalGeneration", preprocess=("tokenizer", "feature_extractor"),
        eager_softmax_fp32=False, query_prescale=True),
    _speech_encoder("wav2vec2"),
    _speech_encoder("hubert"),
)


class UnsupportedModelError(ValueError):
    """The architecture has no family record."""


def supported() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


def family_for(model_type: str) -> Family:
    """The family of a HF ``config.model_type``. Raises UnsupportedModelError listing families."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedModelError(
        f"architecture {model_type!r} is not supported; supported families: {supported()}"
    )


@dataclass
class LayerStack:
    """A resolved stack: ``layers[i]`` is the HF layer module of layer i.

    ``final_norm`` is the module applied to the last layer's output (None where the
    stack's output is used as is, e.g. BERT, or where the norm precedes the layers, e.g.
    wav2vec2 without ``do_stable_layer_norm``); ``streams`` are the streams whose sites
    live in these layers.
    """

    name: str                   # module path of the ModuleList, e.g. "model.layers"
    layers: list
    streams: tuple[str, ...]
    final_norm: nn.Module | None
    post_norms: list = field(default_factory=list)   # per layer: norms on the residual inside it, in order


@dataclass
class Components:
    """Everything ``resolve`` found: sites and the modules each accessor returns."""

    sites: list[Site]
    attn: dict          # site key -> attention module
    o_proj: dict        # site key -> output projection
    in_norm: dict       # site key -> norm the attention reads, or None
    out_norm: dict      # site key -> norm on the attention output, or None
    stacks: list[LayerStack]
    where: dict         # site key -> (index into stacks, layer index)


def resolve(hf: nn.Module, family: Family) -> Components:
    """Find every component the family names. Raises UnsupportedModelError naming a missing one."""
    modules = dict(hf.named_modules())
    first = family.stacks[0].path
    hits = [n for n in modules if n == first or n.endswith("." + first)]
    if len(hits) != 1:
        raise UnsupportedModelError(f"{family.name} family: expected one {first!r} layer stack, found {hits or 'none'}")
    prefix = hits[0][: len(hits[0]) - len(first)]

    def get(path: str) -> nn.Module:
        mod = modules.get(prefix + path)
        if mod is None:
            raise UnsupportedModelError(f"{family.name} family: the model has no module {prefix + path!r}")
        return mod

    comps = Components([], {}, {}, {}, {}, [], {})
    config = hf.config
    for i, spec in enumerate(family.stacks):
        if spec.if_flag is not None and getattr(config, spec.if_flag[0], False):
            spec = spec.if_flag[1]
        stack = get(spec.path)
        norm = get(spec.final_norm) if spec.final_norm else None
        post = [[get(f"{spec.path}.{j}.{p}") for p in spec.post_norms] for j in range(len(stack))]
        comps.stacks.append(LayerStack(prefix + spec.path, list(stack), tuple(s.stream for s in spec.streams), norm, post))
        for j, layer in enumerate(stack):
            for s in spec.streams:
                base = f"{spec.path}.{j}."
                attn, o = get(base + s.attn), get(base + s.o_proj)
                site = Site(s.stream, j, *_head_counts(attn, config))
                comps.sites.append(site)
                comps.attn[site.key], comps.o_proj[site.key] = attn, o
                comps.in_norm[site.key] = get(base + s.in_norm) if s.in_norm else None
                comps.out_norm[site.key] = get(base + s.out_norm) if s.out_norm else None
                comps.where[site.key] = (i, j)
    comps.sites.sort()
    return comps


def _head_counts(module: nn.Module, config) -> tuple[int, int, int]:
    cfg = getattr(module, "config", None) or config
    n_heads = (getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
               or getattr(cfg, "num_attention_heads", None))
    d_head = (getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
              or getattr(module, "head_size", None) or cfg.hidden_size // n_heads)
    groups = getattr(module, "num_key_value_groups", 1) or 1
    n_kv = n_heads // groups
    return int(n_heads), int(n_kv), int(d_head)


def _weight(proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias [out] or None) of a Linear or GPT-2 Conv1D (stored [in, out])."""
    w = proj.weight
    if type(proj).__name__ == "Conv1D":
        w = w.T
    return w, getattr(proj, "bias", None)


def w_o(o_proj: nn.Module, site: Site) -> torch.Tensor:
    """Per-head output weights W_O: [head, d_head, d_model], so head_out_h = z_h @ W_O[h]."""
    w, _ = _weight(o_proj)
    return w.T.reshape(site.n_heads, site.d_head, w.shape[0])


def w_qkv(attn: nn.Module, family: Family, site: Site, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-head projection of ``which`` in "q", "k", "v": weight [heads, d_model, d_head]
    (heads = n_heads for q, n_kv_heads for k and v) and bias [heads, d_head] or None,
    so q_h = x @ W_Q[h] + b_Q[h] is the query the attention function receives, before
    rotary embeddings and any q/k norm (Whisper's pre-scaling of q included)."""
    i = "qkv".index(which)
    n = site.n_heads if which == "q" else site.n_kv_heads
    d = site.d_head
    lay = family.qkv
    if lay.layout == "separate":
        w, b = _weight(attn.get_submodule(lay.names[i]))
    else:
        w, b = _weight(attn.get_submodule(lay.names[0]))
        if lay.layout == "fused":
            sizes = [site.n_heads * d, site.n_kv_heads * d, site.n_kv_heads * d]
            lo = sum(sizes[:i])
            w, b = w[lo:lo + sizes[i]], None if b is None else b[lo:lo + sizes[i]]
        else:                                                        # [head, (q|k|v), d_head]
            w = w.reshape(site.n_heads, 3, d, -1)[:, i].reshape(n * d, -1)
            b = None if b is None else b.reshape(site.n_heads, 3, d)[:, i].reshape(n * d)
    w = w.reshape(n, d, -1).transpose(1, 2)                          # [heads, d_model, d_head]
    b = None if b is None else b.reshape(n, d)
    if which == "q" and family.query_prescale:
        w, b = w * attn.scaling, None if b is None else b * attn.scaling
    return w, b


def final_softcap(hf: nn.Module, family: Family) -> float | None:
    """The final logit soft-cap c (logits = c * tanh(logits / c)) or None."""
    return getattr(hf.config, family.final_logit_softcap, None) if family.final_logit_softcap else None
