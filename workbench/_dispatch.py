"""Place an already loaded HF model: move / cast it, or dispatch it with accelerate.

``workbench.load`` places weights while reading them (``from_pretrained``); ``wrap`` gets
a model in memory and uses this. Dispatch is accelerate's own (``infer_auto_device_map``
for a strategy name, ``dispatch_model`` with its offload hooks); the workbench adds no
hooks of its own here.
"""
from __future__ import annotations

from ._device import check_device_map, module_device_map, resolve_device, resolve_dtype
from .errors import UserError


def place(hf, *, device=None, dtype=None, device_map=None, max_memory=None, offload_folder=None):
    """``hf`` on ``device`` in ``dtype``, or dispatched by ``device_map``; returns ``hf``.

    ``None`` keeps the model's current device / dtype (``dtype="auto"`` too: a model in
    memory has no other checkpoint dtype). Raises UserError for bad values (see
    ``_device``), for ``max_memory`` without ``device_map``, and for moving or re-dispatching
    a model that accelerate already dispatched.
    """
    dev = resolve_device(device)
    check_device_map(device_map, device, offload_folder)
    if max_memory is not None and device_map is None:
        raise UserError("max_memory is only used with device_map (e.g. device_map='auto')")
    want = None if dtype in (None, "auto") else resolve_dtype(dtype)
    if module_device_map(hf) is not None:
        if dev is not None or device_map is not None or want is not None:
            raise UserError("this model is already dispatched by accelerate (hf_device_map); wrap it without "
                            "device, dtype or device_map")
        return hf
    if want is not None:
        hf = hf.to(want)
    if device_map is None:
        return hf.to(dev) if dev is not None else hf
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        no_split = getattr(hf, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(hf, max_memory=max_memory, no_split_module_classes=list(no_split))
        if "disk" in device_map.values() and offload_folder is None:
            raise UserError("device_map='auto' offloads part of this model to disk: give offload_folder "
                            "(an empty or new folder) or more max_memory")
    hf = dispatch_model(hf, device_map=device_map, offload_dir=None if offload_folder is None else str(offload_folder))
    hf.hf_device_map = dict(device_map)
    return hf


__all__ = ["place"]
