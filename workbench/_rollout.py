"""Attention rollout in numpy: the one definition, used by ``analyses/rollout.py`` (through
torch wrappers) and by the dashboard's Flow page (torch-free).

Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers":

    A_l      head-mean attention of layer l, rows renormalised to sum 1 over the kept keys
             (cropping padding / frames without audio removes mass; renormalising restores it)
    A_hat_l  = 0.5 A_l + 0.5 I, rows renormalised                  (the residual connection)
    R_1 = A_hat_1,  R_l = A_hat_l R_{l-1}

Shapes: ``[layer, T, T]`` (query, key) in and out, float64.
"""
from __future__ import annotations

import numpy as np


def residual_matrices(means: np.ndarray) -> np.ndarray:
    """A_hat per layer from head-mean attention ``means`` ``[layer, T, T]`` (cropped to real
    positions); float64, rows sum to 1."""
    a = np.asarray(means, dtype=np.float64)
    a = a / np.maximum(a.sum(-1, keepdims=True), 1e-30)
    a_hat = 0.5 * a + 0.5 * np.eye(a.shape[-1])
    return a_hat / a_hat.sum(-1, keepdims=True)


def rollout(a_hat: np.ndarray) -> np.ndarray:
    """Cumulative rollout ``[layer, T, T]``: ``R_l = A_hat_l R_{l-1}`` (rows sum to 1)."""
    a_hat = np.asarray(a_hat, dtype=np.float64)
    out = np.empty_like(a_hat)
    r = np.eye(a_hat.shape[-1])
    for layer in range(a_hat.shape[0]):
        r = a_hat[layer] @ r
        out[layer] = r
    return out


def rollout_from_patterns(layers: list[np.ndarray]) -> np.ndarray:
    """Rollout ``[layer, T, T]`` from saved patterns, one ``[head, query, key]`` per layer:
    heads averaged with equal weight, then ``residual_matrices`` and ``rollout``.

    Raises:
        ValueError: no layers, layers of different sizes, or non-square (cross) patterns.
    """
    if not layers:
        raise ValueError("rollout needs at least one layer of patterns")
    shapes = {np.shape(p)[1:] for p in layers}
    if len(shapes) != 1:
        raise ValueError(f"all layers must share [query, key] sizes; got {sorted(shapes)}")
    n_q, n_k = next(iter(shapes))
    if n_q != n_k:
        raise ValueError(f"rollout needs square self-attention patterns; got {n_q}x{n_k}")
    means = np.stack([np.asarray(p, dtype=np.float64).mean(0) for p in layers])
    return rollout(residual_matrices(means))
