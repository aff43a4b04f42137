"""Model loading: built-in offline names, HF hub ids and local folders."""
from __future__ import annotations

from pathlib import Path

from .builtin import BUILTINS, installed


def load(name_or_path: str, *, device=None, dtype=None, device_map=None, revision: str | None = None,
         max_memory: dict | None = None, offload_folder=None, quiet: bool = True):
    """Load and wrap a model; returns ``workbench.Model``.

    ``name_or_path`` is a built-in name (``workbench.BUILTINS``: smollm2-135m, minilm-l6,
    whisper-tiny.en, whisper-base; weights from registry packages, converted once into the
    cache so later loads take about a second), a local HF folder, or a hub id (needs network).

    Args:
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, a ``torch.dtype``, or
            ``"auto"``: the checkpoint's dtype (built-ins: ``BUILTINS[name].checkpoint_dtype``).
        device_map: dispatch over several devices with accelerate instead of ``device``:
            ``"auto"`` (fill GPUs, then CPU, then disk), ``"balanced"``, ``"sequential"`` or a
            dict {module name: ``"cuda:0"`` | 0 | ``"cpu"`` | ``"disk"``}; see ``Model.device_map``.
        max_memory: with ``device_map``: {device: ``"10GiB"``}, accelerate's budget per device.
        offload_folder: with ``device_map``: an empty or new folder for weights offloaded to disk.
        revision: hub branch, tag or commit (hub ids only).

    Raises:
        UserError: unknown dtype or device, a CUDA device this machine lacks, ``device`` and
            ``device_map`` together, ``revision`` for a built-in or a local folder; or not a
            built-in name, not a folder, and not loadable as a hub id.
        ModuleNotFoundError: a built-in's weights package is not installed (says what to install).
        UnsupportedModelError: the architecture has no adapter (lists the supported families).
    """
    import sys

    from transformers.utils import logging as hf_logging

    from .._device import check_device_map, resolve_device, resolve_dtype
    from ..errors import UserError
    from ..model import Model
    from .loaders import hf_kwargs, load_builtin, load_pretrained

    if quiet or not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    dev = resolve_device(device)
    check_device_map(device_map, device, offload_folder)
    if max_memory is not None and device_map is None:
        raise UserError("max_memory is only used with device_map (e.g. device_map='auto')")
    builtin = BUILTINS.get(name_or_path)
    kw = hf_kwargs(resolve_dtype(dtype, builtin.checkpoint_dtype if builtin else None), dev, device_map,
                   max_memory, offload_folder)
    if isinstance(kw["dtype"], str) and kw["dtype"] != "auto":
        kw["dtype"] = resolve_dtype(kw["dtype"])
    if builtin is not None:
        if revision is not None:
            raise UserError(f"revision applies to hub ids; {name_or_path!r} is a built-in model with fixed weights")
        hf, tok, fe, info = load_builtin(name_or_path, quiet=quiet, hf_kw=kw)
        return Model(hf, tokenizer=tok, feature_extractor=fe, name=name_or_path, source=info["source"], meta=info)
    p = Path(name_or_path)
    if not p.exists() and ("/" not in name_or_path or name_or_path.startswith((".", "/"))):
        raise UserError(f"unknown model {name_or_path!r}: not a built-in ({', '.join(BUILTINS)}), "
                        "not an existing folder and not a hub id (owner/name); run `workbench models`")
    if revision is not None and p.exists():
        raise UserError(f"revision applies to hub ids; {name_or_path!r} is a local folder")
    try:
        hf, tok, fe, info = load_pretrained(name_or_path, hf_kw=kw, revision=revision)
    except OSError as exc:
        raise UserError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    return Model(hf, tokenizer=tok, feature_extractor=fe, name=p.name if p.exists() else name_or_path,
                 source=info["source"], meta=info)


__all__ = ["BUILTINS", "installed", "load"]
