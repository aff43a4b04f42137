"""The result of ``head_stats`` (shared by the reference and the kernel)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class HeadStatsOut:
    """Per-head attention statistics of one attention call, every float in float32.

    Attributes:
        lse: [batch, head, query_pos] log-sum-exp of the row's scores (nats; the sink logit
            included; -inf for a row with no allowed key); None from the reference when
            called with ``lse=False``.
        entropy: [batch, head, query_pos] -sum_j A_ij ln A_ij (nats; 0 ln 0 := 0).
        max_pos: int64 [batch, head, query_pos] argmax key of each row (the first one on a tie;
            0 for a row with no allowed key).
        max_prob: [batch, head, query_pos] A at ``max_pos``.
        key_mass: [batch, head, query_pos, n_chosen] A at the chosen key positions (``keys``;
            sink candidates).
        n_keys: int64 [batch, query_pos] number of keys each query may see.
        col_sum: [batch, head, key_pos] sum_i w_i A_ik (attention received; w = query mask).
        col_count: [batch, key_pos] sum_i w_i [query i may see key k].
        z: [batch, query_pos, head, d_v] the attention output P @ V per head, only when
            asked for (``head_stats(values=...)``), else None.
    """

    lse: torch.Tensor | None
    entropy: torch.Tensor
    max_pos: torch.Tensor
    max_prob: torch.Tensor
    key_mass: torch.Tensor
    n_keys: torch.Tensor
    col_sum: torch.Tensor
    col_count: torch.Tensor
    z: torch.Tensor | None = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
