"""Batches of a sweep: checks and digests of their inputs (``engine``)."""
from __future__ import annotations

import torch

from ..batch import Batch


def check_pair(clean: Batch, corrupt: Batch) -> None:
    """Raise ValueError unless ``corrupt`` pairs ``clean`` input for input (same shapes and real positions)."""
    if len(clean) != len(corrupt):
        raise ValueError(f"clean has {len(clean)} inputs but corrupt has {len(corrupt)}; give one corrupt per clean")
    for k, v in clean.model_inputs.items():
        w = corrupt.model_inputs.get(k)
        if torch.is_tensor(v) and (w is None or w.shape != v.shape):
            raise ValueError(f"clean and corrupt inputs differ in shape for {k!r} ({tuple(v.shape)} vs "
                             f"{None if w is None else tuple(w.shape)}): each pair must tokenise to the same length")
    for s, m in clean.query_mask.items():
        if s in corrupt.query_mask and not torch.equal(m, corrupt.query_mask[s]):
            raise ValueError(f"clean and corrupt inputs have different real positions in stream {s!r}: "
                             "each pair must tokenise to the same number of tokens (frames)")


def hash_inputs(h, b: Batch | None) -> None:
    """Feed every tensor model input of ``b`` (by name) into the hash ``h``."""
    for k, v in sorted((b.model_inputs if b is not None else {}).items()):
        if torch.is_tensor(v):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())


def same_inputs(a: Batch, b: Batch) -> bool:
    """Whether two batches hold equal tensor model inputs."""
    ta, tb = ({k: v for k, v in x.model_inputs.items() if torch.is_tensor(v)} for x in (a, b))
    return ta.keys() == tb.keys() and all(ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]) for k in ta)
