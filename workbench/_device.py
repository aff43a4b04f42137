"""Where a model runs: checking ``device`` / ``dtype`` / ``device_map`` requests and
reading back where a loaded (possibly dispatched) HF model's modules live.

Requests are checked before any weights are read, so a wrong value fails in one line
(``UserError``) instead of after a long load. Dispatch itself (``device_map``) is
accelerate's (``transformers`` ``from_pretrained(device_map=...)`` or
``accelerate.dispatch_model``); nothing here moves a tensor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_dtype(dtype: Any, checkpoint: torch.dtype | str | None = None) -> torch.dtype | str:
    """``None`` -> float32; ``"auto"`` -> ``checkpoint`` (the checkpoint's dtype, or the string
    ``"auto"`` when unknown, which transformers resolves from the config); a name in
    ``DTYPES`` or a floating ``torch.dtype`` -> that dtype. Raises UserError otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise UserError(f"dtype={dtype} is not a floating dtype; use one of {', '.join(DTYPES)} or 'auto'")
        return dtype
    if dtype == "auto":
        return checkpoint if checkpoint is not None else "auto"
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise UserError(f"unknown dtype={dtype!r}; use one of {', '.join(DTYPES)} or 'auto' (the checkpoint's dtype)")


def resolve_device(device: Any) -> torch.device | None:
    """``None`` stays None; ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``
    -> ``torch.device``. Raises UserError for a malformed device or one this machine lacks."""
    if device is None:
        return None
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device={device!r}; use 'cpu', 'cuda', 'cuda:N' or a torch.device") from None
    check_device(dev, "device")
    return dev


def check_device(dev: torch.device, arg: str) -> None:
    """UserError when ``dev`` is not available on this machine (``arg`` names the argument)."""
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"{arg}={str(dev)!r} asks for CUDA but this machine has no CUDA device "
                            "(torch.cuda.is_available() is False); use 'cpu'")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"{arg}={str(dev)!r} but this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{arg}={str(dev)!r} but MPS is not available on this machine; use 'cpu'")
        return
    raise UserError(f"unsupported {arg}={str(dev)!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")


def check_device_map(device_map: Any, device: Any, offload_folder: Any) -> None:
    """Validate a ``device_map`` request (a strategy name or {module name: device}) before loading."""
    if device_map is None:
        if offload_folder is not None:
            raise UserError("offload_folder is only used with a device_map that offloads to 'disk'")
        return
    if device is not None:
        raise UserError("give either device (one device) or device_map (dispatch over several), not both")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise UserError(f"unknown device_map={device_map!r}; use one of {', '.join(DEVICE_MAP_STRATEGIES)} "
                            "or a dict {module name: device}")
        return
    if not isinstance(device_map, dict) or not device_map:
        raise UserError("device_map must be a strategy name ('auto') or a non-empty dict {module name: device}")
    for name, where in device_map.items():
        if where == "disk":
            if offload_folder is None:
                raise UserError(f"device_map puts {name!r} on 'disk': give offload_folder (an empty or new folder)")
            continue
        dev = torch.device("cuda", where) if isinstance(where, int) else resolve_device(where)
        check_device(dev, f"device_map[{name!r}]")
    if offload_folder is not None:
        p = Path(offload_folder)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise UserError(f"offload_folder {str(p)!r} exists and is not an empty folder; give an empty or new folder")


def device_name(where: Any) -> str:
    """accelerate's device-map value (int, "cpu", "disk", torch.device) as a string."""
    if isinstance(where, int):
        return f"cuda:{where}"
    return str(where)


def module_device_map(hf) -> dict[str, str] | None:
    """``{module name: device}`` of a model dispatched by accelerate (``hf.hf_device_map``),
    devices as strings (``"cuda:0"``, ``"cpu"``, ``"disk"``); None if not dispatched."""
    dm = getattr(hf, "hf_device_map", None)
    if not dm:
        return None
    dm = {name: device_name(where) for name, where in dm.items()}
    if len(set(dm.values())) == 1 and "disk" not in dm.values():
        return None                                     # all on one device: a plain model, no hooks
    return dm


def placed_on(name: str, device_map: dict[str, str]) -> str | None:
    """Device of module ``name`` under ``device_map``: the entry of its longest dotted prefix."""
    best, hit = -1, None
    for prefix, where in device_map.items():
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            if len(prefix) > best:
                best, hit = len(prefix), where
    return hit


def main_device(device_map: dict[str, str]) -> str:
    """accelerate's main execution device of a device map: the first that is not
    ``"cpu"`` or ``"disk"``, else ``"cpu"``."""
    return next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")


def execution_device(where: str, device_map: dict[str, str]) -> str:
    """Where a module placed on ``where`` computes: offloaded ones ("disk", and "cpu" when
    the main device is a GPU) stream their weights to the main device."""
    return main_device(device_map) if where in ("cpu", "disk") else where


def offloaded(where: str, device_map: dict[str, str]) -> bool:
    """True when weights placed on ``where`` are not resident on their execution device."""
    return where == "disk" or (where == "cpu" and main_device(device_map) != "cpu")


def input_device(hf) -> torch.device:
    """Device the model's inputs go to: the input embedding's (its execution device when
    the model is dispatched; offloaded weights execute on the CPU), else the first
    parameter's."""
    dm = module_device_map(hf)
    emb = _input_embeddings(hf)
    if dm:
        names = {id(m): n for n, m in hf.named_modules()}
        where = placed_on(names.get(id(emb), ""), dm) if emb is not None else None
        where = where or next(iter(dm.values()))
        return torch.device(execution_device(where, dm))
    try:
        p = emb.weight if emb is not None and getattr(emb, "weight", None) is not None else next(hf.parameters())
    except (NotImplementedError, StopIteration):
        return torch.device("cpu")
    return p.device


def param_dtype(hf) -> torch.dtype:
    """dtype of the model's floating weights (the input embedding's where it has one)."""
    emb = _input_embeddings(hf)
    w = getattr(emb, "weight", None) if emb is not None else None
    if w is not None and w.is_floating_point():
        return w.dtype
    return next((p.dtype for p in hf.parameters() if p.is_floating_point()), torch.float32)


def _input_embeddings(hf):
    try:
        return hf.get_input_embeddings()
    except (AttributeError, NotImplementedError):     # audio encoders (wav2vec2, HuBERT) have none
        return None
