"""The instrument must not distort what it measures: tiny random models of every family."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from tiny import FAMILIES, tiny_batch, tiny_hf, tiny_inputs
from workbench import _attention
from workbench.batch import Batch
from workbench.capture import reduce_pattern


def _eager_patterns(family, inputs):
    eager = tiny_hf(family, "eager")
    with torch.no_grad():
        out = eager(**inputs, output_attentions=True)
    if family == "whisper":
        return {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
    return {"self": out.attentions}


def _query_rows(inputs, stream, n):
    mask = inputs.get("attention_mask")
    if mask is None or stream != "self":
        return torch.ones(n[0], n[1], dtype=torch.bool)
    return mask.bool()


@pytest.mark.parametrize("family", FAMILIES)
def test_patterns_equal_hf_eager(family):
    model = wb.wrap(tiny_hf(family))
    inputs = tiny_inputs(family, model.hf)
    ref = _eager_patterns(family, inputs)
    trace = model.run(Batch(inputs), capture=[wb.Pattern()])
    assert set(trace.pattern) == {s.key for s in model.sites}
    for (stream, layer), pattern in trace.pattern.items():
        expected = ref[stream][layer]
        assert pattern.shape == expected.shape
        rows = _query_rows(inputs, stream, pattern.shape[:1] + pattern.shape[2:3])
        diff = (pattern - expected).abs()[rows[:, None, :, None].expand_as(pattern)]
        assert diff.max().item() < 1e-6, (stream, layer)
        assert torch.allclose(pattern.sum(-1)[rows[:, None].expand(-1, pattern.shape[1], -1)], torch.tensor(1.0))


@pytest.mark.parametrize("family", FAMILIES)
def test_tracing_leaves_outputs_unchanged(family):
    plain = tiny_hf(family)                     # HF's default (SDPA; Gemma 2: eager), never wrapped
    model = wb.wrap(tiny_hf(family))
    inputs = tiny_inputs(family, plain)
    with torch.no_grad():
        ref = plain(**inputs)
    trace = model.run(Batch(inputs), capture=[wb.Pattern(), wb.Z(), wb.Stats()])
    key = "logits" if hasattr(ref, "logits") else "last_hidden_state"
    assert torch.equal(getattr(trace.output, key), getattr(ref, key))


@pytest.mark.parametrize("family", FAMILIES)
def test_z_is_what_the_output_projection_receives(family):
    model = wb.wrap(tiny_hf(family))
    inputs = tiny_inputs(family, model.hf)
    seen = {}
    handles = [o.register_forward_pre_hook(lambda mod, args, k=k: seen.__setitem__(k, args[0].detach()))
               for k, o in ((s.key, model.out_proj(*s.key)) for s in model.sites)]
    try:
        trace = model.run(Batch(inputs), capture=[wb.Z()])
    finally:
        for h in handles:
            h.remove()
    for site in model.sites:
        z = trace.z[site.key]
        assert z.shape[2:] == (site.n_heads, site.d_head)
        assert torch.equal(z.reshape(*z.shape[:2], -1), seen[site.key].reshape(*z.shape[:2], -1))


@pytest.mark.parametrize("family", FAMILIES)
def test_stats_match_reduced_eager_patterns(family):
    model = wb.wrap(tiny_hf(family))
    inputs = tiny_inputs(family, model.hf)
    ref = _eager_patterns(family, inputs)
    trace = model.run(tiny_batch(family, model.hf), capture=[wb.Stats()])
    for (stream, layer), st in trace.stats.items():
        p = ref[stream][layer]
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        rows = _query_rows(inputs, stream, p.shape[:1] + p.shape[2:3])
        assert torch.allclose(st.row_entropy[rows[:, None].expand_as(ent)], ent[rows[:, None].expand_as(ent)], atol=1e-5)
        assert torch.allclose(st.col_sum, torch.einsum("bhqk->bhk", p * rows[:, None, :, None]), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocked_stats_equal_one_block(family, monkeypatch):
    """Statistics computed one query row at a time (``STATS_BLOCK_BYTES`` = 1) equal the
    statistics of the whole pattern at once, every field (padding, causal offsets, cross)."""
    model = wb.wrap(tiny_hf(family))
    batch = tiny_batch(family, model.hf)
    whole = model.run(batch, capture=[wb.Stats()]).stats
    monkeypatch.setattr(_attention, "STATS_BLOCK_BYTES", 1)
    assert len(_attention.stats_blocks(torch.zeros(2, 4, 7, 8), 16)) == 7
    rows = model.run(batch, capture=[wb.Stats()]).stats
    assert rows.keys() == whole.keys()
    for key, st in whole.items():
        for name, want in st.to_dict().items():
            got = getattr(rows[key], name)
            assert got.shape == want.shape, (key, name)
            if want.dtype.is_floating_point:
                assert torch.allclose(got, want, atol=1e-6, rtol=1e-6), (key, name)
            else:
                assert torch.equal(got, want), (key, name)


def test_ablating_no_head_changes_nothing():
    model = wb.wrap(tiny_hf("llama"))
    batch = Batch(tiny_inputs("llama", model.hf))
    a = model.run(batch)
    b = model.run(batch, edits=[wb.Ablate((), kind="zero")])
    assert torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("family", ["gpt2", "llama", "whisper"])
def test_ablating_one_head_acts_only_through_that_head(family):
    model = wb.wrap(tiny_hf(family))
    batch = Batch(tiny_inputs(family, model.hf))
    site = model.sites[-1] if family != "whisper" else model.site("decoder", 1)
    head = wb.Head(site.stream, site.layer, 1)
    attn_out = {}
    o_proj = model.out_proj(*site.key)
    hook = o_proj.register_forward_hook(lambda m, a, o: attn_out.__setitem__(len(attn_out), o.detach()))
    try:
        clean = model.run(batch, capture=[wb.Z(), wb.Pattern()])
        edited = model.run(batch, capture=[wb.Z(), wb.Pattern()], edits=[wb.Ablate(head, kind="zero")])
    finally:
        hook.remove()
    # every other head's z and every pattern up to and including this layer are untouched
    zc, ze = clean.z[site.key], edited.z[site.key]
    others = [h for h in range(site.n_heads) if h != 1]
    assert torch.equal(zc[:, :, others], ze[:, :, others])
    assert torch.all(ze[:, :, 1] == 0)
    for key, p in clean.pattern.items():
        if key[0] == site.stream and key[1] <= site.layer or key[0] == "encoder":
            assert torch.equal(p, edited.pattern[key]), key
    # the attention output changes by exactly -z_h W_O[h]
    w = model.W_O(site.stream, site.layer)[1]
    delta = attn_out[1] - attn_out[0]
    assert torch.allclose(delta, -(zc[:, :, 1] @ w), atol=1e-5)
    assert not torch.equal(clean.output.logits, edited.output.logits)


def test_mean_ablation_uses_mean_z_and_setz_patches():
    model = wb.wrap(tiny_hf("llama"))
    batch = Batch(tiny_inputs("llama", model.hf))
    head = wb.Head("self", 0, 2)
    means = model.mean_z(batch, [head])
    tr = model.run(batch, capture=[wb.Z()], edits=[wb.Ablate(head, kind="mean")])
    assert torch.allclose(tr.z[("self", 0)][:, :, 2], means[head].expand(2, 11, -1))
    other = Batch(tiny_inputs("llama", model.hf, seed=7))
    donor = model.run(other, capture=[wb.Z()]).z[("self", 0)][:, :, 2]
    patched = model.run(batch, capture=[wb.Z()], edits=[wb.SetZ(head, donor)])
    assert torch.equal(patched.z[("self", 0)][:, :, 2], donor)


def test_uniform_ablation_equals_mean_of_visible_values():
    model = wb.wrap(tiny_hf("gpt2"))
    ids = torch.randint(0, 97, (1, 6))
    head = wb.Head("self", 0, 0)
    v_seen = {}
    attn = model.attention_module("self", 0)
    hook = attn.c_attn.register_forward_hook(lambda m, a, o: v_seen.__setitem__("qkv", o.detach()))
    try:
        tr = model.run(Batch({"input_ids": ids}), capture=[wb.Z()], edits=[wb.Ablate(head, kind="uniform")])
    finally:
        hook.remove()
    v = v_seen["qkv"][0, :, 64:][:, :8]                     # head 0's values [pos, d_head]
    expected = torch.cumsum(v, 0) / torch.arange(1, 7)[:, None]
    assert torch.allclose(tr.z[("self", 0)][0, :, 0], expected, atol=1e-5)


def test_every_requested_site_must_fire():
    model = wb.wrap(tiny_hf("llama"))
    batch = Batch(tiny_inputs("llama", model.hf))
    attn = model.attention_module("self", 1)
    original = attn.forward
    attn.forward = lambda hidden_states, *a, **k: (torch.zeros_like(hidden_states), None)
    try:
        with pytest.raises(wb.SiteNotFiredError, match="self/1"):
            model.run(batch, capture=[wb.Pattern([("self", 0), ("self", 1)])])
        model.run(batch, capture=[wb.Pattern([("self", 0)])])       # the site that fires is fine
    finally:
        attn.forward = original


def test_trace_state_is_cleared_after_an_error():
    model = wb.wrap(tiny_hf("gpt2"))
    batch = Batch(tiny_inputs("gpt2", model.hf))
    ref = model.run(batch).logits
    hook = model.hf.transformer.h[1].register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model.run(batch, edits=[wb.Ablate(wb.Head("self", 0, 0))])
    finally:
        hook.remove()
    assert _attention.ACTIVE.get() is None
    assert torch.equal(model.run(batch).logits, ref)


def test_bad_selectors_and_heads_raise_clear_errors():
    model = wb.wrap(tiny_hf("llama"))
    batch = Batch(tiny_inputs("llama", model.hf))
    with pytest.raises(ValueError, match="no stream 'cross'"):
        model.run(batch, capture=[wb.Pattern("cross")])
    with pytest.raises(ValueError, match="no site"):
        model.run(batch, capture=[wb.Z([("self", 9)])])
    with pytest.raises(ValueError, match="heads 0..3"):
        model.run(batch, edits=[wb.Ablate(wb.Head("self", 0, 4))])
    with pytest.raises(ValueError, match="unknown ablation kind"):
        wb.Ablate(wb.Head("self", 0, 0), kind="resample-ish")


def test_unsupported_architecture_lists_families():
    import transformers as tf

    hf = tf.T5Model(tf.T5Config(num_layers=1, d_model=16, d_kv=4, num_heads=2, d_ff=16, vocab_size=10))
    with pytest.raises(wb.UnsupportedModelError, match="llama-like.*gpt2.*bert.*whisper.*wav2vec2.*hubert"):
        wb.wrap(hf)


def test_reduce_pattern_alpha_matches_brute_force():
    torch.manual_seed(0)
    t = 7
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None]
    scores = torch.randn(2, 3, t, t).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(scores, -1)
    st = reduce_pattern(p, allowed, None)
    for k in range(t):
        brute = p[:, :, k:, k].sum(-1) / (t - k)
        assert torch.allclose(st.col_sum[:, :, k] / st.col_count[:, None, k], brute, atol=1e-6)
