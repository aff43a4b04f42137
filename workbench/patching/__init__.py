"""Activation patching over attention heads: exact (fast path and naive loop), AtP and AtP*.

    from workbench.patching import patch, metrics
    res = patch(model, clean, metrics.LogitDiff(pos, target, distractor), corrupt=corrupt,
                method="exact", ablation="resample", direction="noising")
    res.table()      # stream, layer, head, patch.effect, patch.rank, patch.method, ...
    res.tensor()     # [stream, layer, head]

Definitions in ``engine`` (what is patched into what), ``fast`` (the exact fast path),
``naive`` (the one-forward-per-head reference), ``atp`` (AtP, AtP*), ``verified`` (AtP* top K
patched exactly, with a false-negative estimate), ``units`` (work units, executors, the record
of finished units).
"""
from . import metrics
from .engine import ABLATIONS, DIRECTIONS, METHODS, PatchConfig, Sweep, patch
from .metrics import KL, CosineSimilarity, LogitDiff, LogProb, Loss, Metric, TokenLogProb
from .result import PatchResult
from .units import InProcessExecutor, Unit, UnitStore, run_units
from .verified import VerifiedResult, verified_patch

__all__ = [
    "ABLATIONS", "DIRECTIONS", "METHODS", "CosineSimilarity", "InProcessExecutor", "KL", "LogProb", "LogitDiff",
    "Loss", "Metric", "PatchConfig", "PatchResult", "Sweep", "TokenLogProb", "Unit", "UnitStore", "metrics",
    "patch", "run_units", "VerifiedResult", "verified_patch",
]
