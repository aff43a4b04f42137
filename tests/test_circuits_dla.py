"""Direct logit attribution: components sum to the logit (difference) the HF model computes,
and one head's share equals a hand computation from the HF weights."""
from __future__ import annotations

import pytest
import torch

from tiny import tiny_batch, tiny_hf
from workbench._types import Head
from workbench.circuits.dla import dla
from workbench.errors import UserError
from workbench.model import wrap
from workbench.patching.metrics import KL, LogitDiff, TokenLogProb


def _hf_logits(model, batch):
    with torch.no_grad():
        return model.hf(**batch.model_inputs).logits.double()


def _inputs_of(hf, batch, modules: dict) -> dict:
    """{name: first input of module} in one plain HF forward (the test's own hooks)."""
    seen = {}
    hooks = [mod.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].detach()))
             for name, mod in modules.items()]
    try:
        with torch.no_grad():
            hf(**batch.model_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _logit_diff(logits, pos, target, distractor):
    rows = torch.arange(len(pos))
    return logits[rows, pos, target] - logits[rows, pos, distractor]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_dla_sums_to_hf_logit_diff_tiny(family):
    hf = tiny_hf(family)
    m, b = wrap(hf), tiny_batch(family, hf)
    pos, tgt, dis = torch.tensor([10, 6]), torch.tensor([3, 5]), torch.tensor([7, 8])
    r = dla(m, b, LogitDiff(pos, tgt, dis))
    want = _logit_diff(_hf_logits(m, b), pos, tgt, dis)
    assert torch.allclose(r.values.sum(0), want, atol=1e-4, rtol=0)
    assert {c.kind for c in r.components} == {"embed", "head", "mlp", "bias"}
    assert sum(c.kind == "head" for c in r.components) == sum(s.n_heads for s in m.sites)
    # each head's split over key positions sums to its DLA; keys after the query get nothing
    for key, v in r.per_position.items():
        rows = [i for i, c in enumerate(r.components) if c.kind == "head" and (c.stream, c.layer) == key]
        assert torch.allclose(v.sum(-1), r.values[rows], atol=1e-6)
        assert float(v[:, 1, 7:].abs().max()) == 0.0                  # input 1 reads position 6 (causal)


def test_dla_whisper_decoder_tiny():
    hf = tiny_hf("whisper")
    m, b = wrap(hf), tiny_batch("whisper", hf)
    ids = b.model_inputs["decoder_input_ids"]
    t = ids.shape[1]
    pos = torch.arange(t - 1).expand(2, -1)
    r = dla(m, b, TokenLogProb(pos, ids[:, 1:]))
    lg = _hf_logits(m, b)
    want = lg[:, :-1].gather(2, ids[:, 1:, None])[..., 0].sum(1)         # logits of the next transcript tokens
    assert torch.allclose(r.values.sum(0), want, atol=1e-4, rtol=0)
    assert {c.stream for c in r.components if c.kind == "head"} == {"decoder", "cross"}


def test_dla_of_one_head_by_hand_gpt2():
    """Head 1/2 of tiny GPT-2: z from a hook on HF's c_proj input, W_O rows of c_proj, ln_f's
    scale from its own input, lm_head rows: no workbench code involved."""
    hf = tiny_hf("gpt2")
    m, b = wrap(hf), tiny_batch("gpt2", hf)
    seen = _inputs_of(hf, b, {"z": hf.transformer.h[1].attn.c_proj, "x": hf.transformer.ln_f})
    i, p, head, dh = 0, 10, 2, 8
    with torch.no_grad():
        z = seen["z"][i, p, head * dh:(head + 1) * dh].double()
        out = z @ hf.transformer.h[1].attn.c_proj.weight[head * dh:(head + 1) * dh].double()     # Conv1D: [in, out]
        x = seen["x"][i, p].double()
        ln = hf.transformer.ln_f
        sigma = torch.sqrt(x.var(unbiased=False) + ln.eps)
        y = (out - out.mean()) / sigma * ln.weight.double()
        u = hf.lm_head.weight[3].double() - hf.lm_head.weight[7].double()
        want = float(y @ u)
    r = dla(m, b, LogitDiff(torch.tensor([p, 6]), [3, 5], [7, 8]))
    row = [c.name for c in r.components].index("self/1/2")
    assert abs(float(r.values[row, i]) - want) < 1e-6
    assert abs(want) > 1e-4                                               # the check is not vacuous


def test_dla_refuses_metrics_and_models_it_cannot_attribute():
    hf = tiny_hf("gpt2")
    m, b = wrap(hf), tiny_batch("gpt2", hf)
    with pytest.raises(UserError, match="built from logits"):
        dla(m, b, KL(torch.tensor([10, 6])))
    bert = tiny_hf("bert")
    with pytest.raises(UserError, match="unembedding"):
        dla(wrap(bert), tiny_batch("bert", bert), LogitDiff(torch.tensor([1, 1]), [3, 5], [7, 8]))


def test_dla_sums_to_logit_diff_smollm2_ioi(builtin):
    from workbench.tasks import build

    m = builtin("smollm2-135m")
    task = build(m, "ioi", n=4)
    r = dla(m, task.clean, task.metric, per_position=False)
    met = task.metric
    want = _logit_diff(_hf_logits(m, task.clean), met.pos[:, 0], met.target, met.distractor)
    assert torch.allclose(r.values.sum(0), want, atol=1e-4, rtol=0)
    assert float(want.abs().min()) > 0.1


def test_dla_sums_to_transcript_logits_whisper_tiny_en(builtin):
    from workbench.tasks import build

    m = builtin("whisper-tiny.en")
    task = build(m, "speech", n=1)
    r = dla(m, task.clean, task.metric, per_position=False)
    met = task.metric
    lg = _hf_logits(m, task.clean)
    want = lg.gather(1, met.pos[..., None].expand(-1, -1, lg.shape[-1])).gather(2, met.targets[..., None])[..., 0]
    want = (want * met.weights.double()).sum(1)
    assert torch.allclose(r.values.sum(0), want, atol=1e-4, rtol=0)


def test_dla_patch_method_is_the_direct_path_effect_by_hand_gpt2():
    """Resample noising, direct path only: ((z'_h - z_h) W_O[h]) through ln_f (scale of the clean
    run) onto lm_head rows, from HF hooks; zero ablation gives minus the DLA."""
    from workbench.circuits.direct_patch import dla_patch

    hf = tiny_hf("gpt2")
    m, b, x = wrap(hf), tiny_batch("gpt2", hf, seed=1), tiny_batch("gpt2", hf, seed=2)
    x.model_inputs["attention_mask"] = b.model_inputs["attention_mask"]
    x.query_mask = b.query_mask
    b.items = x.items = [{"index": 0}, {"index": 1}]
    met = LogitDiff(torch.tensor([10, 6]), [3, 5], [7, 8])
    res = dla_patch(m, b, met, corrupt=x, ablation="resample", per_position=True)
    c_proj, ln = hf.transformer.h[1].attn.c_proj, hf.transformer.ln_f
    seen = _inputs_of(hf, b, {"clean": c_proj, "clean_x": ln})
    seen.update(_inputs_of(hf, x, {"corrupt": c_proj}))
    i, p, head, dh = 1, 6, 3, 8
    with torch.no_grad():
        dz = (seen["corrupt"] - seen["clean"])[i, p, head * dh:(head + 1) * dh].double()
        delta = dz @ c_proj.weight[head * dh:(head + 1) * dh].double()
        xs = seen["clean_x"][i, p].double()
        y = (delta - delta.mean()) / torch.sqrt(xs.var(unbiased=False) + ln.eps) * ln.weight.double()
        want = float(y @ (hf.lm_head.weight[5] - hf.lm_head.weight[8]).double())
    r = res.heads.index(Head("self", 1, 3))
    assert abs(float(res.per_input[r, i]) - want) < 1e-5 and abs(want) > 1e-4
    assert float(res.per_position[("self", 1)][3, i, p]) == pytest.approx(float(res.per_input[r, i]), abs=1e-6)
    zero = dla_patch(m, b, met, ablation="zero")
    d = dla(m, b, met, per_position=False)
    heads = [c for c in d.components if c.kind == "head"]
    vals = d.values[[i for i, c in enumerate(d.components) if c.kind == "head"]]
    order = [zero.heads.index(Head(c.stream, c.layer, c.head)) for c in heads]
    assert torch.allclose(zero.per_input[order].double(), -vals, atol=1e-5)
