"""workbench: trace, edit and analyse attention heads of HF language and audio models.

    import workbench as wb
    model = wb.load("smollm2-135m")
    batch = model.prepare(["The capital of France is"])
    trace = model.run(batch, capture=[wb.Pattern("self"), wb.Stats()],
                      edits=[wb.Ablate(wb.Head("self", 3, 1), kind="zero")])

Public names load lazily (PEP 562) so that torch-free parts (the dashboard in
``workbench.app``, run-folder readers) never import torch or transformers.
"""
from __future__ import annotations

from importlib import import_module

_LAZY = {
    "Head": "._types", "Site": "._types",
    "UnsupportedModelError": ".adapters", "supported": ".adapters",
    "Batch": ".batch",
    "Ablate": ".capture", "EditPattern": ".capture", "HeadStats": ".capture", "Pattern": ".capture",
    "SetZ": ".capture", "Stats": ".capture", "Z": ".capture",
    "Model": ".model", "wrap": ".model",
    "load_heads": ".runs", "load_meta": ".runs", "save_run": ".runs",
    "list_runs": ".run_folder", "open_run": ".run_folder",
    "SiteNotFiredError": ".trace", "Trace": ".trace",
    "BUILTINS": ".zoo", "load": ".zoo",
}
__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
