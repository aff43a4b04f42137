"""A trace: one forward of the wrapped model with captures and edits.

``Tracer`` is the per-run object the registered attention function reports to (see
``_attention``); ``Trace`` is what ``Model.run`` returns. A tracer only ever lives inside
``Model.run``'s ``try/finally``, so the model is never left instrumented or edited.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._types import Site
from .capture import Ablate, EditPattern, HeadStats, Pattern, SetZ, Stats, Z, reduce_pattern, select_sites


class SiteNotFiredError(RuntimeError):
    """A requested capture or edit site was never reached by the forward."""


@dataclass
class Trace:
    """Result of ``Model.run``.

    Attributes:
        output: the HF model output (``logits`` [batch, pos, vocab] for LMs,
            ``last_hidden_state`` for encoders).
        pattern: {(stream, layer): float32 [batch, head, query_pos, key_pos]}.
        z: {(stream, layer): [batch, query_pos, head, d_head]}.
        stats: {(stream, layer): HeadStats}.
        query_mask: {stream: bool [batch, query_pos]} which query positions are real
            (tokens that are not padding; Whisper encoder frames that hold audio).
        batch: the ``Batch`` that was run.
    """

    output: Any
    pattern: dict = field(default_factory=dict)
    z: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    query_mask: dict = field(default_factory=dict)
    batch: Any = None
    sites: list = field(default_factory=list)

    @property
    def logits(self) -> torch.Tensor:
        return self.output.logits


class Tracer:
    """Collects captures and applies edits for one forward. Internal."""

    def __init__(self, model, capture, edits, query_mask: dict[str, torch.Tensor]):
        self.model = model
        self.home = model.device             # captures are returned here (sites of a dispatched model differ)
        self.site_of = {id(model.attention_module(*s.key)): s for s in model.sites}
        self.want_pattern: set = set()
        self.want_z: set = set()
        self.z_grad: set = set()           # Z(grad=True): z kept in the autograd graph
        self.want_stats: set = set()
        fused, exact = set(), set()        # Stats(attn_output="fused" | "sdpa") sites
        for spec in capture:
            keys = {s.key for s in select_sites(spec.sites, model.sites)}
            if isinstance(spec, Pattern):
                self.want_pattern |= keys
            elif isinstance(spec, Z):
                self.want_z |= keys
                if spec.grad:
                    self.z_grad |= keys
            elif isinstance(spec, Stats):
                self.want_stats |= keys
                (fused if spec.attn_output == "fused" else exact).update(keys)
            else:
                raise TypeError(f"unknown capture spec {spec!r}; use Pattern, Z or Stats")
        self.edits: dict[tuple, list] = {}
        for edit in edits:
            if isinstance(edit, Ablate):
                for head in edit.heads:
                    self._check_head(head)
                    self.edits.setdefault(head.site_key, []).append((head.head, edit))
            elif isinstance(edit, SetZ):
                self._check_head(edit.head)
                self.edits.setdefault(edit.head.site_key, []).append((edit.head.head, edit))
            elif isinstance(edit, EditPattern):
                for head in edit.heads:
                    self._check_head(head)
                    self.edits.setdefault(head.site_key, []).append((head.head, edit))
            else:
                raise TypeError(f"unknown edit {edit!r}; use Ablate, SetZ or EditPattern")
        self.fused = fused - exact - self.want_pattern - set(self.edits)
        self.query_mask = query_mask
        self.requested = self.want_pattern | self.want_z | self.want_stats | set(self.edits)
        self.fired: set = set()
        self.pattern: dict = {}
        self.z: dict = {}
        self.stats: dict = {}

    def _check_head(self, head) -> None:
        site = self.model.site(head.stream, head.layer)
        if not 0 <= head.head < site.n_heads:
            raise ValueError(f"{head.name}: site {site.name} has heads 0..{site.n_heads - 1}")

    def fuses(self, module, query, key) -> bool:
        """Whether this call's output comes from its statistics blocks (``Stats(attn_output=
        "fused")`` at a statistics-only site, the PyTorch path computes them, and no gradient
        is being recorded): the attention function then skips SDPA and passes ``out=None``
        to ``on_attention``."""
        site = self.site_of.get(id(module))
        if site is None or site.key not in self.fused or torch.is_grad_enabled():   # in-place ops: no autograd
            return False
        from .cuda.stats import z_available

        return z_available(query, key)

    def on_attention(self, module, query, key, value, mask, call, out):
        """One attention call of a site (``call``: ``_attention.AttnCall``); returns the (edited)
        z. ``out`` is None where ``fuses`` said so: z then comes from the statistics blocks."""
        site: Site | None = self.site_of.get(id(module))
        if site is None or site.key not in self.requested:
            return out
        k = site.key
        self.fired.add(k)
        need_probs = k in self.want_pattern or k in self.want_stats or any(
            isinstance(e, EditPattern) or (isinstance(e, Ablate) and e.kind == "uniform")
            for _, e in self.edits.get(k, [])
        )
        if need_probs and k not in self.want_pattern and k not in self.edits:
            z = self._blocked_stats(site, module, query, key, mask, call, value if out is None else None)
            out = z if out is None else out
        elif need_probs:
            from ._attention import attention_probs

            pattern, allowed = attention_probs(module, query, key, mask, call)
            if k in self.want_pattern:
                self.pattern[k] = _append(self.pattern.get(k), pattern.to(self.home), dim=2)
            if k in self.want_stats:
                part = reduce_pattern(pattern, allowed, self.query_mask.get(site.stream))
                self.stats[k] = _merge_stats(self.stats.get(k), _stats_to(part, self.home))
        if k in self.edits:
            out = self._edit(site, out, value, allowed if need_probs else None, query.shape[2],
                             pattern if need_probs else None, key.shape[2] - query.shape[2])
        if k in self.want_z:
            if k in self.z_grad and not torch.is_grad_enabled():
                raise ValueError("Z(grad=True) keeps z in the autograd graph: run the model with grad=True")
            self.z[k] = _append(self.z.get(k), out if k in self.z_grad else out.detach().to(self.home), dim=1)
        return out

    def _blocked_stats(self, site: Site, module, query, key, mask, call, value=None):
        """Statistics only: ``workbench.cuda.head_stats`` through the backend switch (the
        Triton kernel on CUDA tensors; elsewhere the reference, probabilities and their
        reduction one block of ``_attention.STATS_BLOCK_BYTES`` of query rows at a time),
        merged as a KV-cached loop's steps are. With ``value`` (fused sites) also returns z
        [batch, query_pos, head, d_head] from the same blocks, else None."""
        from . import _attention
        from .cuda import head_stats

        st = head_stats(query, key, mask, scaling=call.scaling, causal=_attention.is_causal(module, call),
                        softcap=call.softcap, sliding_window=call.sliding_window, sinks=call.sinks,
                        softmax_fp32=call.softmax_fp32, query_mask=self.query_mask.get(site.stream),
                        block_bytes=_attention.STATS_BLOCK_BYTES, lse=False, values=value)
        part = HeadStats(row_entropy=st.entropy, n_keys=st.n_keys, col_sum=st.col_sum, col_count=st.col_count,
                         row_max_pos=st.max_pos)
        self.stats[site.key] = _merge_stats(self.stats.get(site.key), _stats_to(part, self.home))
        return st.z

    def _edit(self, site: Site, out: torch.Tensor, value, allowed, tq: int, pattern=None, offset: int = 0) -> torch.Tensor:
        out = out.clone()
        for h, edit in self.edits[site.key]:
            if isinstance(edit, EditPattern):
                kvh = h // (site.n_heads // site.n_kv_heads)
                a = edit.fn(pattern[:, h], offset)                 # [batch, q, k]
                out[:, :, h, :] = torch.einsum("bqk,bkd->bqd", a.float(), value[:, kvh].float()).to(out.dtype)
            elif isinstance(edit, SetZ):
                v = edit.value.to(out.device, out.dtype)
                out[:, :, h, :] = v[..., -tq:, :] if v.dim() >= 2 and v.shape[-2] > tq else v
            elif edit.kind == "zero":
                out[:, :, h, :] = 0
            elif edit.kind == "mean":
                out[:, :, h, :] = edit.means[_head_of(site, h)].to(out.device, out.dtype)
            else:  # uniform attention over allowed keys
                kvh = h // (site.n_heads // site.n_kv_heads)
                w = allowed.expand(out.shape[0], -1, -1, -1)[:, 0].to(torch.float32)
                w = w / w.sum(-1, keepdim=True).clamp_min(1)
                out[:, :, h, :] = torch.einsum("bqk,bkd->bqd", w, value[:, kvh].float()).to(out.dtype)
        return out

    def check_fired(self) -> None:
        missing = sorted(self.requested - self.fired)
        if missing:
            names = ", ".join(f"{s}/{l}" for s, l in missing)
            raise SiteNotFiredError(
                f"requested sites never fired during the forward: {names}. The model's attention "
                "did not route through the workbench attention function for them; check the adapter."
            )


def _head_of(site: Site, h: int):
    from ._types import Head

    return Head(site.stream, site.layer, h)


def _stats_to(s: HeadStats, device: torch.device) -> HeadStats:
    return HeadStats(**{k: v.to(device) for k, v in s.to_dict().items()})


def _append(prev: torch.Tensor | None, new: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenate along the query axis (a generate loop calls attention once per step)."""
    return new if prev is None else torch.cat([prev, new], dim=dim)


def _merge_stats(prev: HeadStats | None, new: HeadStats) -> HeadStats:
    if prev is None:
        return new
    return HeadStats(
        row_entropy=torch.cat([prev.row_entropy, new.row_entropy], 2),
        n_keys=torch.cat([prev.n_keys, new.n_keys], 1),
        col_sum=_pad_add(prev.col_sum, new.col_sum),
        col_count=_pad_add(prev.col_count, new.col_count),
        row_max_pos=torch.cat([prev.row_max_pos, new.row_max_pos], 2),
    )


def _pad_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = max(a.shape[-1], b.shape[-1])
    pad = lambda t: torch.nn.functional.pad(t, (0, n - t.shape[-1]))  # noqa: E731
    return pad(a) + pad(b)
