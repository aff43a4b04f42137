"""Attention patterns of a patch run's first prompt pairs, so the dashboard's Head detail page
works on a ``workbench patch`` run: any head of the patching heatmap opens its pattern on the
clean prompt and on the corrupt one.

``prompt_patterns(model, task, meta)`` returns the run-folder tensors ``patterns`` (clean
prompts) and ``patterns_corrupt`` (their corrupt partners, pair ``i`` = input ``i`` of each),
written like ``workbench run``'s kept patterns (``job.kept_patterns``: ``pattern/...``
``[head, query, key]`` float16 and ``value_norm/...`` ``[head, key]``), and records the
corrupt prompts shown in ``meta["inputs"]["corrupt_items"]``. Only ``PAIRS`` pairs are kept:
a few prompts are what a researcher opens, and the file stays small.
"""
from __future__ import annotations

PAIRS = 2
MAX_BYTES = 256 * 2**20     # capture + kept patterns of one side; fewer pairs (or none) above it


def prompt_patterns(model, task, meta: dict, pairs: int = PAIRS) -> dict:
    """``{"patterns": {...}, "patterns_corrupt": {...}}`` for the first ``pairs`` pairs of
    ``task`` (no ``patterns_corrupt`` for a task without corrupt inputs); adds
    ``corrupt_items`` (index, text, tokens of those corrupt inputs) to ``meta["inputs"]``.
    Keeps fewer pairs when their patterns would take more than ``MAX_BYTES`` (long prompts on
    a large model; ``_budget.pattern_bytes``), none when even one would, and says so in
    ``meta["inputs"]["patterns_note"]``."""
    from ._budget import pattern_bytes
    from .job import kept_patterns

    n = min(pairs, len(task.clean))
    while n and max(pattern_bytes(model, b, n) for b in (task.clean, task.corrupt) if b is not None) > MAX_BYTES:
        n -= 1
    if n < min(pairs, len(task.clean)):
        meta.setdefault("inputs", {})["patterns_note"] = (
            f"patterns kept for {n} pair(s): more would take over {MAX_BYTES // 2**20} MiB")
    out = {"patterns": kept_patterns(model, task.clean, n)}
    if task.corrupt is not None and n:
        out["patterns_corrupt"] = kept_patterns(model, task.corrupt, n)
        meta.setdefault("inputs", {})["corrupt_items"] = [
            {**item, "index": i} for i, item in enumerate(task.corrupt.items[:n])]
    return {stem: t for stem, t in out.items() if t}
