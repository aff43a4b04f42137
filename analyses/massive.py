"""Massive activations in the residual stream.

Definition (Sun et al. 2024, "Massive Activations in Large Language Models"): an entry h of
a hidden state is massive if |h| > ``min_abs`` (100) and |h| >= ``ratio`` (1000) times the
median |h| of that hidden state. They sit at a few fixed feature dimensions, on the first
token and on low-semantic tokens, and coincide with attention sinks.

Choices made here: "hidden state" = the residual stream of one input at one layer, over
its real positions (padding, and Whisper encoder frames without audio, excluded) and all
dimensions; the median is taken over that [positions x d_model] block. Layers are HF's
``hidden_states``: index 0 = embeddings, index l = output of block l (1-indexed); the last
entry is what HF returns there (after the final norm for pre-LN models such as Llama).
Streams: ``self`` (text models), ``encoder`` and ``decoder`` (Whisper).

Outputs: the ``massive`` table (input, stream, layer, position, token, dim, value, ratio);
per head ``massive.alpha_on_massive``: the attention (sinks' alpha_k, mean over inputs)
that the head gives to the positions holding a massive activation at any layer of the
stack its keys come from, summed over those positions (Sun et al.: these are the sinks).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench.batch import Batch

from ._context import KEY_STREAM, Analysis, Context, Params, Result, param
from .sinks import alpha

MIN_ABS = 100.0
RATIO = 1000.0


@dataclass(frozen=True)
class MassiveParams(Params, analysis="massive"):
    min_abs: float = param(MIN_ABS, lo=0, lo_open=True, doc="|activation| above which an entry is massive")
    ratio: float = param(RATIO, lo=0, lo_open=True, doc="|activation| / median |activation| above which an entry is massive")


def hidden_states(model, batch) -> dict[str, tuple[torch.Tensor, ...]]:
    """{stream: (hidden state [batch, pos, d_model] per layer)} from one plain forward."""
    inputs = dict(batch.model_inputs, output_hidden_states=True)
    out = model.run(Batch(inputs, batch.query_mask, batch.items)).output
    if model.kind == "speech-seq2seq":
        return {"encoder": out.encoder_hidden_states, "decoder": out.decoder_hidden_states}
    return {"self": out.hidden_states}


def find_massive(states: dict, query_mask: dict, tokens: list[dict] | None = None, *,
                 min_abs: float = MIN_ABS, ratio: float = RATIO) -> pd.DataFrame:
    """Massive activations (see module docstring) as a table, one row per entry."""
    rows = []
    for stream, hs in states.items():
        qm = query_mask.get(stream)
        for layer, h in enumerate(hs):
            h = h.detach().float()
            for i in range(h.shape[0]):
                keep = torch.ones(h.shape[1], dtype=torch.bool, device=h.device) if qm is None else qm[i, : h.shape[1]].bool().to(h.device)
                pos = torch.nonzero(keep).flatten()
                x = h[i, pos].abs()                                  # [real pos, d_model]
                med = x.median().clamp_min(1e-12)
                hit = (x > min_abs) & (x >= ratio * med)
                toks = (tokens[i].get(stream) if tokens else None) or []
                for pi, d in torch.nonzero(hit).tolist():
                    p = int(pos[pi])
                    rows.append({"input": i, "stream": stream, "layer": layer, "position": p,
                                 "token": toks[p] if p < len(toks) else f"#{p}", "dim": int(d),
                                 "value": float(h[i, p, d]), "ratio": float(x[pi, d] / med)})
    cols = ["input", "stream", "layer", "position", "token", "dim", "value", "ratio"]
    return pd.DataFrame(rows, columns=cols)


def _run(ctx: Context) -> Result:
    model, batch = ctx.model, ctx.batch
    min_abs, ratio = ctx.params.min_abs, ctx.params.ratio
    tokens = [it.get("tokens", {}) for it in batch.items]
    table = find_massive(hidden_states(model, batch), batch.query_mask, tokens, min_abs=min_abs, ratio=ratio)
    trace = ctx.stats_trace()
    heads = []
    for (stream, layer), st in sorted(trace.stats.items()):
        ks = KEY_STREAM[stream]
        a, _ = alpha(st, trace.query_mask.get(ks))
        a = torch.nan_to_num(a, nan=0.0)
        mass = torch.zeros(a.shape[:2], device=a.device)
        for i in range(a.shape[0]):
            pos = sorted(set(table[(table["input"] == i) & (table["stream"] == ks)]["position"]))
            if pos:
                mass[i] = a[i][:, pos].sum(-1)
        for h in range(a.shape[1]):
            heads.append({"stream": stream, "layer": layer, "head": h, "massive.alpha_on_massive": mass[:, h].mean().item()})
    summary = {"n_entries": int(len(table)), "min_abs": min_abs, "ratio": ratio}
    if len(table):
        top = table.reindex(table["value"].abs().sort_values(ascending=False).index).head(5)
        summary["largest"] = [{"stream": r.stream, "layer": int(r.layer), "position": int(r.position),
                               "token": r.token, "dim": int(r.dim), "value": round(r.value, 1)}
                              for r in top.itertuples()]
        summary["dims"] = sorted({int(d) for d in table["dim"]})[:20]
    return Result(pd.DataFrame(heads), tables={"massive": table}, summary=summary)


ANALYSIS = Analysis("massive", _run, params=MassiveParams)
