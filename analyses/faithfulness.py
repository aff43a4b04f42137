"""Faithfulness panel: do raw attention, rollout and flow rank input tokens the way
ablation and gradients do?

Source: Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Table 1: per
layer, Spearman's rank correlation between token importance from raw attention, rollout and
flow, and (a) blank-out importance (replace one input token, measure the change of the
output) and (b) input-gradient importance. They report that rollout and flow correlate
better than raw attention with both, in upper layers.

Choices made here (the paper leaves them open or used a task head we do not have):
- Target score. Causal LMs: log-probability of the model's own top next-token prediction
  at the last real position. Text encoders (all-MiniLM-L6 ships no MLM or task head, it is
  a sentence-embedding model): cosine similarity between the mean-pooled last hidden state
  of the input and that of the next input of the batch (cyclically), i.e. the model's own
  sentence-similarity use.
- Attention row: causal models the last real position (the one that predicts); encoders
  the mean over all real rows (the target is mean-pooled). Raw attention = head mean of
  that layer's row(s); rollout and flow as in ``rollout``/``flow``.
- Blank-out: the token is replaced by the tokenizer's unk token ([UNK] for BERT), or eos
  where there is none (SmolLM2); importance = |target(x) - target(x with token i blanked)|.
- Input gradient: L2 norm over d_model of d target / d input embedding at each position.
- BERT's [CLS]/[SEP] are excluded from the correlations (blanking them is not a content
  change); padding is cropped. Spearman per input and layer, then mean over inputs (NaN
  for constant vectors is skipped).
Outputs: table ``faithfulness`` (layer, method, reference, spearman, n_inputs); per-head
table has no metric columns. Audio models: not applicable (ValueError via ``applies``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from workbench.batch import Batch

from ._context import Analysis, Context, Params, Result, param
from .flow import MAX_WORK, flow
from .rollout import layer_means, residual_matrices, rollout

METHODS = ("raw", "rollout", "flow")
REFERENCES = ("blankout", "grad")


@dataclass(frozen=True)
class FaithfulnessParams(Params, analysis="faithfulness"):
    max_inputs: int = param(8, lo=1, doc="inputs scored")
    max_work: float = param(MAX_WORK, lo=0, lo_open=True, doc="attention-flow work limit (edge visits)")


def applies(model) -> str | None:
    if model.kind not in ("causal", "encoder"):
        return f"the faithfulness panel ranks input tokens of text models; {model.name} is a {model.kind} model"
    return None


def _target(model, out, mask: torch.Tensor, ref: torch.Tensor | None, pred: torch.Tensor | None):
    """Target per sequence: causal log p(pred) at the last real position; encoder cosine to ``ref``."""
    if model.kind == "causal":
        last = mask.sum(1) - 1
        logits = out.logits[torch.arange(len(last)), last].float()
        return torch.log_softmax(logits, -1)[torch.arange(len(last)), pred]
    h = out.last_hidden_state.float()
    pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.cosine_similarity(pooled, ref.expand_as(pooled), dim=-1)


def _pooled(model, ids: list[int]) -> torch.Tensor:
    b = model.prepare(token_ids=[ids])
    h = model.run(b).output.last_hidden_state.float()
    return h.mean(1)


def token_importance(model, ids: list[int], ref: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(blank-out, input-gradient) importance per position of one unpadded input ``ids``."""
    tok = model.tokenizer
    blank = tok.unk_token_id if getattr(tok, "unk_token_id", None) is not None else tok.eos_token_id
    t = len(ids)
    base_b = model.prepare(token_ids=[ids])
    mask = base_b.model_inputs["attention_mask"]
    pred = None
    with torch.no_grad():
        out = model.run(base_b).output
        if model.kind == "causal":
            pred = out.logits[0, -1].argmax().view(1)
        base = _target(model, out, mask, ref, pred)
        variants = [ids[:i] + [blank] + ids[i + 1:] for i in range(t)]
        vb = model.prepare(token_ids=variants)
        vo = model.run(vb).output
        blanked = _target(model, vo, vb.model_inputs["attention_mask"], ref, None if pred is None else pred.expand(t))
    blankout = (base - blanked).abs().numpy()
    emb = model.hf.get_input_embeddings()(base_b.model_inputs["input_ids"]).detach().requires_grad_(True)
    gb = Batch({"inputs_embeds": emb, "attention_mask": mask}, base_b.query_mask, base_b.items)
    out = model.run(gb, grad=True).output
    _target(model, out, mask, ref, pred).sum().backward()
    grad = emb.grad[0].float().norm(dim=-1).numpy()
    return blankout, grad


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def faithfulness_table(model, batch, *, max_inputs: int = 8, max_work: float = MAX_WORK) -> pd.DataFrame:
    """Mean Spearman correlation per (layer, method, reference); see module docstring."""
    reason = applies(model)
    if reason:
        raise ValueError(reason)
    n = min(max_inputs, len(batch))
    ids_all = [batch.model_inputs["input_ids"][i][batch.query_mask["self"][i]].tolist() for i in range(n)]
    if any(len(s) < 3 for s in ids_all):
        raise ValueError("faithfulness needs inputs of at least 3 tokens")
    refs = [_pooled(model, ids_all[(i + 1) % n]) for i in range(n)] if model.kind == "encoder" else [None] * n
    acc: dict = {}
    for i in range(n):
        means, _ = layer_means(model, batch, "self", i)
        a_hat = residual_matrices(means)
        t = means.shape[-1]
        if model.kind == "causal":
            rows, raw = [t - 1], means[:, t - 1].double().numpy()
        else:
            rows, raw = None, means.double().mean(1).numpy()
        roll = rollout(a_hat)
        roll = (roll[:, t - 1] if rows else roll.mean(1)).numpy()
        fl = flow(a_hat, rows, max_work=max_work)
        fl = (fl[:, 0] if rows else fl.mean(1)).numpy()
        blank, grad = token_importance(model, ids_all[i], refs[i])
        keep = slice(1, t - 1) if model.kind == "encoder" else slice(0, t)
        for l in range(means.shape[0]):
            for mname, imp in (("raw", raw), ("rollout", roll), ("flow", fl)):
                for rname, ref in (("blankout", blank), ("grad", grad)):
                    acc.setdefault((l, mname, rname), []).append(_spearman(imp[l][keep], ref[keep]))
    out = [{"layer": l, "method": m, "reference": r, "spearman": float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan"),
            "n_inputs": int(np.sum(~np.isnan(v)))} for (l, m, r), v in sorted(acc.items())]
    return pd.DataFrame(out)


def _run(ctx: Context) -> Result:
    tab = faithfulness_table(ctx.model, ctx.batch, max_inputs=ctx.params.max_inputs, max_work=ctx.params.max_work)
    top = tab[tab["layer"] == tab["layer"].max()]
    summary = {f"{r.method}_vs_{r.reference}_last_layer": round(r.spearman, 4) for r in top.itertuples()}
    heads = pd.DataFrame([{"stream": h.stream, "layer": h.layer, "head": h.head} for h in ctx.model.heads()])
    return Result(heads, tables={"faithfulness": tab}, summary=summary)


ANALYSIS = Analysis("faithfulness", _run, applies, params=FaithfulnessParams)
