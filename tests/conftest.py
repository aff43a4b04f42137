"""Shared fixtures: built-in real models are loaded once per session.

The built-in weight packages are part of the README's install; a missing one is a test
failure (with the pip command to fix it), not a skip.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ``python -m pytest`` puts the working directory (the repository root) first on sys.path, which
# would make the card's top-level folders (analyses/, app/, cuda/) importable under names the
# installed package does not have. Tests import ``workbench.analyses`` / ``workbench.app``;
# drop the root so a stray ``import analyses`` fails here as it does for users
# (tests/test_hygiene.py checks it).
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != ROOT]
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without CUDA the Triton kernels (tests/cuda) run under Triton's interpreter on CPU tensors.
# Triton decides between interpreting and compiling when a kernel's @triton.jit runs (the first
# import of its module) and keeps that for the process, so the variable is set here, before any
# test module imports workbench.cuda; set in a test module, it came too late whenever another
# module imported the kernels first. The backend switch's "auto" picks the PyTorch reference on
# CPU tensors either way.
if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_MODELS: dict = {}


def load_builtin(name: str):
    import workbench

    if name not in _MODELS:
        _MODELS[name] = workbench.load(name)
    return _MODELS[name]


@pytest.fixture(scope="session")
def builtin():
    """``builtin("smollm2-135m")`` -> a loaded, shared ``workbench.Model``."""
    return load_builtin
