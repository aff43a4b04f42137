"""Typed, frozen analysis parameters (private).

Each analysis declares its parameters once, as a frozen dataclass deriving from ``Params``::

    @dataclass(frozen=True)
    class SinksParams(Params, analysis="sinks"):
        epsilon: float = param(0.3, lo=0, hi=1, lo_open=True, hi_open=True)
        min_queries: int = param(4, lo=1)

Construction checks every field against its annotation (``int``, ``float``, ``bool``,
``str``, ``tuple[X, ...]``, ``X | None``) and its range or choices and raises
``workbench.errors.UserError`` with one line naming the analysis, the parameter, the
expected type, the value given and the allowed range or choices. ``Params.parse`` adds the
name check and, with ``from_text=True``, converts values typed by a person (the CLI hands
over json-decoded values or raw strings): ``"0.3"`` -> 0.3, ``"true"`` -> True,
``"none"``/``"null"`` -> None, ``"[256, 512]"`` or ``"256,512"`` -> (256, 512).
An instance is also a read-only mapping (``p["epsilon"]``, ``dict(p)``) so code written
for the old parameter dicts keeps working; ``as_json()`` gives plain json for meta.json.
"""
from __future__ import annotations

import json
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from workbench.errors import UserError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null", "")


def param(default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, choices: tuple | None = None, doc: str = "") -> Any:
    """A parameter field: its default, an optional range [lo, hi] (open ends with
    ``lo_open``/``hi_open``; for a tuple, every element) or ``choices``, and a one-line doc."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
                                            "choices": choices, "doc": doc})


def _split(tp) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _elem(tp):
    """Element type of ``tuple[X, ...]``, or None for a scalar type."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None


_KIND = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
         str: ("a string", "strings")}


def _range(meta: dict) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if meta.get("choices") is not None:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if lo is not None and hi is not None:
        return f"in {'(' if meta['lo_open'] else '['}{lo:g}, {hi:g}{')' if meta['hi_open'] else ']'}"
    if lo is not None:
        return f"{'>' if meta['lo_open'] else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if meta['hi_open'] else '<='} {hi:g}"
    return ""


def describe(tp, meta: dict) -> str:
    """e.g. "a number in (0, 1)", "a list of integers >= 1, or None"."""
    base, optional = _split(tp)
    el = _elem(base)
    what = f"a non-empty list of {_KIND[el][1]}" if el else "" if meta.get("choices") else _KIND[base][0]
    text = (" each " if el and _range(meta) else " ").join(x for x in (what, _range(meta)) if x)
    return text + (", or None" if optional else "")


def _scalar_ok(tp, v) -> tuple[bool, Any]:
    """(valid type?, normalised value) for int / float / bool / str."""
    if tp is bool:
        return isinstance(v, bool), v
    if tp is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool), int(v) if isinstance(v, numbers.Integral) else v
    if tp is float:
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
        return ok, float(v) if ok else v
    if tp is str:
        return isinstance(v, str), v
    raise TypeError(f"unsupported parameter type {tp}")


def _in_range(v, meta: dict) -> bool:
    if meta.get("choices") is not None:
        return v in meta["choices"]
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and not (v > lo if meta["lo_open"] else v >= lo):
        return False
    if hi is not None and not (v < hi if meta["hi_open"] else v <= hi):
        return False
    return True


def check(tp, meta: dict, v) -> tuple[bool, Any]:
    """(valid?, normalised value): ints become floats for float fields, lists become tuples."""
    base, optional = _split(tp)
    if v is None:
        return optional, v
    el = _elem(base)
    if el is None:
        ok, v = _scalar_ok(base, v)
        return ok and _in_range(v, meta), v
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, typing.Iterable):
        return False, v
    items = list(v)
    out = []
    for x in items:
        ok, x = _scalar_ok(el, x)
        if not (ok and _in_range(x, meta)):
            return False, v
        out.append(x)
    return bool(out), tuple(out)


def convert_text(tp, v, meta: Mapping | None = None):
    """Convert a value a person typed (a string, or a json-decoded value) towards ``tp``;
    values that do not convert are returned unchanged (the type check then names them).
    A list is json (``[256, 512]``) or comma-separated (``256,512``; for strings only when
    the field has choices, so that free text may hold commas)."""
    base, optional = _split(tp)
    if v is None or (isinstance(v, str) and optional and v.strip().lower() in _NONE):
        return None
    el = _elem(base)
    if el is not None:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                split = el is not str or (meta or {}).get("choices") is not None
                v = [x.strip() for x in v.split(",")] if split else [v]
        if not isinstance(v, (list, tuple)):
            v = [v]
        return [convert_text(el, x) for x in v]
    if isinstance(v, str):
        s = v.strip()
        if base is bool:
            return True if s.lower() in _TRUE else False if s.lower() in _FALSE else v
        for conv in ((int,) if base is int else (float,) if base is float else ()):
            try:
                return conv(s)
            except ValueError:
                return v
        return v
    if base is str and isinstance(v, (int, float)) and not isinstance(v, bool):
        return json.dumps(v)
    if base is int and isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@dataclass(frozen=True)
class Params(Mapping):
    """Base of every analysis' parameter dataclass; see the module docstring."""

    analysis: ClassVar[str] = ""

    def __init_subclass__(cls, analysis: str = "", **kw):
        super().__init_subclass__(**kw)
        if analysis:
            cls.analysis = analysis

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            v = getattr(self, f.name)
            ok, norm = check(hints[f.name], f.metadata, v)
            if not ok:
                raise UserError(f"{self.analysis} parameter {f.name} must be {describe(hints[f.name], f.metadata)}; "
                                f"got {_show(v)}")
            object.__setattr__(self, f.name, norm)

    @classmethod
    def parse(cls, values: Mapping[str, object], *, from_text: bool = False) -> "Params":
        """An instance from ``{name: value}`` (missing names take their defaults).

        Raises UserError for an unknown name, a value of the wrong type, or one out of range."""
        names = [f.name for f in fields(cls)]
        bad = [k for k in values if k not in names]
        if bad:
            raise UserError(f"{cls.analysis} has no parameter {bad[0]!r}; its parameters are "
                            f"{', '.join(names) or 'none'}")
        if from_text:
            hints = typing.get_type_hints(cls)
            meta = {f.name: f.metadata for f in fields(cls)}
            values = {k: convert_text(hints[k], v, meta[k]) for k, v in values.items()}
        return cls(**values)

    @classmethod
    def defaults(cls) -> dict:
        """{name: default} as plain json values (tuples as lists)."""
        return {f.name: _plain(f.default) for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def describe(cls) -> dict[str, str]:
        """{name: "a number in (0, 1); default 0.3; <doc>"} for help texts."""
        hints = typing.get_type_hints(cls)
        return {f.name: "; ".join(x for x in (describe(hints[f.name], f.metadata), f"default {_plain(f.default)!r}",
                                              f.metadata.get("doc", "")) if x) for f in fields(cls)}

    def as_json(self) -> dict:
        """{name: value} as plain json (tuples as lists), as recorded in meta.json."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    # read-only mapping, so code written for parameter dicts keeps working
    def __getitem__(self, key: str):
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> list[str]:
        return [f.name for f in fields(self)]


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
