"""The wrapped model: a HF model, its tokenizer or feature extractor, and its sites.

``Model`` never re-implements or permanently edits the HF model. Wrapping selects the
``"workbench"`` attention implementation (SDPA outputs plus, inside a run, captures and
edits; see ``_attention``); everything else is the HF forward as shipped.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import _attention, _device
from ._types import Head, Site
from .adapters import Family, LayerStack, family_for, final_softcap, resolve, w_o, w_qkv
from .batch import Batch, pad_ids
from .capture import Ablate, Stats, Z
from .schema import WHISPER_FRAMES_PER_SECOND
from .trace import Trace, Tracer


class Model:
    """A HF model wrapped for tracing.

    Attributes:
        hf: the ``transformers`` model (eval mode).
        family: the adapter ``Family``; ``kind`` is ``causal``, ``encoder``,
            ``speech-seq2seq`` or ``speech-encoder``.
        sites: list of ``Site(stream, layer, n_heads, n_kv_heads, d_head)``.
        tokenizer / feature_extractor: preprocessing (None where not applicable).
        name, source, meta: built-in name or path, where the weights came from, extra facts
            (weights hash, prompt ids) recorded in run folders.
    """

    def __init__(self, hf, *, tokenizer=None, feature_extractor=None, name: str = "", source: str = "",
                 meta: dict | None = None):
        self.hf = hf.eval()
        self.family: Family = family_for(hf.config.model_type)
        self._parts = resolve(hf, self.family)
        self.sites: list[Site] = list(self._parts.sites)
        self._by_key = {s.key: s for s in self.sites}
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.name = name or getattr(hf.config, "_name_or_path", "") or hf.config.model_type
        self.source = source
        self.meta = dict(meta or {})
        hf.set_attn_implementation(_attention.IMPL)

    # -- structure -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.family.kind

    @property
    def is_audio(self) -> bool:
        return self.kind.startswith("speech")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (the input embedding's; float inputs are cast to it in ``run``)."""
        return _device.param_dtype(self.hf)

    @property
    def device(self) -> torch.device:
        """Device the inputs go to (``run`` moves them): the model's device, or for a
        dispatched model (``device_map``) the execution device of its input embedding.
        Captures of a run are returned on this device."""
        return _device.input_device(self.hf)

    @property
    def device_map(self) -> dict[str, str] | None:
        """{module name: ``"cuda:0"`` | ``"cpu"`` | ``"disk"``} of a model dispatched by
        accelerate over several devices or offloaded; None for a model on one device."""
        return _device.module_device_map(self.hf)

    @property
    def placement(self) -> dict:
        """Where the model runs, for run folders (json): ``device``, ``dtype``, ``device_map``."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "device_map": self.device_map}

    @property
    def offloaded(self) -> list[Site]:
        """Sites whose attention weights are offloaded (on ``"disk"``, or on the CPU while the
        model computes on a GPU): accelerate streams them in for every forward, so they are
        traced like any other site but each forward reads them again."""
        dm = self.device_map
        if not dm:
            return []
        names = {id(m): n for n, m in self.hf.named_modules()}
        return [s for s in self.sites
                if _device.offloaded(_device.placed_on(names[id(self._parts.attn[s.key])], dm) or "cpu", dm)]

    def site(self, stream: str, layer: int) -> Site:
        """The site at ``(stream, layer)``; ValueError naming the model's streams if absent."""
        try:
            return self._by_key[(stream, layer)]
        except KeyError:
            raise ValueError(f"{self.name} has no site {stream}/{layer}; streams: "
                             f"{sorted({s.stream for s in self.sites})}") from None

    def heads(self, stream: str | None = None) -> list[Head]:
        return [h for s in self.sites if stream in (None, s.stream) for h in s.heads()]

    # -- components (declared per family in adapters.FAMILIES) -------------------------
    # Public accessors for everything the tools touch; nothing outside ``adapters`` reads
    # private attributes of the HF model. Weights are the live parameters (views: do not
    # edit in place).
    def attention_module(self, stream: str, layer: int) -> torch.nn.Module:
        """The HF attention module of a site (the module the registered attention receives)."""
        return self._parts.attn[self.site(stream, layer).key]

    def out_proj(self, stream: str, layer: int) -> torch.nn.Module:
        """The output projection of a site: its input is concat_h z_h [batch, pos, head * d_head]."""
        return self._parts.o_proj[self.site(stream, layer).key]

    @property
    def stacks(self) -> list[LayerStack]:
        """Layer stacks in forward order (Whisper: encoder, decoder), each with its HF layer
        modules, the streams whose sites live in them and the norm after its last layer."""
        return list(self._parts.stacks)

    def stack_of(self, stream: str, layer: int) -> tuple[LayerStack, int]:
        """(stack, layer index in it) of the layer module that holds a site."""
        i, j = self._parts.where[self.site(stream, layer).key]
        return self._parts.stacks[i], j

    def attn_in_norm(self, stream: str, layer: int) -> torch.nn.Module | None:
        """The norm whose output the site's attention reads (LN/RMSNorm module); None where
        it reads the residual itself (post-norm layers: BERT, OLMo 2, wav2vec2)."""
        return self._parts.in_norm[self.site(stream, layer).key]

    def attn_out_norm(self, stream: str, layer: int) -> torch.nn.Module | None:
        """A norm applied to the attention output before it is added to the residual
        (OLMo 2, Gemma 2/3), else None: then the output projection's output is added as is."""
        return self._parts.out_norm[self.site(stream, layer).key]

    def post_norms(self, stream: str, layer: int) -> list[torch.nn.Module]:
        """Norms applied to the residual stream inside the site's layer, in order (post-norm
        layers: BERT after attention and after the MLP); empty for pre-norm layers."""
        stack, j = self.stack_of(stream, layer)
        return list(stack.post_norms[j])

    @property
    def final_norm(self) -> torch.nn.Module | None:
        """The norm applied to the residual stream before the unembedding (the last stack's;
        None where the model has none, e.g. BERT)."""
        return self._parts.stacks[-1].final_norm

    @property
    def unembed(self) -> torch.nn.Module | None:
        """The unembedding (LM head; Whisper ``proj_out``), None for encoders without one."""
        return self.hf.get_output_embeddings()

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding matrix [d_model, vocab]: logits = final_norm(resid) @ W_U (+ soft-cap).
        Raises ValueError for a model without an unembedding."""
        if self.unembed is None:
            raise ValueError(f"{self.name} has no unembedding (no LM head)")
        return self.unembed.weight.T

    def logits_from_resid(self, resid: torch.Tensor, stack: LayerStack | None = None) -> torch.Tensor:
        """Logits [..., vocab] from the residual stream [..., d_model] after the last layer of
        ``stack`` (default the last stack): final norm, unembedding, final logit soft-cap
        (Gemma). Equals the model's logits for the last layer's output."""
        stack = stack or self._parts.stacks[-1]
        h = resid if stack.final_norm is None else stack.final_norm(resid)
        if self.unembed is None:
            raise ValueError(f"{self.name} has no unembedding (no LM head)")
        logits = self.unembed(h)
        cap = final_softcap(self.hf, self.family)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def W_O(self, stream: str, layer: int) -> torch.Tensor:
        """Output weights per head, [head, d_head, d_model]: head_out_h = z_h @ W_O[h]."""
        return w_o(self.out_proj(stream, layer), self.site(stream, layer))

    def b_O(self, stream: str, layer: int) -> torch.Tensor | None:
        """Output projection bias [d_model] (added once per site, not per head) or None."""
        return getattr(self.out_proj(stream, layer), "bias", None)

    def W_Q(self, stream: str, layer: int) -> torch.Tensor:
        """Query weights per head [head, d_model, d_head]: q_h = x @ W_Q[h] + b_Q[h] is the
        query the attention function receives (scores = q.k * ``AttnCall.scaling``), before
        rotary embeddings and q/k norms (Qwen3, OLMo 2, Gemma 3 normalise q and k); Whisper's
        pre-scaling of q by d_head^-0.5 is included."""
        return self._qkv(stream, layer, "q")[0]

    def W_K(self, stream: str, layer: int) -> torch.Tensor:
        """Key weights per KV head [kv_head, d_model, d_head] (query head h reads KV head
        h // (n_heads / n_kv_heads)); see ``W_Q``."""
        return self._qkv(stream, layer, "k")[0]

    def W_V(self, stream: str, layer: int) -> torch.Tensor:
        """Value weights per KV head [kv_head, d_model, d_head]; see ``W_K``."""
        return self._qkv(stream, layer, "v")[0]

    def b_Q(self, stream: str, layer: int) -> torch.Tensor | None:
        """Query bias [head, d_head] or None."""
        return self._qkv(stream, layer, "q")[1]

    def b_K(self, stream: str, layer: int) -> torch.Tensor | None:
        """Key bias [kv_head, d_head] or None."""
        return self._qkv(stream, layer, "k")[1]

    def b_V(self, stream: str, layer: int) -> torch.Tensor | None:
        """Value bias [kv_head, d_head] or None."""
        return self._qkv(stream, layer, "v")[1]

    def _qkv(self, stream: str, layer: int, which: str):
        site = self.site(stream, layer)
        return w_qkv(self._parts.attn[site.key], self.family, site, which)

    def audio_frames(self, n_samples: torch.Tensor) -> torch.Tensor:
        """wav2vec2 / HuBERT: encoder frames of waveforms of ``n_samples`` samples (long [batch])."""
        if self.family.frames is None:
            raise ValueError(f"{self.name} is not a speech encoder")
        return self.family.frames(self.hf, n_samples)
    # -- end of components ----------------------------------------------------------------

    # -- inputs ----------------------------------------------------------------------
    def prepare(self, texts: Sequence[str] | None = None, *, token_ids: Sequence[Sequence[int]] | None = None,
                max_tokens: int | None = None) -> Batch:
        """Tokenise text (or take token ids) into a right-padded ``Batch`` for a text model.

        Texts get the tokenizer's special tokens (BERT ``[CLS] ... [SEP]``, a Llama BOS).
        ``max_tokens`` cuts longer inputs to that many tokens with the tokenizer's own
        truncation, which shortens the text and keeps its special tokens (``[SEP]`` stays
        last); token ids are cut at the end, keeping a trailing ``[SEP]``-like suffix the
        tokenizer adds. A cut input's item records ``truncated_from`` (its token count
        before the cut).

        Raises:
            UserError: for an audio model, not exactly one of ``texts``/``token_ids``, empty
                input, ``texts`` without a tokenizer, or ``max_tokens`` too small to hold
                the special tokens and one more token.
        """
        from .errors import UserError
        from .inputs._vocab import special_frame, truncate_ids

        if self.is_audio:
            raise UserError(f"{self.name} is an audio model; give audio to prepare_audio, not text")
        if (texts is None) == (token_ids is None):
            raise UserError("give exactly one of texts or token_ids")
        tok = self.tokenizer
        if texts is not None and tok is None:
            raise UserError(f"{self.name} has no tokenizer; pass token_ids")
        prefix, suffix = special_frame(tok) if tok is not None else ([], [])
        least = len(prefix) + len(suffix) + 1 if texts is not None else 1
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < least):
            raise UserError(f"max_tokens must be an integer >= {least} (the tokenizer adds "
                            f"{least - 1} special tokens to a text), got {max_tokens!r}")
        if texts is not None:
            texts = list(texts)
            if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
                raise UserError("every prompt must be non-empty text")
            full = [list(tok(t, add_special_tokens=True, verbose=max_tokens is None)["input_ids"]) for t in texts]
            seqs = [list(tok(t, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"])
                    if max_tokens is not None and len(f) > max_tokens else f for t, f in zip(texts, full)]
        else:
            full = [list(s) for s in token_ids]
            seqs = [truncate_ids(s, max_tokens, suffix) for s in full]
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        pad = pad if pad is not None else getattr(self.hf.config, "pad_token_id", None) or 0
        ids, mask = pad_ids(seqs, pad)
        items = []
        for i, s in enumerate(seqs):
            item = {"index": i, "tokens": {"self": self.token_strings(s)}}
            if texts is not None:
                item["text"] = texts[i]
            if len(full[i]) > len(s):
                item["truncated_from"] = len(full[i])
            items.append(item)
        return Batch({"input_ids": ids, "attention_mask": mask}, {"self": mask.bool()}, items)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        tok = self.tokenizer
        if tok is None:
            return [str(i) for i in ids]
        # keep special tokens visible (<|startoftranscript|>, [CLS]): they are axis labels
        return [tok.decode([i], skip_special_tokens=False) for i in ids]

    def prepare_audio(self, waveforms: Sequence[Any], *, paths: Sequence[str] | None = None,
                      transcripts: Sequence[Sequence[int]] | None = None) -> Batch:
        """Audio (float32 mono at 16 kHz, one array per input) into a ``Batch``.

        Whisper: log-mel features of the 30 s window and decoder tokens (the prompt plus
        ``transcripts`` when given, else the model's own greedy transcript). Raises
        ValueError for a text model or a clip longer than 30 s.
        """
        from ._audio_batch import prepare_audio

        if not self.is_audio:
            raise ValueError(f"{self.name} is a text model; give text prompts, not audio")
        return prepare_audio(self, list(waveforms), paths, transcripts)

    # -- running ---------------------------------------------------------------------
    def run(self, batch: Batch, capture: Sequence = (), edits: Sequence = (), *, grad: bool = False,
            logits: bool | None = None) -> Trace:
        """One forward with captures (``Pattern``, ``Z``, ``Stats``) and edits (``Ablate``, ``SetZ``).

        Input tensors move to ``self.device`` (floating ones, audio features, are cast to
        ``self.dtype``); captures and ``Trace.query_mask`` are on ``self.device``.

        ``logits``: True computes the logits at every position (``Trace.logits`` [batch, pos,
        vocab]); False only at the last position ([batch, 1, vocab]; HF's ``logits_to_keep=1``,
        for the models that accept it: causal LMs; others are unchanged); None (default) is
        False for a statistics-only trace (every capture a ``Stats``, no edits), whose logits
        nobody reads (smollm2-135m at T = 8192: 1.6 GB), and True otherwise. With False, a
        causal LM also builds no KV cache unless ``use_cache`` or ``past_key_values`` is among
        the inputs (``Trace.output.past_key_values`` is then None; 377 MB at T = 8192).
        Captures and hidden states are the same either way.

        Returns a ``Trace``. Raises SiteNotFiredError naming any requested site the forward
        never reached; ValueError for unknown sites or heads. Gradients are off unless
        ``grad=True``. The model is left exactly as it was, whatever happens.
        """
        edits = self._resolve_means(batch, list(edits))
        dev, dtype = self.device, self.dtype
        query_mask = {k: v.to(dev) for k, v in batch.query_mask.items()}
        capture = list(capture)
        tracer = Tracer(self, capture, edits, query_mask)
        inputs = _to_device(batch.model_inputs, dev, dtype)
        if logits is None:
            logits = not (capture and all(isinstance(c, Stats) for c in capture) and not edits)
        if not logits and "logits_to_keep" not in inputs and self._takes_logits_to_keep:
            inputs["logits_to_keep"] = 1
            if "use_cache" not in inputs and "past_key_values" not in inputs:
                inputs["use_cache"] = False          # no KV cache nobody asked for (T = 8192: 377 MB)
        token = _attention.ACTIVE.set(tracer)
        try:
            with torch.set_grad_enabled(grad):
                output = self.hf(**inputs)
        finally:
            _attention.ACTIVE.reset(token)
        tracer.check_fired()
        return Trace(output, tracer.pattern, tracer.z, tracer.stats, query_mask, batch, self.sites)

    @property
    def _takes_logits_to_keep(self) -> bool:
        import inspect

        return "logits_to_keep" in inspect.signature(self.hf.forward).parameters

    def mean_z(self, batch: Batch, heads: Sequence[Head]) -> dict[Head, torch.Tensor]:
        """Mean z of each head over every valid position of every input: {Head: [d_head]}."""
        trace = self.run(batch, capture=[Z(sorted({h.site_key for h in heads}))])
        out = {}
        for h in heads:
            z = trace.z[h.site_key][:, :, h.head].float()          # [batch, pos, d_head]
            m = batch.query_mask.get(h.stream)
            m = torch.ones(z.shape[:2], device=z.device) if m is None else m[:, -z.shape[1]:].to(z.device).float()
            out[h] = (z * m[..., None]).sum((0, 1)) / m.sum().clamp_min(1)
        return out

    def _resolve_means(self, batch: Batch, edits: list) -> list:
        todo = [e for e in edits if isinstance(e, Ablate) and e.kind == "mean" and e.means is None]
        if not todo:
            return edits
        means = self.mean_z(batch, sorted({h for e in todo for h in e.heads}))
        return [Ablate(e.heads, "mean", {h: means[h] for h in e.heads}) if e in todo else e for e in edits]


def wrap(hf_model, *, tokenizer=None, feature_extractor=None, name: str = "", source: str = "", device=None,
         dtype=None, device_map=None, max_memory: dict | None = None, offload_folder=None) -> Model:
    """Wrap an already loaded HF model.

    ``device`` / ``dtype`` move and cast it (in place, as ``hf_model.to`` does; None keeps
    what it has); ``device_map`` / ``max_memory`` / ``offload_folder`` dispatch it with
    accelerate (as in ``workbench.load``). A model already dispatched is wrapped as it is.

    Raises:
        UserError: bad device / dtype / device_map values, a CUDA device this machine lacks,
            or a move asked of an already dispatched model.
        UnsupportedModelError: the architecture has no adapter (lists the supported families).
    """
    from ._dispatch import place

    hf_model = place(hf_model, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                     offload_folder=offload_folder)
    return Model(hf_model, tokenizer=tokenizer, feature_extractor=feature_extractor, name=name, source=source)


def _to_device(inputs: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Model inputs on ``device``; floating tensors (audio features) cast to ``dtype``."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in inputs.items()}
