"""Typed keys for attention sites and heads.

A model has attention *sites* (stream x layer). Streams are ``self`` for decoder-only and
encoder-only stacks and ``encoder`` / ``decoder`` / ``cross`` for encoder-decoders.
Each site has ``n_heads`` query heads (``n_kv_heads`` key/value heads under GQA) of width
``d_head``. Heads are ``Head(stream, layer, head)``.
"""
from __future__ import annotations

from dataclasses import dataclass

STREAMS = ("self", "encoder", "decoder", "cross")


@dataclass(frozen=True, order=True)
class Site:
    """One attention layer of one stream.

    ``key`` is ``(stream, layer)`` and ``name`` is the canonical string ``"stream/layer"``
    used in file names and safetensors keys.
    """

    stream: str
    layer: int
    n_heads: int
    n_kv_heads: int
    d_head: int

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"unknown stream {self.stream!r}; expected one of {STREAMS}")
        if self.layer < 0 or self.n_heads <= 0 or self.n_kv_heads <= 0 or self.d_head <= 0:
            raise ValueError(f"invalid site {self!r}: layer >= 0 and positive head counts needed")

    @property
    def key(self) -> tuple[str, int]:
        return (self.stream, self.layer)

    @property
    def name(self) -> str:
        return f"{self.stream}/{self.layer}"

    def heads(self) -> list["Head"]:
        return [Head(self.stream, self.layer, h) for h in range(self.n_heads)]


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: ``Head(stream, layer, head)``; ``name`` is ``"stream/layer/head"``."""

    stream: str
    layer: int
    head: int

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"unknown stream {self.stream!r}; expected one of {STREAMS}")
        if self.layer < 0 or self.head < 0:
            raise ValueError(f"invalid head {self!r}: layer and head must be >= 0")

    @property
    def site_key(self) -> tuple[str, int]:
        return (self.stream, self.layer)

    @property
    def name(self) -> str:
        return f"{self.stream}/{self.layer}/{self.head}"

    @classmethod
    def from_table(cls, table) -> list["Head"]:
        """Heads of the rows of a per-head table (any object with ``stream``, ``layer`` and
        ``head`` columns, e.g. a pandas DataFrame from an analysis or ``heads.parquet``), in row
        order: ``Head.from_table(heads.nsmallest(5, "entropy.mean_norm"))``. Raises KeyError
        naming a missing column."""
        missing = [c for c in ("stream", "layer", "head") if c not in table.columns]
        if missing:
            raise KeyError(f"the table has no {', '.join(missing)} column(s); per-head tables have "
                           "stream, layer and head")
        return [cls(str(s), int(l), int(h)) for s, l, h in zip(table["stream"], table["layer"], table["head"])]

    @classmethod
    def parse(cls, name: str) -> "Head":
        """Inverse of ``name``: ``Head.parse("self/3/7")``. Raises ValueError on a bad string."""
        parts = name.split("/")
        if len(parts) != 3:
            raise ValueError(f"head name {name!r} is not 'stream/layer/head', e.g. 'self/3/7'")
        try:
            return cls(parts[0], int(parts[1]), int(parts[2]))
        except ValueError as exc:
            raise ValueError(f"head name {name!r} is not 'stream/layer/head': {exc}") from None
