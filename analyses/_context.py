"""What an analysis receives when run from ``workbench run``: the model, the prepared
inputs, its parameters, and one shared statistics trace (computed once, on demand)."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable

import pandas as pd

from workbench.errors import UserError

from ._params import Params, param

__all__ = ["KEY_STREAM", "Analysis", "Context", "Params", "Result", "param"]

KEY_STREAM = {"self": "self", "encoder": "encoder", "decoder": "decoder", "cross": "encoder"}


@dataclass
class Result:
    """An analysis result: a per-head table (``stream, layer, head`` + ``<name>.<metric>``
    columns), tensors to save (``{file stem: {key: tensor}}``), extra tables saved as
    ``<name>.parquet``, and json-serialisable facts (``summary``) for meta.json."""

    table: pd.DataFrame
    tensors: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


@dataclass
class Context:
    """``params``: the analysis' parameter dataclass instance (or a mapping, parsed by
    ``Analysis.run``)."""

    model: Any
    batch: Any
    params: Any = field(default_factory=dict)
    _stats: Any = None

    def stats_trace(self):
        """One forward capturing ``Stats`` at every site, shared by the analyses that need it."""
        if self._stats is None:
            from workbench.capture import Stats

            self._stats = self.model.run(self.batch, capture=[Stats()])
        return self._stats


@dataclass(frozen=True)
class Analysis:
    """A selectable analysis: ``applies(model) -> str | None`` (None, or why it does not
    apply), ``run(ctx) -> Result`` and ``params``, the frozen dataclass of its parameters
    (types, defaults and ranges in one place; see ``analyses/_params.py``).

    ``run`` accepts a context whose ``params`` is an instance of ``params`` or a plain
    mapping (parsed with ``parse_params(..., from_text=True)``; the context then holds the
    parsed instance)."""

    name: str
    run: Callable[[Context], Result]
    applies: Callable[[Any], str | None] = lambda model: None
    params: type[Params] | None = None

    def __post_init__(self) -> None:
        if self.params is None:     # an analysis without parameters
            empty = make_dataclass(f"{self.name.title().replace('_', '')}Params", [], bases=(Params,),
                                   namespace={"analysis": self.name, "__module__": __name__}, frozen=True)
            object.__setattr__(self, "params", empty)
        if self.params.analysis != self.name:
            raise TypeError(f"{self.params.__name__} is declared for {self.params.analysis!r}, not {self.name!r}")
        fn = self.run

        @functools.wraps(fn)
        def run(ctx: Context) -> Result:
            if not isinstance(ctx.params, self.params):
                ctx.params = self.parse_params(ctx.params or {}, from_text=True)
            return fn(ctx)

        object.__setattr__(self, "run", run)

    @property
    def defaults(self) -> dict:
        """{parameter: default} as plain json (derived from ``params``)."""
        return self.params.defaults()

    def parse_params(self, values: Mapping[str, object], *, from_text: bool = False) -> Params:
        """Check ``{name: value}`` against this analysis' parameters and return the frozen
        ``params`` instance (missing names take their defaults).

        ``from_text=True`` converts values a person typed (strings such as ``"0.3"``,
        ``"true"``, ``"none"``, ``"256,512"``, or json-decoded values); otherwise values must
        already have the declared Python types (an int is accepted for a float).

        Raises UserError (one line naming the analysis, the parameter, the expected type,
        the value and the allowed range or choices) for an unknown name, a wrong type or an
        out-of-range value."""
        return self.params.parse(values, from_text=from_text)

    def __call__(self, model, batch, **params) -> Result:
        """Run on ``model`` and a prepared ``batch`` with the defaults updated by ``params``
        (e.g. ``registry()["sinks"](model, batch, epsilon=0.5)``), as ``workbench run`` does.

        Raises UserError when a parameter is unknown, of the wrong type or out of range
        (``parse_params``), or when the analysis does not apply to the model (saying why)."""
        p = self.parse_params(params)
        why = self.applies(model)
        if why:
            raise UserError(f"{self.name} does not apply: {why}")
        return self.run(Context(model, batch, p))
