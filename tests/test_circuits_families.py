"""Every family is one declaration: the circuit analyses read norms, post-norms and rotary from
the family records (``adapters.FAMILIES``), so each tiny causal family either decomposes
exactly (DLA sums to HF's logit difference; QK contributions give HF eager's attention
pattern) or is refused with one line saying why."""
from __future__ import annotations

import pytest
import torch

from tiny import TEXT_CAUSAL, scale_weights, tiny_batch, tiny_hf
from workbench._types import Head
from workbench.circuits.dla import dla
from workbench.circuits.qk_attribution import qk_attribution
from workbench.errors import UserError
from workbench.model import wrap
from workbench.patching.metrics import LogitDiff

OUT_NORM = {"gemma2", "gemma3", "olmo2"}           # a norm on the attention output: refused


def _scaled(family, attn=None):
    hf = tiny_hf(family, attn=attn)
    scale_weights(hf, 5.0)
    return hf


@pytest.mark.parametrize("family", TEXT_CAUSAL)
def test_dla_every_causal_family_sums_or_is_refused(family):
    hf = _scaled(family)
    m, b = wrap(hf), tiny_batch(family, hf)
    pos, tgt, dis = torch.tensor([10, 6]), torch.tensor([3, 5]), torch.tensor([7, 8])
    if family in OUT_NORM:
        with pytest.raises(UserError, match="attention output"):
            dla(m, b, LogitDiff(pos, tgt, dis))
        return
    r = dla(m, b, LogitDiff(pos, tgt, dis), per_position=False)
    with torch.no_grad():
        lg = hf(**b.model_inputs).logits.double()
    want = lg[[0, 1], pos, tgt] - lg[[0, 1], pos, dis]
    assert torch.allclose(r.values.sum(0), want, atol=1e-4, rtol=0), (r.values.sum(0), want)
    assert float(want.abs().max()) > 0.1


@pytest.mark.parametrize("family", ["gpt_neox", "phi3", "llama"])
def test_qk_attribution_gives_hf_eager_pattern_partial_rotary(family):
    """GPT-NeoX rotates half of each head (rotary_pct 0.5), Phi-3 has a fused qkv:
    softmax of the summed contributions (causal mask) equals HF eager's attention weights."""
    ref = _scaled(family, attn="eager")                                   # a separate, unwrapped copy
    m = wrap(_scaled(family))
    b = tiny_batch(family, ref)
    b.items = [{"index": 0}, {"index": 1}]
    with torch.no_grad():
        att = ref(**{k: v[:1] for k, v in b.model_inputs.items()}, output_attentions=True).attentions
    for layer, head in ((0, 1), (1, 2)):
        r = qk_attribution(m, b, Head("self", layer, head), input=0)
        s = r.scores()
        t = s.shape[0]
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        want = att[layer][0, head].double()
        assert torch.allclose(torch.softmax(s, -1), want, atol=1e-5), (family, layer, head)
        assert float((r.scores() - r.actual).abs().max()) < 1e-4


@pytest.mark.parametrize("family, head, needle", [("qwen3", Head("self", 0, 1), "q/k norms"),
                                                  ("smollm3", Head("self", 1, 1), "rotary off")])
def test_qk_attribution_refuses_what_the_record_does_not_declare(family, head, needle):
    hf = _scaled(family)
    m, b = wrap(hf), tiny_batch(family, hf)
    b.items = [{"index": 0}, {"index": 1}]
    with pytest.raises(UserError, match=needle):
        qk_attribution(m, b, head)
