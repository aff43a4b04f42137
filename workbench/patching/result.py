"""The result of a patching sweep: per-head effects as a table and as tensors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch

from .._types import STREAMS, Head


@dataclass
class PatchResult:
    """Per-head effects of one sweep.

    Attributes:
        heads: the heads patched, sorted.
        per_input: float32 [head, input]: metric(patched) - metric(base) per input (for
            ``atp*``: the GradDrop magnitude, >= 0).
        per_position: {(stream, layer): float32 [head of that site, input, pos]} when patched
            per (head, position), else None.
        method: ``exact`` | ``naive`` | ``atp`` | ``atp*``; ablation: ``zero`` | ``mean`` |
            ``resample``; direction: ``noising`` | ``denoising``; metric: its description.
        clean_metric, corrupt_metric, base_metric: float32 [input] (corrupt: None without a
            corrupt input).
        extra: {name: float32 [head, input]} other estimates computed on the way (``atp*``
            also gives the plain signed ``atp``; for q/k nodes also ``atp_qk``, AtP with the QK
            fix and no GradDrop, signed).
        seconds: wall-clock time of the sweep.
        node: what was patched, ``z`` | ``q`` | ``k`` | ``v`` (``nodes``); for ``k`` / ``v`` the
            "heads" are key/value heads (``Head.head`` < n_kv_heads).
    """

    heads: list[Head]
    per_input: torch.Tensor
    method: str
    ablation: str
    direction: str
    metric: dict
    clean_metric: torch.Tensor
    base_metric: torch.Tensor
    corrupt_metric: torch.Tensor | None = None
    per_position: dict | None = None
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0
    node: str = "z"

    @property
    def effect(self) -> torch.Tensor:
        """Mean effect over inputs, float32 [head] (metric units, e.g. nats)."""
        return self.per_input.mean(1)

    def normaliser(self) -> float:
        """metric(corrupt) - metric(clean) for noising, the opposite for denoising (resample
        ablation only; NaN otherwise): effect / normaliser = 1 means this head alone moves
        the metric all the way."""
        if self.corrupt_metric is None or self.ablation != "resample":
            return float("nan")
        d = float(self.corrupt_metric.mean() - self.clean_metric.mean())
        d = d if self.direction == "noising" else -d
        return d if abs(d) > 1e-9 else float("nan")

    def rank(self) -> torch.Tensor:
        """Rank of each head by |effect|, 1 = largest, long [head]."""
        order = torch.argsort(self.effect.abs(), descending=True, stable=True)
        r = torch.empty_like(order)
        r[order] = torch.arange(1, len(order) + 1)
        return r

    def table(self, prefix: str = "patch") -> pd.DataFrame:
        """One row per head (per KV head for nodes k, v): ``stream, layer, head`` and
        ``<prefix>.effect``, ``.effect_norm``, ``.rank``, ``.method``, ``.metric``, ``.ablation``,
        ``.direction``, ``.node`` (+ extra estimates)."""
        eff = self.effect
        norm = self.normaliser()
        df = pd.DataFrame({
            "stream": [h.stream for h in self.heads],
            "layer": [h.layer for h in self.heads],
            "head": [h.head for h in self.heads],
            f"{prefix}.effect": eff.double().numpy(),
            f"{prefix}.effect_norm": (eff.double() / norm).numpy() if not math.isnan(norm) else float("nan"),
            f"{prefix}.rank": self.rank().numpy(),
            f"{prefix}.method": self.method,
            f"{prefix}.metric": self.metric.get("name", ""),
            f"{prefix}.ablation": self.ablation,
            f"{prefix}.direction": self.direction,
            f"{prefix}.node": self.node,
        })
        for name, v in self.extra.items():
            df[f"{prefix}.effect_{name.replace('*', '_star')}"] = v.mean(1).double().numpy()
        return df

    def streams(self) -> list[str]:
        return sorted({h.stream for h in self.heads}, key=STREAMS.index)

    def tensor(self) -> torch.Tensor:
        """Effects as float32 [stream, layer, head] (streams in ``streams()`` order), NaN where
        a head does not exist or was not patched."""
        streams = self.streams()
        n_l = max(h.layer for h in self.heads) + 1
        n_h = max(h.head for h in self.heads) + 1
        out = torch.full((len(streams), n_l, n_h), float("nan"))
        for h, e in zip(self.heads, self.effect):
            out[streams.index(h.stream), h.layer, h.head] = e
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors for a run folder: ``effect`` [stream, layer, head], ``per_input``
        [head, input] (rows in ``heads`` order), the metric values, and per-position effects."""
        t = {"effect": self.tensor(), "per_input": self.per_input.contiguous(),
             "clean_metric": self.clean_metric, "base_metric": self.base_metric}
        if self.corrupt_metric is not None:
            t["corrupt_metric"] = self.corrupt_metric
        for (s, l), v in (self.per_position or {}).items():
            t[f"effect_pos/{s}/{l}"] = v.contiguous()
        return t

    def meta(self) -> dict:
        return {
            "method": self.method, "ablation": self.ablation, "direction": self.direction, "node": self.node,
            "metric": self.metric, "streams": self.streams(), "heads": [h.name for h in self.heads],
            "per_position": self.per_position is not None, "seconds": round(self.seconds, 3),
            "clean_metric_mean": float(self.clean_metric.mean()),
            "base_metric_mean": float(self.base_metric.mean()),
            "corrupt_metric_mean": None if self.corrupt_metric is None else float(self.corrupt_metric.mean()),
            "normaliser": None if math.isnan(self.normaliser()) else self.normaliser(),
        }
