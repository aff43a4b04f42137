"""Packaging: the card's folders are installed inside the workbench namespace, every
subpackage is discovered, and no top-level ``app``/``cuda``/``analyses`` name is installed."""
from __future__ import annotations

import importlib
import importlib.util
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_discovered():
    import setuptools

    seen = {}
    orig = setuptools.setup
    setuptools.setup = lambda **kw: seen.update(kw)
    try:
        runpy.run_path(str(ROOT / "setup.py"))
    finally:
        setuptools.setup = orig
    pkgs = set(seen["packages"])
    assert {"workbench", "workbench.analyses", "workbench.app", "workbench.app.pages", "workbench.cuda",
            "workbench.zoo", "workbench.inputs", "workbench.commands"} <= pkgs
    assert all(p.startswith("workbench") for p in pkgs)
    for p in pkgs:
        importlib.import_module(p)


def test_analyses_app_cuda_live_in_the_workbench_namespace():
    import workbench.analyses
    import workbench.cuda

    assert Path(workbench.analyses.__file__).parent == ROOT / "analyses"
    assert Path(workbench.cuda.__file__).parent == ROOT / "cuda"
    for top in ("app", "cuda", "analyses"):
        spec = importlib.util.find_spec(top)
        if spec is None:
            continue
        if spec.origin is None:          # a namespace package: only the suite's own tests/<name> folders
            places = [Path(p) for p in spec.submodule_search_locations]
            assert all(p == ROOT / "tests" / top for p in places), f"top-level {top!r} is importable from {places}"
        else:
            assert Path(spec.origin).parent.parent == ROOT, f"top-level {top!r} is installed at {spec.origin}"
