"""Head importance from gate gradients (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

Each head's output is multiplied by a gate xi_h (= 1); the importance of head h is

    I_h = E_x | dM/dxi_h | = E_x | sum_pos z_h(x) . dM/dz_h(x) |

(z_h the head's output before the output projection; gating z_h or z_h W_O[h] is the same),
with the absolute value taken per input and then averaged over inputs. Choices left open
by the source, fixed here: M is the task's metric (Michel et al. use the loss; any scalar
per input works and the task metric is what pruning re-measures); each layer's scores are
divided by their L2 norm over that layer's heads (their normalisation), the raw scores are
kept too; heads already pruned (zero-ablated) have z_h = 0 and hence importance 0.
One forward and one backward pass for every head.
"""
from __future__ import annotations

import pandas as pd
import torch

from workbench.capture import Ablate, Z


def gate_gradients(model, batch, metric, *, pruned=(), index: torch.Tensor | None = None) -> dict:
    """dM/dxi_h per input: {(stream, layer): float32 [input, head]} and the metric [input].

    ``pruned`` heads are zero-ablated during the pass. ``index`` maps the batch's inputs to
    the metric's (default: 0..n-1).
    """
    edits = [Ablate(tuple(pruned), "zero")] if pruned else []
    trace = model.run(batch, capture=[Z(None, grad=True)], edits=edits, grad=True)
    index = torch.arange(len(batch)) if index is None else index
    m = metric.evaluate(trace.output, index).float()
    keys = sorted(trace.z)
    grads = torch.autograd.grad(m.sum(), [trace.z[k] for k in keys], allow_unused=True)
    out = {}
    for k, g in zip(keys, grads):
        z = trace.z[k].detach()                                             # [input, pos, head, d_head]
        g = torch.zeros_like(z) if g is None else g
        out[k] = (z * g).sum((1, 3)).float()                                # [input, head]
    return {"gate_grad": out, "metric": m.detach()}


def head_importance(model, batch, metric, *, pruned=(), normalize: bool = True) -> pd.DataFrame:
    """Michel et al. importance of every head.

    Returns:
        DataFrame ``stream, layer, head, importance.michel`` (layer-normalised when
        ``normalize``, else raw) and ``importance.michel_raw`` (E_x |dM/dxi_h|, metric units).
    """
    res = gate_gradients(model, batch, metric, pruned=pruned)
    rows = []
    for (stream, layer), g in sorted(res["gate_grad"].items()):
        raw = g.abs().mean(0)
        norm = raw / raw.norm().clamp_min(1e-20) if normalize else raw
        for h in range(len(raw)):
            rows.append((stream, layer, h, float(norm[h]), float(raw[h])))
    return pd.DataFrame(rows, columns=["stream", "layer", "head", "importance.michel", "importance.michel_raw"])
