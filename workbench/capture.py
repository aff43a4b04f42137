"""What a run captures and how it intervenes: plain, frozen data.

Capture specs:
    ``Pattern(sites)``  attention probabilities, float32 [batch, head, query_pos, key_pos]
    ``Z(sites)``        per-head attention output before the output projection,
                        [batch, query_pos, head, d_head]
    ``Stats(sites)``    per-head streaming statistics reduced inside the forward
                        (the T x T pattern of a layer is freed before the next layer runs)

Interventions (edits) act on ``z`` of chosen heads inside the forward:
    ``Ablate(heads, kind)`` with kind ``"zero"`` (z_h := 0), ``"mean"`` (z_h := mean of z_h
    over a reference distribution, position-independent) or ``"uniform"`` (the head's
    pre-softmax logits set to 0, i.e. uniform attention over the keys it may see, the
    masking of Wu et al. 2024);
    ``SetZ(head, value)`` (z_h := value, broadcast to [batch, query_pos, d_head]);
    ``EditPattern(heads, fn, name)`` (the head's attention probabilities A [batch, q, k]
    replaced by ``fn(A, offset)``, ``offset`` = absolute position of query row 0, and z_h
    recomputed as A' V: e.g. a sink + recent-window KV restriction or ACT calibration).

A site selector is ``None`` (every site), a stream name (``"cross"``), a ``(stream, layer)``
tuple, a ``Site``, a ``Head`` (its site), or a list of these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from ._types import Head, Site

ABLATIONS = ("zero", "mean", "uniform")


def select_sites(selector: Any, sites: Iterable[Site]) -> list[Site]:
    """Resolve a site selector against a model's sites. Raises ValueError naming a miss."""
    sites = list(sites)
    if selector is None:
        return sites
    items = selector if isinstance(selector, (list, tuple, set, frozenset)) and not _is_key(selector) else [selector]
    by_key = {s.key: s for s in sites}
    chosen: dict[tuple[str, int], Site] = {}
    for item in items:
        if isinstance(item, str):
            hit = [s for s in sites if s.stream == item]
            if not hit:
                raise ValueError(f"model has no stream {item!r}; streams: {sorted({s.stream for s in sites})}")
            chosen.update({s.key: s for s in hit})
            continue
        key = item.key if isinstance(item, Site) else item.site_key if isinstance(item, Head) else tuple(item)
        if key not in by_key:
            raise ValueError(f"model has no site {key}; it has {len(sites)} sites, e.g. {sites[0].key}")
        chosen[key] = by_key[key]
    return [chosen[k] for k in sorted(chosen)]


def _is_key(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], int)


@dataclass(frozen=True)
class Pattern:
    """Capture attention probabilities [batch, head, query_pos, key_pos] (float32)."""

    sites: Any = None


@dataclass(frozen=True)
class Z:
    """Capture per-head outputs z [batch, query_pos, head, d_head] (model dtype).

    ``grad=True`` keeps z in the autograd graph (the very tensor the output projection
    reads, after any edits), so ``torch.autograd.grad(metric, trace.z[key])`` gives dM/dz;
    it needs ``Model.run(..., grad=True)`` (ValueError otherwise). Default: detached.
    """

    sites: Any = None
    grad: bool = False


ATTN_OUTPUTS = ("sdpa", "fused")


@dataclass(frozen=True)
class Stats:
    """Capture per-head statistics without keeping patterns; see ``HeadStats``.

    ``attn_output`` says how a statistics-only site computes its attention output (z, what
    the output projection reads):

    - ``"sdpa"`` (default): transformers' own SDPA (Gemma 2: eager) result, so the model's
      outputs are bit-identical to the untraced model; the statistics recompute the scores
      in blocks of query rows, so the scores are computed twice per layer.
    - ``"fused"``: z is computed from the same score blocks the statistics reduce
      (P @ V per block, blocks trimmed to the keys their rows may see; SDPA is not called),
      one pass over the scores: faster on the CPU (``benchmarks/tracing.py``). Outputs then
      equal SDPA's within float round-off, not bit for bit (tiny float32 models: layer
      outputs and logits within 1e-5 of the untraced model, tests/test_stats_fused.py), and the
      statistics equal the ``"sdpa"`` path's within float round-off (argmax keys may differ
      on exact ties; a padded position that may see no key gets z = 0). It applies where the PyTorch path computes the statistics (not the
      Triton kernel on CUDA, which keeps SDPA), only at sites with no ``Pattern`` capture
      and no edit, and not in a ``Model.run(..., grad=True)``; elsewhere the output is SDPA's.

    Raises:
        UserError: ``attn_output`` not one of ``"sdpa"``, ``"fused"``.
    """

    sites: Any = None
    attn_output: str = "sdpa"

    def __post_init__(self) -> None:
        if self.attn_output not in ATTN_OUTPUTS:
            from .errors import UserError

            raise UserError(f"Stats attn_output is {self.attn_output!r}; use one of {', '.join(ATTN_OUTPUTS)}")


@dataclass(frozen=True)
class Ablate:
    """Ablate heads: kind ``zero``, ``mean`` or ``uniform`` (see module docstring).

    ``mean`` uses ``means[head]`` ([d_head]) when given, else the mean of z over every
    valid position of every input of the same run (computed in a first, unedited pass).
    """

    heads: tuple[Head, ...]
    kind: str = "zero"
    means: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        heads = (self.heads,) if isinstance(self.heads, Head) else tuple(self.heads)
        object.__setattr__(self, "heads", heads)
        if self.kind not in ABLATIONS:
            raise ValueError(f"unknown ablation kind {self.kind!r}; use one of {ABLATIONS}")
        if not all(isinstance(h, Head) for h in heads):
            raise ValueError("Ablate.heads must be Head objects, e.g. Head('self', 3, 7)")


@dataclass(frozen=True)
class SetZ:
    """Set z of one head to ``value`` (broadcast to [batch, query_pos, d_head])."""

    head: Head
    value: torch.Tensor = field(compare=False)


@dataclass(frozen=True)
class EditPattern:
    """Replace the attention probabilities of ``heads`` by ``fn(pattern, offset)`` and
    recompute their z from the edited pattern and the values.

    ``fn`` gets float32 [batch, query_pos, key_pos] (rows sum to 1 over allowed keys, 0 on
    disallowed ones) and ``offset`` (int: key position of query row 0, nonzero in a step
    of a KV-cached loop) and returns a tensor of the same shape. ``name`` names the edit
    for records (e.g. ``"window(sink=4,recent=64)"``).
    """

    heads: tuple[Head, ...]
    fn: Any = field(compare=False)
    name: str = "edit_pattern"

    def __post_init__(self) -> None:
        heads = (self.heads,) if isinstance(self.heads, Head) else tuple(self.heads)
        object.__setattr__(self, "heads", heads)
        if not all(isinstance(h, Head) for h in heads):
            raise ValueError("EditPattern.heads must be Head objects, e.g. Head('self', 3, 7)")
        if not callable(self.fn):
            raise ValueError("EditPattern.fn must be callable: fn(pattern [batch, q, k], offset) -> same shape")


@dataclass
class HeadStats:
    """Per-head statistics of one site, reduced inside the forward.

    Attributes:
        row_entropy: [batch, head, query_pos] entropy of each query row in nats,
            -sum_j A_ij ln A_ij with 0 ln 0 := 0.
        n_keys: [batch, query_pos] number of keys each query may see (n_i).
        col_sum: [batch, head, key_pos] sum of A_tk over valid queries t that may see k.
        col_count: [batch, key_pos] number of valid queries that may see key k.
        row_max_pos: [batch, head, query_pos] argmax key of each row.
    """

    row_entropy: torch.Tensor
    n_keys: torch.Tensor
    col_sum: torch.Tensor
    col_count: torch.Tensor
    row_max_pos: torch.Tensor

    def to_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)


def reduce_pattern(pattern: torch.Tensor, allowed: torch.Tensor, query_mask: torch.Tensor | None) -> HeadStats:
    """Reduce one site's pattern [batch, head, q, k] to ``HeadStats``, in float32 whatever
    the pattern's dtype (reduced-precision models accumulate in float32)."""
    pattern = pattern.float()
    b, h, tq, tk = pattern.shape
    allowed_b = allowed.expand(b, -1, tq, tk)[:, 0]
    qmask = (torch.ones(b, tq, dtype=pattern.dtype, device=pattern.device) if query_mask is None
             else query_mask[:, -tq:].to(pattern.device, pattern.dtype))
    return HeadStats(
        row_entropy=-torch.special.xlogy(pattern, pattern).sum(-1),
        n_keys=allowed_b.sum(-1),
        col_sum=torch.einsum("bhqk,bq->bhk", pattern, qmask),
        col_count=torch.einsum("bqk,bq->bk", allowed_b.to(pattern.dtype), qmask),
        row_max_pos=pattern.argmax(-1),
    )
