"""What an analysis receives when run from ``workbench run``: the model, the prepared
inputs, its parameters, and one shared statistics trace (computed once, on demand)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

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
    model: Any
    batch: Any
    params: dict = field(default_factory=dict)
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
    apply) and ``run(ctx) -> Result``; ``defaults`` are its parameters."""

    name: str
    run: Callable[[Context], Result]
    applies: Callable[[Any], str | None] = lambda model: None
    defaults: dict = field(default_factory=dict)

    def __call__(self, model, batch, **params) -> Result:
        """Run on ``model`` and a prepared ``batch`` with ``defaults`` updated by ``params``
        (e.g. ``registry()["sinks"](model, batch, epsilon=0.5)``), as ``workbench run`` does.

        Raises ValueError when the analysis does not apply to the model (saying why) or a
        parameter is not one of ``defaults``."""
        why = self.applies(model)
        if why:
            raise ValueError(f"{self.name} does not apply: {why}")
        bad = sorted(set(params) - set(self.defaults))
        if bad:
            raise ValueError(f"{self.name} has no parameter(s) {', '.join(bad)}; its parameters are "
                             f"{', '.join(self.defaults) or 'none'}")
        return self.run(Context(model, batch, {**self.defaults, **params}))
