"""Family records (``workbench.adapters``): the components they name are the ones the HF
model uses, the attention keywords are honoured or refused, and suffix replay on a KV
cache is exact where a family says so. References share no code with the accessors:
HF's own forward, an attention function that only records its arguments, hand-written
softmax."""
from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

import workbench as wb
from tiny import FAMILIES, TEXT_CAUSAL, scale_weights, tiny_batch, tiny_hf, tiny_inputs
from workbench import _attention
from workbench.adapters import FAMILIES as RECORDS
from workbench.batch import Batch
from workbench.patching import metrics, patch

_SEEN: dict = {}


def _recording(module, query, key, value, attention_mask, **kw):
    _SEEN[id(module)] = (query.detach(), key.detach(), value.detach())
    kw.pop("softcap", None)
    kw.pop("sliding_window", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)


AttentionInterface.register("h5b_recording", _recording)
ALL_MASK_ATTENTION_FUNCTIONS.register("h5b_recording", sdpa_mask)


def test_every_tested_family_has_a_record():
    model_types = {t for f in RECORDS for t in f.model_types}
    for family in FAMILIES:
        assert tiny_hf(family).config.model_type in model_types, family


@pytest.mark.parametrize("family", FAMILIES)
def test_qkv_weights_reproduce_the_projections(family):
    """V = x W_V + b_V at every position; Q and K at position 0, where rotary is the
    identity (families that normalise q and k, Qwen3 / OLMo 2 / Gemma 3, check V only)."""
    model = wb.wrap(tiny_hf(family))
    rec = tiny_hf(family, attn="h5b_recording")
    inputs = tiny_inputs(family, rec)
    x_in = {}
    hooks = []
    for site in model.sites:
        if site.stream == "cross":
            continue
        mod = rec.get_submodule(_name_of(model.hf, model.attention_module(*site.key)))
        hooks.append(mod.register_forward_pre_hook(
            lambda m, a, kw, k=site.key: x_in.__setitem__(k, (a[0] if a else kw["hidden_states"]).detach()),
            with_kwargs=True))
    try:
        with torch.no_grad():
            rec(**inputs)
    finally:
        for h in hooks:
            h.remove()
    for key, x in x_in.items():
        site = model.site(*key)
        q, k, v = _SEEN[id(rec.get_submodule(_name_of(model.hf, model.attention_module(*key))))]
        checks = [("v", v, slice(None))]
        if not hasattr(model.attention_module(*key), "q_norm"):
            checks += [("q", q, slice(0, 1)), ("k", k, slice(0, 1))]
        for which, got, pos in checks:
            w = getattr(model, f"W_{which.upper()}")(*key)
            b = getattr(model, f"b_{which.upper()}")(*key)
            want = torch.einsum("bpm,hmd->bhpd", x[:, pos], w)
            if b is not None:
                want = want + b[None, :, None]
            n = site.n_heads if which == "q" else site.n_kv_heads
            assert w.shape == (n, x.shape[-1], site.d_head), (key, which)
            torch.testing.assert_close(want, got[:, :, pos], atol=1e-5, rtol=1e-5, msg=f"{family} {key} {which}")


def _name_of(root, module) -> str:
    return next(n for n, m in root.named_modules() if m is module)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f in TEXT_CAUSAL or f == "whisper"])
def test_final_norm_and_unembedding_give_the_logits(family):
    """logits_from_resid(last layer's output) equals the model's logits (Gemma: final soft-cap)."""
    model = wb.wrap(tiny_hf(family))
    stack = model.stacks[-1]
    seen = {}
    h = stack.layers[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        out = model.run(Batch(tiny_inputs(family, model.hf))).output
    finally:
        h.remove()
    assert model.final_norm is stack.final_norm is not None
    with torch.no_grad():
        torch.testing.assert_close(model.logits_from_resid(seen["h"]), out.logits, atol=1e-5, rtol=1e-5)
    assert model.W_U.shape == (model.hf.config.hidden_size if family != "whisper" else 32, out.logits.shape[-1])


def test_stacks_hold_every_site_once():
    model = wb.wrap(tiny_hf("whisper"))
    assert [s.streams for s in model.stacks] == [("encoder",), ("decoder", "cross")]
    for site in model.sites:
        stack, j = model.stack_of(*site.key)
        assert site.stream in stack.streams and j == site.layer
        assert any(m is model.attention_module(*site.key) for m in stack.layers[j].modules())
        assert any(m is model.out_proj(*site.key) for m in stack.layers[j].modules())


def test_z_grad_is_the_gradient_at_the_output_projection():
    """dM/dz from a Z(grad=True) capture equals the gradient of the output projection's input
    (read with a hook here, independently of the capture)."""
    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    xs = {}
    hook = model.out_proj("self", 1).register_forward_pre_hook(lambda m, a: xs.__setitem__("x", a[0]))
    try:
        trace = model.run(batch, capture=[wb.Z(("self", 1), grad=True)], grad=True)
    finally:
        hook.remove()
    total = trace.logits[:, -1, 5].sum()
    gz, gx = torch.autograd.grad(total, [trace.z[("self", 1)], xs["x"]])
    assert gz.abs().max() > 0
    torch.testing.assert_close(gz.reshape(gx.shape), gx)
    with pytest.raises(ValueError, match="grad=True"):
        model.run(batch, capture=[wb.Z(("self", 1), grad=True)])


# -- keywords of the attention function ------------------------------------------------------

def _hand_probs(q, k, scaling, allowed, softcap=None, sinks=None):
    s = (q @ k.transpose(-1, -2)) * scaling
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.reshape(1, -1, 1, 1).expand(*s.shape[:3], 1)], -1)
    p = torch.softmax(s, -1)
    return p[..., :-1] if sinks is not None else p


@pytest.mark.parametrize("softcap,window,sinks", [(None, None, None), (1.5, None, None), (None, 3, None),
                                                  (None, None, True), (2.0, 2, True)])
def test_attention_probs_honour_softcap_window_and_sinks(softcap, window, sinks):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8, generator=g) * 3, torch.randn(2, 2, 6, 8, generator=g) * 3
    s = torch.randn(4, generator=g) if sinks else None
    call = _attention.AttnCall(0.3, True, softcap, window, s)
    got, allowed = _attention.attention_probs(torch.nn.Module(), q, k, None, call)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    want_allowed = (j <= i) & ((i - j < window) if window else True)
    want = _hand_probs(q, k.repeat_interleave(2, 1), 0.3, want_allowed, softcap, s)
    torch.testing.assert_close(got, want)
    assert torch.equal(allowed[0, 0], want_allowed)


def test_unknown_attention_keyword_raises_naming_it():
    model = wb.wrap(tiny_hf("llama"))
    attn = model.attention_module("self", 0)
    q = torch.zeros(1, 4, 3, 8)
    kv = torch.zeros(1, 2, 3, 8)
    with pytest.raises(_attention.UnsupportedAttentionError, match="'alibi_slopes'"):
        _attention.workbench_attention(attn, q, kv, kv, None, scaling=1.0, alibi_slopes=torch.ones(4))
    with pytest.raises(_attention.UnsupportedAttentionError, match="'cu_seq_lens_q'"):
        _attention.workbench_attention(attn, q, kv, kv, None, cu_seq_lens_q=torch.tensor([0, 3]))
    out, _ = _attention.workbench_attention(attn, q, kv, kv, None, position_ids=torch.arange(3)[None], use_cache=False)
    assert out.shape == (1, 3, 4, 8)


def test_traced_dropout_is_refused():
    model = wb.wrap(tiny_hf("llama"))
    for site in model.sites:
        model.attention_module(*site.key).attention_dropout = 0.5
    model.hf.train()
    try:
        with pytest.raises(ValueError, match="dropout"):
            model.run(tiny_batch("llama", model.hf), capture=[wb.Pattern()])
    finally:
        model.hf.eval()


# -- suffix replay on a KV-cache prefix -------------------------------------------------------

@pytest.mark.parametrize("family", TEXT_CAUSAL)
def test_suffix_replay_is_exact(family, monkeypatch):
    """Clean and corrupt share their first 6 tokens, so the fast path replays only the
    suffix on the clean KV cache (sliding windows, soft-caps included) and must equal the
    naive loop."""
    hf = tiny_hf(family)
    scale_weights(hf, 4.0, positions=False)   # effects far above round-off
    model = wb.wrap(hf)
    assert model.family.kv_suffix_exact
    a, b = tiny_inputs(family, hf, seed=1), tiny_inputs(family, hf, seed=2)
    b["input_ids"][:, :6] = a["input_ids"][:, :6]
    b["attention_mask"] = a["attention_mask"]
    qm = {"self": a["attention_mask"].bool()}
    clean, corrupt = Batch(a, qm, [{}, {}]), Batch(b, qm, [{}, {}])
    met = metrics.LogitDiff(metrics.last_positions(clean), [3, 3], [5, 5])
    from workbench.patching import _resume

    shells = []
    real = _resume.Resumable._shell
    monkeypatch.setattr(_resume.Resumable, "_shell", lambda self, p: shells.append(p) or real(self, p))
    fast = patch(model, clean, met, corrupt=corrupt, method="exact")
    naive = patch(model, clean, met, corrupt=corrupt, method="naive")
    assert shells and min(shells) == 6
    assert naive.per_input.abs().max() > 1e-4
    torch.testing.assert_close(fast.per_input, naive.per_input, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "olmo2", "gemma2", "gpt2", "bert", "whisper", "wav2vec2"])
def test_declared_norms_are_the_ones_the_forward_uses(family):
    """The attention reads the declared input norm's output (or the layer input itself), and
    the declared post-norms / output norm are called in that layer (recorded with hooks)."""
    model = wb.wrap(tiny_hf(family))
    seen, hooks = {}, []
    for site in model.sites:
        attn = model.attention_module(*site.key)
        hooks.append(attn.register_forward_pre_hook(
            lambda m, a, kw, k=site.key: seen.__setitem__(("attn", k), a[0] if a else kw["hidden_states"]),
            with_kwargs=True))
        stack, j = model.stack_of(*site.key)
        hooks.append(stack.layers[j].register_forward_pre_hook(
            lambda m, a, kw, k=site.key: seen.__setitem__(("layer", k), a[0] if a else kw["hidden_states"]),
            with_kwargs=True))
        norm = model.attn_in_norm(*site.key)
        if norm is not None:
            hooks.append(norm.register_forward_hook(lambda m, a, o, k=site.key: seen.__setitem__(("norm", k), o)))
        for n in [model.attn_out_norm(*site.key)] + model.post_norms(*site.key):
            if n is not None:
                hooks.append(n.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(("called", id(n)), True)))
    try:
        model.run(Batch(tiny_inputs(family, model.hf)))
    finally:
        for h in hooks:
            h.remove()
    for site in model.sites:
        if site.stream == "cross":
            continue
        src = seen[("norm", site.key)] if model.attn_in_norm(*site.key) is not None else seen[("layer", site.key)]
        assert torch.equal(seen[("attn", site.key)], src), (family, site.key)
        for n in [model.attn_out_norm(*site.key)] + model.post_norms(*site.key):
            if n is not None:
                assert seen.get(("called", id(n))), (family, site.key)
    expect_post = {"bert": 2, "wav2vec2": 2}.get(family, 0)
    assert len(model.post_norms(*model.sites[0].key)) == expect_post
    assert (model.attn_out_norm(*model.sites[0].key) is not None) == (family in ("olmo2", "gemma2"))


@pytest.mark.parametrize("family", ["gemma3", "gpt_neox", "roberta", "hubert", "whisper"])
def test_a_saved_folder_loads_as_the_family_record_says(family, tmp_path):
    """``workbench.load`` of a local folder instantiates the record's HF class and gives the
    saved model's outputs."""
    hf = tiny_hf(family)
    hf.save_pretrained(tmp_path / family)
    model = wb.load(str(tmp_path / family))
    assert type(model.hf) is type(hf)
    assert model.tokenizer is None and model.feature_extractor is None    # none saved: tolerated
    inputs = tiny_inputs(family, hf)
    with torch.no_grad():
        want = hf(**inputs)
    got = model.run(Batch(inputs)).output
    key = "logits" if hasattr(want, "logits") else "last_hidden_state"
    torch.testing.assert_close(getattr(got, key), getattr(want, key), atol=0, rtol=0)
