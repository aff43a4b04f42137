"""Path patching: the batched replay equals a naive loop built here from HF modules alone:
sender delta from hooks on o_proj, receiver input through HF's norm and projections,
HF's rotary, softmax by hand, then one full HF forward per (sender, receiver, kind)."""
from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tiny import scale_weights, tiny_batch, tiny_hf
from workbench._types import Head
from workbench.circuits.path_patching import naive_path_patching, path_patching, top_receivers
from workbench.errors import UserError
from workbench.model import wrap
from workbench.patching.metrics import LogitDiff

DH = 8


def _pair(family, scale=10.0):
    """A tiny model with weights scaled up (at init scale 0.02 every path effect is ~1e-6) and a
    clean/corrupt pair of equal masks."""
    hf = tiny_hf(family)
    scale_weights(hf, scale)
    b, x = tiny_batch(family, hf, seed=1), tiny_batch(family, hf, seed=2)
    x.model_inputs["attention_mask"] = b.model_inputs["attention_mask"]
    x.query_mask = b.query_mask
    b.items = x.items = [{"index": 0}, {"index": 1}]
    return hf, b, x


def _record(hf, batch, pre: dict, kw: dict = {}):
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, k=k: seen.__setitem__(k, a[0].detach())) for k, m in pre.items()]
    hooks += [m.register_forward_pre_hook(lambda mod, a, kwargs, k=k: seen.__setitem__(k, kwargs), with_kwargs=True)
              for k, m in kw.items()]
    try:
        with torch.no_grad():
            out = getattr(hf(**batch.model_inputs), "logits", None)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def _hand_llama(hf, b, x, sender, receiver, kind, pos, tgt, dis, mean=False):
    """``mean``: the sender's z' is its mean over the clean inputs' valid positions, not x's z."""
    lay_s, lay_r = hf.model.layers[sender.layer], hf.model.layers[receiver.layer]
    att = lay_r.self_attn
    pre = {"z": lay_s.self_attn.o_proj, "x": lay_r.input_layernorm}
    clean, logits = _record(hf, b, pre, {"attn": att})
    corrupt, _ = _record(hf, x, {"z": lay_s.self_attn.o_proj})
    sl = slice(sender.head * DH, (sender.head + 1) * DH)
    with torch.no_grad():
        zs = clean["z"][..., sl]
        z_new_s = zs[b.model_inputs["attention_mask"].bool()].mean(0).expand_as(zs) if mean else corrupt["z"][..., sl]
        delta = (z_new_s - zs) @ lay_s.self_attn.o_proj.weight[:, sl].T
        n, t = clean["x"].shape[:2]
        heads = lambda y, w, h: w(lay_r.input_layernorm(y)).view(n, t, h, DH).transpose(1, 2)   # noqa: E731
        x0, x1 = clean["x"], clean["x"] + delta
        q = heads(x1 if kind == "q" else x0, att.q_proj, 4)
        k = heads(x1 if kind == "k" else x0, att.k_proj, 2)
        v = heads(x1 if kind == "v" else x0, att.v_proj, 2)
        cos, sin = clean["attn"]["position_embeddings"]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        h, kvh = receiver.head, receiver.head // 2
        s = q[:, h] @ k[:, kvh].transpose(1, 2) / DH ** 0.5
        keep = torch.ones(t, t).tril().bool()[None] & b.model_inputs["attention_mask"].bool()[:, None, :]
        a = torch.softmax(s.masked_fill(~keep, float("-inf")), -1)
        z_new = a @ v[:, kvh]                                                              # [n, T, dh]
        o = att.o_proj
        rs = slice(h * DH, (h + 1) * DH)

        def put(mod, args):
            y = args[0].clone()
            y[..., rs] = z_new
            return (y,)
        hook = o.register_forward_pre_hook(put)
        try:
            patched = hf(**b.model_inputs).logits
        finally:
            hook.remove()
    rows = torch.arange(n)
    ld = lambda lg: lg[rows, pos, tgt] - lg[rows, pos, dis]                                   # noqa: E731
    return ld(patched) - ld(logits)


def test_path_patching_equals_hand_naive_tiny_llama():
    hf, b, x = _pair("llama")
    m = wrap(hf)
    pos, tgt, dis = torch.tensor([10, 6]), torch.tensor([3, 5]), torch.tensor([7, 8])
    met = LogitDiff(pos, tgt, dis)
    receivers = [Head("self", 1, 1), Head("self", 1, 2)]
    res = path_patching(m, b, met, receivers, corrupt=x)
    assert res.effects.shape == (8, 2, 3, 2)
    assert torch.isnan(res.effects[4:]).all()                      # layer-1 senders cannot reach layer-1 receivers
    for s, r, kind in [(Head("self", 0, 0), receivers[0], "q"), (Head("self", 0, 3), receivers[1], "k"),
                       (Head("self", 0, 2), receivers[0], "v")]:
        want = _hand_llama(hf, b, x, s, r, kind, pos, tgt, dis)
        got = res.effects[res.senders.index(s), res.receivers.index(r), "qkv".index(kind)]
        assert torch.allclose(got.double(), want.double(), atol=1e-5, rtol=1e-5), (s, r, kind, got, want)
        assert float(want.abs().max()) > 1e-2
    t = res.table()
    assert set(t.kind) == {"q", "k", "v"} and len(t) == 4 * 2 * 3


def test_path_patching_equals_module_naive_gpt2_and_whisper():
    hf, b, x = _pair("gpt2")
    m = wrap(hf)
    met = LogitDiff(torch.tensor([10, 6]), [3, 5], [7, 8])
    res = path_patching(m, b, met, [Head("self", 1, 0)], corrupt=x)
    for i in (0, 3):
        for k, kind in enumerate("qkv"):
            want = naive_path_patching(m, b, met, Head("self", 0, i), Head("self", 1, 0), kind, corrupt=x)
            assert torch.allclose(res.effects[i, 0, k], want, atol=2e-6)
    zero = path_patching(m, b, met, [Head("self", 1, 0)], ablation="zero")
    want = naive_path_patching(m, b, met, Head("self", 0, 1), Head("self", 1, 0), "v", ablation="zero")
    assert torch.allclose(zero.effects[1, 0, 2], want, atol=2e-6)

    whf = tiny_hf("whisper")
    w = wrap(whf)
    wb = tiny_batch("whisper", whf)
    wb.items = [{"index": 0}, {"index": 1}]
    wm = LogitDiff(torch.tensor([6, 6]), [3, 5], [7, 8])
    res = path_patching(w, wb, wm, [Head("cross", 1, 2), Head("decoder", 1, 0)], ablation="zero")
    cross = res.receivers.index(Head("cross", 1, 2))
    s = res.senders.index(Head("decoder", 1, 3))                   # same layer, self before cross: a path
    want = naive_path_patching(w, wb, wm, Head("decoder", 1, 3), Head("cross", 1, 2), "q", ablation="zero")
    assert torch.allclose(res.effects[s, cross, 0], want, atol=2e-6)
    assert torch.isnan(res.effects[:, cross, 1:]).all()           # cross keys/values come from the encoder


def test_top_receivers_and_refusals():
    from workbench.patching import patch

    hf, b, x = _pair("gpt2")
    m = wrap(hf)
    met = LogitDiff(torch.tensor([10, 6]), [3, 5], [7, 8])
    pr = patch(m, b, met, corrupt=x)
    top = top_receivers(pr, 3)
    assert len(top) == 3 and abs(float(pr.effect[pr.heads.index(top[0])])) == float(pr.effect.abs().max())
    assert top_receivers(pr.table(), 3) == top
    with pytest.raises(UserError, match="corrupt"):
        path_patching(m, b, met, top)
    with pytest.raises(UserError, match="ablation"):
        path_patching(m, b, met, top, ablation="shuffle")


def _hand_bert(hf, b, x, sender, receiver, kind, ablation, reference):
    """Path patching on post-norm BERT from HF modules: the sender's delta through the
    post-norms between it and the receiver, each with its clean 1/sigma (decompose's
    linearisation), then the receiver's q/k/v by HF's Linear modules, softmax by hand."""
    ls, lr = hf.encoder.layer[sender.layer], hf.encoder.layer[receiver.layer]
    pre = {"z": ls.attention.output.dense, "x": lr.attention.self.query}     # x: the layer's input
    lns = [(i, n) for i in range(sender.layer, receiver.layer)
           for n in (hf.encoder.layer[i].attention.output.LayerNorm, hf.encoder.layer[i].output.LayerNorm)]
    pre.update({f"ln{j}": n for j, (_, n) in enumerate(lns)})
    clean, _ = _record(hf, b, pre)
    mask = b.model_inputs["attention_mask"].bool()
    sl = slice(sender.head * DH, (sender.head + 1) * DH)
    with torch.no_grad():
        if ablation == "resample":
            z_new_s = _record(hf, x, {"z": ls.attention.output.dense})[0]["z"][..., sl]
        else:                                                                 # mean over valid positions
            z_new_s = clean["z"][..., sl][mask].mean(0).expand_as(clean["z"][..., sl])
        d = (z_new_s - clean["z"][..., sl]).double() @ ls.attention.output.dense.weight[:, sl].T.double()
        for j, (_, ln) in enumerate(lns):
            xin = clean[f"ln{j}"].double()
            sigma = (xin.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
            d = (d - d.mean(-1, keepdim=True)) / sigma * ln.weight.double()
        att = lr.attention.self
        x0 = clean["x"]
        x1 = (x0.double() + d).float()
        n, t = x0.shape[:2]
        heads = lambda y, w: w(y).view(n, t, 4, DH).transpose(1, 2)                      # noqa: E731
        q = heads(x1 if kind == "q" else x0, att.query)
        k = heads(x1 if kind == "k" else x0, att.key)
        v = heads(x1 if kind == "v" else x0, att.value)
        h = receiver.head
        s = q[:, h] @ k[:, h].transpose(1, 2) / DH ** 0.5
        a = torch.softmax(s.masked_fill(~mask[:, None, :], float("-inf")), -1)
        z_new = a @ v[:, h]
        rs = slice(h * DH, (h + 1) * DH)

        def put(mod, args):
            y = args[0].clone()
            y[..., rs] = z_new
            return (y,)

        def cos(out):
            w = mask[..., None].float()
            emb = (out * w).sum(1) / w.sum(1)
            return torch.nn.functional.cosine_similarity(emb, reference, dim=-1)

        base = cos(hf(**b.model_inputs).last_hidden_state)
        hook = lr.attention.output.dense.register_forward_pre_hook(put)
        try:
            patched = cos(hf(**b.model_inputs).last_hidden_state)
        finally:
            hook.remove()
    return patched - base


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_path_patching_post_norm_bert_equals_hand_naive(ablation):
    from workbench.patching.metrics import CosineSimilarity

    hf, b, x = _pair("bert")
    m = wrap(hf)
    ref = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    met = CosineSimilarity(b.model_inputs["attention_mask"], ref)
    receivers = [Head("self", 1, 0), Head("self", 1, 3)]
    res = path_patching(m, b, met, receivers, corrupt=x if ablation == "resample" else None, ablation=ablation)
    assert torch.isnan(res.effects[4:]).all() and not torch.isnan(res.effects[:4]).any()
    big = 0.0
    for s, r, kind in [(Head("self", 0, 0), receivers[0], "q"), (Head("self", 0, 1), receivers[1], "k"),
                       (Head("self", 0, 2), receivers[0], "v")]:
        want = _hand_bert(hf, b, x, s, r, kind, ablation, ref)
        got = res.effects[res.senders.index(s), res.receivers.index(r), "qkv".index(kind)]
        assert torch.allclose(got.double(), want.double(), atol=1e-5, rtol=1e-4), (s, r, kind, got, want)
        big = max(big, float(want.abs().max()))
    assert big > 1e-3


def test_path_patching_mean_ablation_equals_hand_naive_tiny_llama():
    """Mean ablation: the sender's z' is its mean over the clean inputs' valid positions."""
    hf, b, x = _pair("llama")
    m = wrap(hf)
    pos, tgt, dis = torch.tensor([10, 6]), torch.tensor([3, 5]), torch.tensor([7, 8])
    res = path_patching(m, b, LogitDiff(pos, tgt, dis), [Head("self", 1, 1)], ablation="mean")
    for s, kind in ((Head("self", 0, 2), "k"), (Head("self", 0, 0), "v")):
        want = _hand_llama(hf, b, x, s, Head("self", 1, 1), kind, pos, tgt, dis, mean=True)
        got = res.effects[res.senders.index(s), 0, "qkv".index(kind)]
        assert torch.allclose(got.double(), want.double(), atol=1e-5, rtol=1e-5) and float(want.abs().max()) > 1e-3
