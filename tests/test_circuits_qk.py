"""QK attribution: the [query component, key component] contributions sum to the score
scaling * q_i . k_j computed here from HF's own projection outputs (and HF's rotary)."""
from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tiny import scale_weights, tiny_batch, tiny_hf
from workbench._types import Head
from workbench.circuits.qk_attribution import qk_attribution
from workbench.errors import UserError
from workbench.model import wrap


def _outputs(hf, inputs: dict, mods: dict, kw: dict = {}) -> dict:
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, k=k: seen.__setitem__(k, o.detach())) for k, m in mods.items()]
    hooks += [m.register_forward_pre_hook(lambda mod, a, kwargs, k=k: seen.__setitem__(k, kwargs), with_kwargs=True)
              for k, m in kw.items()]
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _heads(x, n_heads):
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2).double()            # [b, h, T, dh]


def _scores_llama_like(hf_layer_attn, hf, inputs, head, n_heads, n_kv):
    s = _outputs(hf, inputs, {"q": hf_layer_attn.q_proj, "k": hf_layer_attn.k_proj}, {"attn": hf_layer_attn})
    q, k = _heads(s["q"], n_heads), _heads(s["k"], n_kv)
    cos, sin = s["attn"]["position_embeddings"]
    q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    kv = head // (n_heads // n_kv)
    return q[0, head] @ k[0, kv].T / q.shape[-1] ** 0.5


def _scaled(family):
    hf = tiny_hf(family)
    scale_weights(hf, 10.0)
    return hf


def _check(r, want):
    assert torch.allclose(r.scores(), want, atol=1e-4, rtol=0)
    i, j = want.shape[0] - 1, 1
    assert float(r.matrix(i, j).sum()) == pytest.approx(float(want[i, j]), abs=1e-4)
    assert torch.allclose(r.query_side().sum(0), want, atol=1e-4) and torch.allclose(r.key_side().sum(0), want, atol=1e-4)
    assert float(want.abs().max()) > 1.0                                   # scaled weights: real scores


def test_qk_attribution_sums_to_score_tiny_llama_rotary_gqa():
    hf = _scaled("llama")
    m, b = wrap(hf), tiny_batch("llama", hf)
    b.items = [{"index": 0}, {"index": 1}]
    for i, head in ((0, 3), (1, 2)):
        r = qk_attribution(m, b, Head("self", 1, head), input=i)
        inputs = {k: v[i:i + 1] for k, v in b.model_inputs.items()}
        _check(r, _scores_llama_like(hf.model.layers[1].self_attn, hf, inputs, head, 4, 2))
        names = [c.name for c in r.components]
        assert names[0] == "embed" and "self/0/3" in names and "mlp/0" in names and names[-1] == "bias/in"


def test_qk_attribution_sums_to_score_tiny_gpt2_and_bert():
    hf = _scaled("gpt2")
    m, b = wrap(hf), tiny_batch("gpt2", hf)
    b.items = [{"index": 0}, {"index": 1}]
    r = qk_attribution(m, b, Head("self", 1, 1), input=0)
    s = _outputs(hf, {k: v[:1] for k, v in b.model_inputs.items()}, {"qkv": hf.transformer.h[1].attn.c_attn})
    q, k = _heads(s["qkv"][..., :32], 4), _heads(s["qkv"][..., 32:64], 4)
    _check(r, q[0, 1] @ k[0, 1].T / 8 ** 0.5)

    hf = _scaled("bert")
    m, b = wrap(hf), tiny_batch("bert", hf)
    b.items = [{"index": 0}, {"index": 1}]
    for layer in (0, 1):
        r = qk_attribution(m, b, Head("self", layer, 2), input=1)
        att = hf.encoder.layer[layer].attention.self
        s = _outputs(hf, {k: v[1:] for k, v in b.model_inputs.items()}, {"q": att.query, "k": att.key})
        _check(r, _heads(s["q"], 4)[0, 2] @ _heads(s["k"], 4)[0, 2].T / 8 ** 0.5)
    assert any(c.kind == "bias" for c in r.components[:-1])              # post-norm betas are components


def test_qk_attribution_whisper_cross_attention_tiny():
    """Cross-attention: decoder components on the query side, encoder components through the
    encoder's final norm on the key side; softmax of their sum is HF eager's cross-attention
    pattern (a separate unwrapped copy), and the hand score from HF's q_proj/k_proj outputs."""
    ref = _scaled("whisper")
    ref.set_attn_implementation("eager")
    m = wrap(_scaled("whisper"))
    b = tiny_batch("whisper", ref)
    b.items = [{"index": 0}, {"index": 1}]
    inputs = {k: v[1:] for k, v in b.model_inputs.items()}
    with torch.no_grad():
        cross = ref(**inputs, output_attentions=True).cross_attentions
    att = ref.model.decoder.layers[1].encoder_attn
    s = _outputs(ref, inputs, {"q": att.q_proj, "k": att.k_proj})
    for layer, head in ((0, 1), (1, 3)):
        r = qk_attribution(m, b, Head("cross", layer, head), input=1)
        assert r.q_parts.shape[1] == 7 and r.k_parts.shape[1] == 30
        assert torch.allclose(torch.softmax(r.scores(), -1), cross[layer][0, head].double(), atol=1e-5)
        assert float((r.scores() - r.actual).abs().max()) < 1e-4
        k_names = [c.name for c in r.k_components]
        assert k_names[0] == "encoder/embed" and "encoder/1/2" in k_names and "encoder/mlp/1" in k_names
        assert k_names[-1] == "bias/in" and "decoder/0/0" in [c.name for c in r.components]
        if layer == 1:                                          # the score itself, from HF's projections
            want = (_heads(s["q"], 4)[0, head] * att.scaling) @ _heads(s["k"], 4)[0, head].T
            assert torch.allclose(r.scores(), want, atol=1e-4, rtol=0) and float(want.abs().max()) > 1.0
        summ = r.summary(3)
        assert set(summ.side) == {"query", "key"}
        assert summ[summ.side == "query"].via_query.sum() == pytest.approx(float(r.actual[:, 3].mean()), abs=1e-4)
        assert summ[summ.side == "key"].via_key.sum() == pytest.approx(float(r.actual[:, 3].mean()), abs=1e-4)
        t = r.table(6, 3, top=5)
        assert t.k_component.isin(k_names).all() and len(t) == 5


def test_qk_attribution_refuses_bad_inputs():
    hf = tiny_hf("whisper")
    m, b = wrap(hf), tiny_batch("whisper", hf)
    b.items = [{"index": 0}, {"index": 1}]
    with pytest.raises(UserError, match="out of range"):
        qk_attribution(m, b, Head("decoder", 1, 0), input=5)
    with pytest.raises(UserError, match="heads 0..3"):
        qk_attribution(m, b, Head("cross", 1, 4))


def test_qk_attribution_smollm2_sink_and_retrieval_heads(builtin):
    """A sink head (most attention on key 0) and the head attending most from the last token
    to the indirect object's name on an IOI prompt."""
    from workbench.capture import Pattern
    from workbench.tasks import build

    m = builtin("smollm2-135m")
    task = build(m, "ioi", n=1)
    b = task.clean
    tr = m.run(b, capture=[Pattern(None)])
    io = int(task.metric.target[0])
    io_pos = int((b.model_inputs["input_ids"][0] == io).nonzero()[0])
    sink = max(m.heads(), key=lambda h: float(tr.pattern[h.site_key][0, h.head, 2:, 0].mean()))
    retr = max((h for h in m.heads() if h.layer > 0),
               key=lambda h: float(tr.pattern[h.site_key][0, h.head, -1, io_pos]))
    for head, key_pos in ((sink, 0), (retr, io_pos)):
        r = qk_attribution(m, b, head)
        att = m.attention_module(head.stream, head.layer)
        want = _scores_llama_like(att, m.hf, b.model_inputs, head.head, 9, 3)
        assert torch.allclose(r.scores(), want, atol=1e-4, rtol=0), (head, float((r.scores() - want).abs().max()))
        s = r.summary(key_pos)
        assert s.via_query.sum() == pytest.approx(float(want[key_pos:, key_pos].mean()), abs=1e-4)
