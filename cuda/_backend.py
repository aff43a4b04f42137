"""Backend switch: ``"auto" | "torch" | "triton"``, from an argument or ``WORKBENCH_BACKEND``.

- ``"torch"``: the PyTorch reference (``<op>/naive.py``), on any device.
- ``"triton"``: the Triton kernel; raises ``BackendError`` with the reason when it cannot run
  (Triton not installed, tensors not on a CUDA device).
- ``"auto"`` (default): Triton on CUDA tensors, the reference elsewhere; where Triton was
  expected (CUDA tensors) but cannot run, one ``KernelFallbackWarning`` per reason, then the
  reference.

``TRITON_INTERPRET=1`` (Triton's own interpreter) makes Triton run on CPU tensors: it then
counts as able to run (tests use it; ``auto`` still picks the reference on CPU tensors).
Triton is imported lazily, only when a kernel is chosen: the core runs without it (it is the
optional extra ``kernels``). Which backend ran each op is recorded (``used()``) for the
run's ``meta.json``.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from workbench.errors import UserError

BACKENDS = ("auto", "torch", "triton")
ENV = "WORKBENCH_BACKEND"
_WARNED: set = set()
_USED: dict[str, set[str]] = {}


class BackendError(UserError):
    """``backend="triton"`` was asked for but Triton cannot run here (the message says why);
    a ``UserError``: the CLI prints it as one line."""


class KernelFallbackWarning(UserWarning):
    """``backend="auto"`` expected a Triton kernel (CUDA tensors) but ran the reference."""


def requested(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else ``$WORKBENCH_BACKEND``, else "auto".
    Raises UserError for an unknown name."""
    name = backend if backend is not None else os.environ.get(ENV) or "auto"
    if name not in BACKENDS:
        where = "backend" if backend is not None else f"the environment variable {ENV}"
        raise UserError(f"{where} is {name!r}; use one of {', '.join(BACKENDS)}")
    return name


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable(*tensors: torch.Tensor) -> str | None:
    """Why a Triton kernel cannot run on these tensors, or None when it can."""
    if not _has_triton():
        return "Triton is not installed (pip install 'workbench[kernels]')"
    if interpreting():
        return None
    off = sorted({str(t.device) for t in tensors if t is not None and t.device.type != "cuda"})
    if off:
        return f"the tensors are on {', '.join(off)}, not a CUDA device (set TRITON_INTERPRET=1 to interpret on the CPU)"
    return None


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def choose(op: str, backend: str | None, *tensors: torch.Tensor) -> str:
    """Resolve the backend for one call of ``op`` on ``tensors``: "torch" or "triton"; records it.

    Raises:
        UserError: unknown backend name.
        BackendError: ``"triton"`` asked for and it cannot run (the reason).
    """
    name = requested(backend)
    if name == "auto":
        on_cuda = any(t is not None and t.device.type == "cuda" for t in tensors)
        why = triton_unavailable(*tensors) if on_cuda else "not CUDA"
        if on_cuda and why is not None and (op, why) not in _WARNED:
            _WARNED.add((op, why))
            warnings.warn(f"{op}: no Triton kernel ({why}); running the PyTorch reference", KernelFallbackWarning,
                          stacklevel=3)
        name = "triton" if why is None else "torch"
    elif name == "triton":
        why = triton_unavailable(*tensors)
        if why is not None:
            raise BackendError(f"{op}: backend 'triton' cannot run: {why}; use backend 'auto' or 'torch'")
    _USED.setdefault(op, set()).add(name)
    return name


def used(reset: bool = False) -> dict[str, list[str]]:
    """{op: sorted backends that ran it} since the last reset (for ``meta.json``)."""
    out = {op: sorted(names) for op, names in sorted(_USED.items())}
    if reset:
        _USED.clear()
    return out
