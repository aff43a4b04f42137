"""One loaded run as the dashboard sees it: validated ``meta.json`` plus ``heads.parquet``.

``Run`` answers the questions pages ask (which streams, how many layers and heads, what the
axes of a pattern are: tokens or seconds) so pages never poke into raw json. Validation
errors are ``RunError`` with a message meant for the page, naming the run and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import pandas as pd

from ..errors import UserError
from ..schema import HEAD_KEYS, MEL_FRAMES_PER_SECOND, STREAMS, WHISPER_FRAMES_PER_SECOND, check_schema_version
from ..schema import metric_columns as _metric_columns

STREAM_ORDER = STREAMS
ENCODER_FPS = float(WHISPER_FRAMES_PER_SECOND)  # Whisper-style encoder frames per second
MEL_FPS = float(MEL_FRAMES_PER_SECOND)  # log-mel frames per second


class RunError(Exception):
    """A run cannot be shown; ``str(err)`` is a message for the page, never a traceback."""


@dataclass(frozen=True)
class Axis:
    """One axis of a pattern: token labels (``labels``) or time (``step_s`` seconds per step)."""

    kind: str  # "tokens" | "seconds" | "index"
    labels: tuple[str, ...] | None = None
    step_s: float | None = None

    @property
    def title(self) -> str:
        return {"tokens": "token", "seconds": "time (s)", "index": "position"}[self.kind]


@dataclass(frozen=True)
class Run:
    """A validated run: ``meta`` (dict) and ``heads`` (one row per stream/layer/head)."""

    name: str
    meta: dict[str, Any]
    heads: pd.DataFrame = field(repr=False)

    @property
    def model(self) -> str:
        return str(self.meta["model"].get("name", "?"))

    @property
    def kind(self) -> str:
        return str(self.meta["inputs"].get("kind", "text"))

    @property
    def items(self) -> list[dict]:
        return list(self.meta["inputs"].get("items", []))

    @property
    def streams(self) -> list[str]:
        present = set(self.heads["stream"].unique())
        return [s for s in STREAM_ORDER if s in present] + sorted(present - set(STREAM_ORDER))

    def layers(self, stream: str) -> list[int]:
        rows = self.heads.loc[self.heads["stream"] == stream, "layer"]
        return sorted(int(x) for x in rows.unique())

    def n_heads(self, stream: str, layer: int) -> int:
        rows = self.heads[(self.heads["stream"] == stream) & (self.heads["layer"] == layer)]
        return int(rows["head"].max()) + 1 if len(rows) else 0

    def has_head(self, stream: str, layer: int, head: int) -> bool:
        h = self.heads
        return bool(((h["stream"] == stream) & (h["layer"] == layer) & (h["head"] == head)).any())

    def head_row(self, stream: str, layer: int, head: int) -> dict[str, Any]:
        h = self.heads
        rows = h[(h["stream"] == stream) & (h["layer"] == layer) & (h["head"] == head)]
        if rows.empty:
            raise RunError(f"run {self.name!r} has no head {stream}/{layer}/{head}")
        return rows.iloc[0].to_dict()

    def item(self, index: int) -> dict:
        for it in self.items:
            if int(it.get("index", -1)) == index:
                return it
        raise RunError(f"run {self.name!r} has no input {index}; inputs are "
                       f"{[it.get('index') for it in self.items]}")

    def input_label(self, index: int) -> str:
        """``"index: text"`` (60 characters); an audio file by its name, never the server's
        absolute path."""
        it = self.item(index)
        path = str(it.get("path") or "")
        text = it.get("text") or (PurePath(path).name if PurePath(path).is_absolute() else path)
        text = str(text).replace("\n", " ")
        return f"{index}: {text[:60]}{'…' if len(text) > 60 else ''}"

    def tokens(self, index: int, stream: str) -> list[str] | None:
        toks = self.item(index).get("tokens") or {}
        if stream in toks:
            return [str(t) for t in toks[stream]]
        if stream == "cross" and "decoder" in toks:
            return [str(t) for t in toks["decoder"]]
        if len(toks) == 1 and stream in ("self", "decoder"):
            return [str(t) for t in next(iter(toks.values()))]
        return None

    def axes(self, stream: str, index: int) -> tuple[Axis, Axis]:
        """(query axis, key axis) of ``pattern/<stream>/<layer>/<index>``."""
        timed = self.kind == "audio" and stream in ("encoder", "self")
        fps = float(self.item(index).get("frame_rate") or ENCODER_FPS)
        seconds = Axis("seconds", step_s=1.0 / fps)
        if stream == "cross":
            q = self.tokens(index, "decoder")
            return (Axis("tokens", tuple(q)) if q else Axis("index")), seconds
        if timed:
            return seconds, seconds
        toks = self.tokens(index, stream)
        ax = Axis("tokens", tuple(toks)) if toks else Axis("index")
        return ax, ax

    def metric_columns(self) -> list[str]:
        return _metric_columns(self.heads.columns)


def validate_meta(name: str, meta: Any) -> dict[str, Any]:
    """Check the fields the dashboard relies on; raise ``RunError`` saying what is wrong."""
    if not isinstance(meta, dict):
        raise RunError(f"run {name!r}: meta.json is not a json object")
    try:
        check_schema_version(meta, f"run {name!r}")
    except UserError as exc:
        raise RunError(str(exc)) from None
    model = meta.get("model")
    if not isinstance(model, dict) or "name" not in model:
        raise RunError(f"run {name!r}: meta.json lacks model.name")
    inputs = meta.get("inputs")
    if not isinstance(inputs, dict) or not isinstance(inputs.get("items", []), list):
        raise RunError(f"run {name!r}: meta.json lacks an inputs object with an items list")
    if inputs.get("kind", "text") not in ("text", "audio"):
        raise RunError(f"run {name!r}: inputs.kind is {inputs.get('kind')!r}; "
                       "expected text or audio")
    for it in inputs.get("items", []):
        if not isinstance(it, dict) or not isinstance(it.get("index"), int):
            raise RunError(f"run {name!r}: every inputs.items entry needs an integer index")
    return meta


def validate_heads(name: str, heads: pd.DataFrame) -> pd.DataFrame:
    """Check key columns and types; return the table sorted by stream, layer, head."""
    missing = [c for c in HEAD_KEYS if c not in heads.columns]
    if missing:
        raise RunError(f"run {name!r}: heads.parquet lacks key columns {missing}")
    try:
        heads = heads.astype({"stream": str, "layer": int, "head": int})
    except (TypeError, ValueError) as exc:
        raise RunError(f"run {name!r}: heads.parquet has non-integer layer/head: {exc}") from None
    if heads.duplicated(HEAD_KEYS).any():
        raise RunError(f"run {name!r}: heads.parquet has duplicate (stream, layer, head) rows")
    return heads.sort_values(HEAD_KEYS).reset_index(drop=True)
