"""AtP* GradDrop against a hand-built computation from HF modules (Kramar et al. 2024, eq. 11).

The oracle shares no code with ``workbench.patching.atp``: z is the input of each layer's
output projection (a forward pre-hook swaps it for a leaf that requires grad), the corrupt z
comes from a pre-hook on the corrupt run, the metric is the logit difference written out
from the logits, and GradDrop of layer l is a forward hook returning
``input + (output - input).detach()`` (same value; the gradient reaches the layer's input only
through the skip connection). Then, per head h and input i,

    AtP*(h, i) = 1 / (L - 1) * sum_l | sum_pos (z'_h - z_h) . dM/dz_h |   (layer l dropped)

with one full forward and backward per dropped layer. The engine's chain shortcut (backward
passes of decreasing depth, ``atp._chain``) and its full L-pass loop must both equal it.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import workbench as wb
from workbench.batch import Batch
from workbench.patching import atp as atp_mod
from workbench.patching import metrics, patch
from tiny import scale_weights

LAYERS = 4


def deep(family: str):
    """A 4-layer random model (the shortcut only differs from the full loop with depth), its
    layers and each layer's output projection."""
    torch.manual_seed(0)
    if family == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=64, vocab_size=97, max_position_embeddings=64)
        hf = tf.LlamaForCausalLM(cfg).eval()
        layers = hf.model.layers
        projs = [lay.self_attn.o_proj for lay in layers]
    else:
        cfg = tf.GPT2Config(n_layer=LAYERS, n_head=4, n_embd=32, vocab_size=97, n_positions=64)
        hf = tf.GPT2LMHeadModel(cfg).eval()
        layers = hf.transformer.h
        projs = [lay.attn.c_proj for lay in layers]
    scale_weights(hf, 3.0, positions=False)   # effects far above round-off
    return hf, layers, projs


def batches():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(3, 97, (3, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(3, 97, (3,), generator=g)
    return clean, corrupt


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 3] - logits[:, -1, 5]                 # [n]


def z_in(projs, ids, hf, leaf: bool, drop=None, layers=None):
    """Run ``ids``; return (metric [n], [z per layer, [n, T, H*d]]); with ``leaf`` each entry is
    (z, d) where z + d (d = 0, a leaf) is what the projection reads, so dM/dd = dM/dz; layer
    ``drop`` is routed around in backward."""
    zs, hooks = [], []

    def pre(mod, args):
        if not leaf:
            zs.append(args[0])
            return None
        d = torch.zeros_like(args[0], requires_grad=True)     # dM/dd = dM/dz, every path kept
        zs.append((args[0].detach(), d))
        return (args[0] + d,)

    def skip(mod, args, kwargs, out):
        inp = args[0] if args else kwargs["hidden_states"]
        h = out[0] if isinstance(out, tuple) else out
        h = inp + (h - inp).detach()
        return (h, *out[1:]) if isinstance(out, tuple) else h

    try:
        hooks = [p.register_forward_pre_hook(pre) for p in projs]
        if drop is not None:
            hooks.append(layers[drop].register_forward_hook(skip, with_kwargs=True))
        with torch.set_grad_enabled(leaf):
            out = logit_diff(hf(ids).logits)
    finally:
        for h in hooks:
            h.remove()
    return out, zs


def oracle(hf, layers, projs, clean, corrupt, n_heads: int) -> torch.Tensor:
    """AtP* [layer * head, input] by the module docstring's formula."""
    _, z_src = z_in(projs, corrupt, hf, leaf=False)
    total = torch.zeros(len(projs) * n_heads, clean.shape[0], dtype=torch.float64)
    for l in range(len(layers)):
        m, zs = z_in(projs, clean, hf, leaf=True, drop=l, layers=layers)
        grads = torch.autograd.grad(m.sum(), [d for _, d in zs], allow_unused=True)
        for j, ((z, _), zc, g) in enumerate(zip(zs, z_src, grads)):
            g = torch.zeros_like(z) if g is None else g
            d = (zc - z).unflatten(-1, (n_heads, -1))
            e = (d * g.unflatten(-1, (n_heads, -1))).sum(-1).sum(1)          # [n, head]
            total[j * n_heads:(j + 1) * n_heads] += e.T.double().abs()
    return (total / (len(layers) - 1)).float()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_atp_star_equals_hand_graddrop(family, monkeypatch):
    hf, layers, projs = deep(family)
    clean, corrupt = batches()
    want = oracle(hf, layers, projs, clean, corrupt, n_heads=4)
    assert want.abs().max() > 1e-3
    model = wb.wrap(hf)
    qm = {"self": torch.ones_like(clean, dtype=torch.bool)}
    c, x = Batch({"input_ids": clean}, qm, [{}] * 3), Batch({"input_ids": corrupt}, qm, [{}] * 3)
    met = metrics.LogitDiff(metrics.last_positions(c), [3] * 3, [5] * 3)
    got = {}
    for chain in (True, False):
        monkeypatch.setattr(atp_mod, "_CHAIN", chain)
        res = patch(model, c, met, corrupt=x, method="atp*")
        assert [(h.layer, h.head) for h in res.heads] == [(l, h) for l in range(LAYERS) for h in range(4)]
        torch.testing.assert_close(res.per_input, want, atol=1e-5, rtol=1e-4)
        got[chain] = res.per_input
    torch.testing.assert_close(got[True], got[False], atol=1e-6, rtol=1e-6)


def test_atp_star_chain_on_a_subset_of_heads(monkeypatch):
    """Heads of the upper layers only (the layers below them carry no gradient): the shortcut
    still equals the full loop."""
    hf, _, _ = deep("llama")
    clean, corrupt = batches()
    model = wb.wrap(hf)
    qm = {"self": torch.ones_like(clean, dtype=torch.bool)}
    c, x = Batch({"input_ids": clean}, qm, [{}] * 3), Batch({"input_ids": corrupt}, qm, [{}] * 3)
    met = metrics.LogitDiff(metrics.last_positions(c), [3] * 3, [5] * 3)
    heads = [h for h in model.heads() if h.layer >= 2]
    out = []
    for chain in (True, False):
        monkeypatch.setattr(atp_mod, "_CHAIN", chain)
        for node in ("z", "q"):
            out.append(patch(model, c, met, corrupt=x, method="atp*", heads=heads, node=node).per_input)
    assert out[0].abs().max() > 1e-3
    torch.testing.assert_close(out[0], out[2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[1], out[3], atol=1e-6, rtol=1e-6)
