"""Optional fast kernels, laid out as flash-linear-attention does: per operation a folder with
``naive.py`` (the PyTorch reference that defines correct behaviour and is what CPU users
run), ``triton.py`` (the Triton kernel beside it) and an ``__init__`` that dispatches.

Backend switch (``_backend``): every op takes ``backend="auto" | "torch" | "triton"``
(default: the environment variable ``WORKBENCH_BACKEND``, else "auto"). "auto" runs Triton
on CUDA tensors and the reference elsewhere, with one ``KernelFallbackWarning`` where Triton
was expected but cannot run; an explicit "triton" that cannot run raises ``BackendError``
with the reason. ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (tests). Triton is
the optional extra ``kernels`` (``pip install 'workbench[kernels]'``), imported only when a
kernel runs. ``backends_used()`` says which backend ran each op (``meta.json``: "backend").

Ops:
    ``head_stats``  streaming per-head softmax statistics (``stats/``)
    ``head_patch``  batched head patching at the output projection (``head_patch/``)
"""
from ._backend import BACKENDS, ENV, BackendError, KernelFallbackWarning, requested
from ._backend import used as backends_used
from .head_patch import head_patch
from .stats import HeadStatsOut, head_stats

__all__ = ["BACKENDS", "ENV", "BackendError", "HeadStatsOut", "KernelFallbackWarning", "backends_used", "head_patch",
           "head_stats", "requested"]
