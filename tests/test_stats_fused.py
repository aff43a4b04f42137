"""Stats(attn_output="fused"): the attention output from the statistics' own score blocks
(no SDPA call), and statistics-only traces that skip the logits nobody reads.

Stated tolerance (float32, tiny random models): every layer's output and the logits at real
(non-padding) positions within 1e-5 of the untraced HF model; statistics within 1e-5 of the
default (SDPA) path; argmax keys equal up to ties (the reference pattern at the fused argmax
is the row's max within 1e-6).
"""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from tiny import tiny_batch, tiny_hf, tiny_inputs
from workbench import _attention
from workbench.batch import Batch
from workbench.errors import UserError

# Llama with GQA, Gemma 2 (soft-capping, sliding window), GPT-2, BERT with padding,
# Qwen2 (sliding window on one layer), Whisper (cross attention, encoder without a mask)
FAMILIES = ("llama", "gemma2", "gpt2", "bert", "qwen2", "whisper")
FUSED = wb.Stats(attn_output="fused")
TOL = 1e-5


def _real(family, inputs, stream="self"):
    """bool [batch, pos] real positions of a stream (all for Whisper)."""
    mask = inputs.get("attention_mask")
    return None if mask is None or stream != "self" else mask.bool()


def _hidden(out):
    if hasattr(out, "decoder_hidden_states"):
        return list(out.encoder_hidden_states) + list(out.decoder_hidden_states)
    return list(out.hidden_states)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_outputs_equal_untraced_model_within_tolerance(family):
    plain = tiny_hf(family)                          # HF default attention (SDPA; Gemma 2: eager), unwrapped
    model = wb.wrap(tiny_hf(family))
    inputs = {**tiny_inputs(family, plain), "output_hidden_states": True}
    with torch.no_grad():
        ref = plain(**inputs)
    got = model.run(Batch(inputs, tiny_batch(family, plain).query_mask), capture=[FUSED], logits=True).output
    real = _real(family, inputs)
    pairs = list(zip(_hidden(got), _hidden(ref)))
    key = "logits" if hasattr(ref, "logits") else "last_hidden_state"
    pairs.append((getattr(got, key), getattr(ref, key)))
    assert len(pairs) >= 4
    worst = 0.0
    for a, b in pairs:
        assert a.shape == b.shape
        d = (a - b).abs()
        if real is not None and d.shape[1] == real.shape[1]:
            d = d[real]                               # padded positions may see no key: z = 0 there
        worst = max(worst, d.max().item())
    assert worst < TOL, worst
    if family == "llama":                            # and not bit for bit: the option does change the sums
        assert not torch.equal(got.logits, ref.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_statistics_equal_sdpa_path_within_tolerance(family):
    model = wb.wrap(tiny_hf(family))
    batch = tiny_batch(family, model.hf)
    want = model.run(batch, capture=[wb.Stats()]).stats
    got = model.run(batch, capture=[FUSED]).stats
    pattern = model.run(batch, capture=[wb.Pattern()]).pattern
    assert got.keys() == want.keys() == pattern.keys()
    for key, w in want.items():
        g, p = got[key], pattern[key]
        rows = batch.query_mask.get(key[0]) if key[0] == "self" else None
        rows = torch.ones(p.shape[0], p.shape[2], dtype=torch.bool) if rows is None else rows
        assert torch.equal(g.n_keys, w.n_keys) and torch.equal(g.col_count, w.col_count), key
        torch.testing.assert_close(g.col_sum, w.col_sum, atol=TOL, rtol=0, msg=str(key))
        r = rows[:, None].expand_as(w.row_entropy)
        torch.testing.assert_close(g.row_entropy[r], w.row_entropy[r], atol=TOL, rtol=0, msg=str(key))
        at = p.gather(-1, g.row_max_pos[..., None])[..., 0]
        assert (at[r] >= p.amax(-1)[r] - 1e-6).all(), key


def test_fused_skips_sdpa_only_at_statistics_only_sites(monkeypatch):
    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    calls = []
    real = _attention.sdpa_attention_forward
    monkeypatch.setattr(_attention, "sdpa_attention_forward", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    model.run(batch, capture=[wb.Stats()])
    assert len(calls) == 2                           # default: SDPA at both layers
    calls.clear()
    model.run(batch, capture=[FUSED])
    assert calls == []
    model.run(batch, capture=[FUSED, wb.Pattern(("self", 1))])
    assert calls == [model.attention_module("self", 1)]    # a Pattern site keeps SDPA
    calls.clear()
    model.run(batch, capture=[FUSED], edits=[wb.Ablate(wb.Head("self", 0, 1))])
    assert calls == [model.attention_module("self", 0)]    # so does an edited site
    calls.clear()
    model.run(batch, capture=[FUSED, wb.Stats(("self", 0))])  # "sdpa" asked for layer 0 too: exact wins
    assert calls == [model.attention_module("self", 0)]


def test_fused_z_is_what_the_output_projection_receives():
    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    seen = {}
    o = model.out_proj("self", 1)
    hook = o.register_forward_pre_hook(lambda mod, args: seen.__setitem__("z", args[0].detach()))
    try:
        tr = model.run(batch, capture=[FUSED, wb.Z(("self", 1))])
    finally:
        hook.remove()
    z = tr.z[("self", 1)]
    assert torch.equal(z.reshape(*z.shape[:2], -1), seen["z"])
    exact = model.run(batch, capture=[wb.Z(("self", 1))]).z[("self", 1)]
    real = batch.query_mask["self"]
    assert (z - exact)[real].abs().max() < TOL


def test_bad_attn_output_is_a_user_error():
    with pytest.raises(UserError, match="attn_output"):
        wb.Stats(attn_output="flash")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_statistics_only_trace_skips_the_logits(family):
    model = wb.wrap(tiny_hf(family))
    batch = tiny_batch(family, model.hf)
    full = model.run(batch, capture=[wb.Stats()], logits=True)
    short = model.run(batch, capture=[wb.Stats()])
    b, t, v = full.logits.shape
    assert t == 11 and short.logits.shape == (b, 1, v)
    torch.testing.assert_close(short.logits[:, 0], full.logits[:, -1], atol=1e-6, rtol=0)   # a 1-row matmul
    for key, st in full.stats.items():                 # the statistics are the same, bit for bit
        assert all(torch.equal(x, getattr(short.stats[key], n)) for n, x in st.to_dict().items()), key
    # logits are kept where something else is captured or edited, or when asked for
    assert model.run(batch, capture=[wb.Pattern()]).logits.shape[1] == t
    assert model.run(batch, capture=[wb.Stats(), wb.Z()]).logits.shape[1] == t
    assert model.run(batch, capture=[wb.Stats()], edits=[wb.Ablate(wb.Head("self", 0, 0))]).logits.shape[1] == t
    assert model.run(batch).logits.shape[1] == t
    assert model.run(batch, capture=[wb.Pattern()], logits=False).logits.shape[1] == 1
    # nor a KV cache (HF builds one by default: every layer's keys and values), unless asked for
    assert full.output.past_key_values is not None and short.output.past_key_values is None
    asked = tiny_batch(family, model.hf)
    asked.model_inputs["use_cache"] = True
    assert model.run(asked, capture=[wb.Stats()]).output.past_key_values is not None


def test_logits_argument_leaves_models_without_logits_to_keep_alone():
    model = wb.wrap(tiny_hf("whisper"))                # WhisperForConditionalGeneration has no logits_to_keep
    batch = tiny_batch("whisper", model.hf)
    assert model.run(batch, capture=[wb.Stats()]).logits.shape == model.run(batch).logits.shape


def test_fused_keeps_sdpa_when_gradients_are_recorded():
    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    ref = model.run(batch, capture=[wb.Z()], logits=True).logits
    tr = model.run(batch, capture=[FUSED, wb.Z(grad=True)], grad=True)
    assert torch.equal(tr.logits.detach(), ref)          # SDPA, bit for bit
    (g,) = torch.autograd.grad(tr.logits[..., 3].sum(), [tr.z[("self", 0)]])
    assert torch.isfinite(g).all()
