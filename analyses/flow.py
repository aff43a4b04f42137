"""Attention flow per self-attention stack, with a library max-flow solver.

Definition (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): a DAG
with nodes (layer, position), layer 0 = the input tokens; an edge from (l, i) to
(l-1, j) with capacity A_hat_l[i, j], where A_hat_l = 0.5 A_l + 0.5 I (head mean, rows
renormalised; see ``rollout``). flow_l(u -> v) = max-flow value from node (l, u) to
input node (0, v); each output row is normalised to sum 1 over v.

Choices made here (the paper leaves them open):

- Solver: SciPy's ``maximum_flow`` (Dinic) by default; it takes integer capacities, so
  capacities are A_hat * 2**24 rounded (error < 1e-7 per edge, max flow <= 1).
  ``solver="networkx"`` uses NetworkX's ``maximum_flow_value`` (float capacities,
  preflow-push), the library of the authors' code; both agree to ~1e-6.
- Per-input-token importance per layer needs one max-flow problem per (layer, input token)
  for one output row (``query="last"`` / ``"first"``); ``query="mean"`` averages all rows
  and needs T times more. Cropping and head averaging are those of ``rollout``.
- Size guard: the work estimate is sum over layers l of (problems at l) x (edges of the
  l-layer graph), checked per input. Measured on 2 CPU cores (smollm2-135m, 30 layers,
  one output row): T=32 0.4 s, T=64 3.3 s, T=128 26 s (5e8 work). Above ``max_work``
  (default 1e9, about a minute per input) it raises ValueError unless ``allow_slow=True``:
  the cost grows as L^2 T^3 (T^4 for ``query="mean"``). ``streams`` restricts the stacks
  (e.g. the Whisper encoder, 50 frames per second, is usually too large for flow).
- Where the paper says flow and rollout coincide: at the first layer both equal A_hat_1
  (one path per input token); the tests check that, and exactness against a brute-force
  min-cut enumeration on small random graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ._context import Analysis, Context, Params, Result, param
from .rollout import (QUERIES, SELF_STREAMS, default_query, layer_means, pick, query_row, residual_matrices, rollout,
                      stacks, _tokens)

SCALE = 2 ** 24
MAX_WORK = 1e9


@dataclass(frozen=True)
class FlowParams(Params, analysis="flow"):
    query: str | None = param(None, choices=QUERIES, doc="output row(s) to explain; None: the model's default")
    streams: tuple[str, ...] | None = param(None, choices=SELF_STREAMS, doc="self-attention stacks; None: all")
    solver: str = param("scipy", choices=("scipy", "networkx"))
    max_work: float = param(MAX_WORK, lo=0, lo_open=True, doc="refuse above this many edge visits")
    allow_slow: bool = param(False, doc="run even above max_work")


def _graph(a_hat: np.ndarray, n_layers: int):
    """CSR capacity matrix of the DAG of layers 1..n_layers; node (m, i) = m * T + i."""
    from scipy.sparse import csr_array

    t = a_hat.shape[-1]
    rows, cols, caps = [], [], []
    for m in range(1, n_layers + 1):
        cap = np.rint(a_hat[m - 1] * SCALE).astype(np.int64)
        i, j = np.nonzero(cap)
        rows.append(m * t + i)
        cols.append((m - 1) * t + j)
        caps.append(cap[i, j])
    n = (n_layers + 1) * t
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(caps).astype(np.int32)
    return csr_array((v, (r, c)), shape=(n, n))


def _nx_graph(a_hat: np.ndarray, n_layers: int):
    import networkx as nx

    t = a_hat.shape[-1]
    g = nx.DiGraph()
    for m in range(1, n_layers + 1):
        for i in range(t):
            for j in range(t):
                if a_hat[m - 1, i, j] > 0:
                    g.add_edge((m, i), (m - 1, j), capacity=float(a_hat[m - 1, i, j]))
    return g


def work_estimate(n_layers: int, t: int, n_rows: int, density: float = 1.0) -> float:
    """sum_l (n_rows * t problems) x (l * t^2 * density edges)."""
    return float(sum(n_rows * t * l * t * t * density for l in range(1, n_layers + 1)))


def flow(a_hat: torch.Tensor, rows: list[int] | None = None, *, solver: str = "scipy",
         max_work: float = MAX_WORK, allow_slow: bool = False) -> torch.Tensor:
    """Attention flow from output rows at every layer to the input tokens.

    Args:
        a_hat: [layer, T, T] residual-augmented head-mean attention (``residual_matrices``).
        rows: output positions u (default: all T).
        solver: ``"scipy"`` (Dinic on integer capacities) or ``"networkx"``.
    Returns:
        [layer, len(rows), T] float64; each row sums to 1 (0 where no flow reaches the input).
    Raises:
        ValueError: unknown solver, or the work estimate exceeds ``max_work`` without
            ``allow_slow`` (the message gives the size and the estimate).
    """
    if solver not in ("scipy", "networkx"):
        raise ValueError(f"solver must be 'scipy' or 'networkx', got {solver!r}")
    a = a_hat.double().numpy()
    n_layers, t, _ = a.shape
    rows = list(range(t)) if rows is None else list(rows)
    density = float((a > 0).mean())
    work = work_estimate(n_layers, t, len(rows), density)
    if work > max_work and not allow_slow:
        raise ValueError(
            f"attention flow for {n_layers} layers x {t} positions x {len(rows)} output rows needs about "
            f"{work:.1e} edge visits (limit {max_work:.0e}, minutes of CPU): use fewer/shorter inputs "
            f"(--max-tokens), query='last', or pass allow_slow=True"
        )
    out = np.zeros((n_layers, len(rows), t))
    for l in range(1, n_layers + 1):
        if solver == "scipy":
            from scipy.sparse.csgraph import maximum_flow

            g = _graph(a, l)
            for ri, u in enumerate(rows):
                for v in range(t):
                    out[l - 1, ri, v] = maximum_flow(g, l * t + u, v).flow_value / SCALE
        else:
            import networkx as nx

            g = _nx_graph(a, l)
            for ri, u in enumerate(rows):
                for v in range(t):
                    out[l - 1, ri, v] = nx.maximum_flow_value(g, (l, u), (0, v)) if (0, v) in g else 0.0
    s = out.sum(-1, keepdims=True)
    return torch.from_numpy(np.where(s > 0, out / np.where(s > 0, s, 1), 0.0))


def _run(ctx: Context) -> Result:
    model, batch = ctx.model, ctx.batch
    p: FlowParams = ctx.params
    solver, allow, max_work = p.solver, p.allow_slow, p.max_work
    rows, tensors, summary = [], {}, {}
    streams = p.streams or stacks(model)
    for stream in streams:
        if stream not in stacks(model):
            raise ValueError(f"flow: {model.name} has no self-attention stream {stream!r}; it has {stacks(model)}")
        q = p.query or default_query(model, stream)
        for i in range(len(batch)):
            means, keep = layer_means(model, batch, stream, i)
            a_hat = residual_matrices(means)
            row = query_row(q, means.shape[-1])
            f = flow(a_hat, None if row is None else [row], solver=solver, max_work=max_work, allow_slow=allow)
            f_imp = f.mean(1) if row is None else f[:, 0]
            r_imp = pick(rollout(a_hat), row)
            tensors.setdefault("flow", {})[f"importance/{stream}/{i}"] = f_imp.float().contiguous()
            toks = _tokens(batch, stream, i, keep)
            for l in range(means.shape[0]):
                for p in range(means.shape[-1]):
                    rows.append({"input": i, "stream": stream, "layer": l, "position": p, "token": toks[p],
                                 "flow": float(f_imp[l, p]), "rollout": float(r_imp[l, p])})
        summary[stream] = {"query": q, "solver": solver}
    heads = pd.DataFrame([{"stream": h.stream, "layer": h.layer, "head": h.head} for h in model.heads()])
    return Result(heads, tensors=tensors, tables={"flow": pd.DataFrame(rows)}, summary=summary)


def _applies(model) -> str | None:
    return None if stacks(model) else f"{model.name} has no self-attention stack"


ANALYSIS = Analysis("flow", _run, _applies, params=FlowParams)
