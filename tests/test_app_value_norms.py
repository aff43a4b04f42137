"""Value-output norms saved next to kept patterns (``workbench/_value_norms.py``) equal a hand
computation from the HF weights: the v projection's output for each key, sliced to the head's
KV head, times that head's slice of the output projection (Kobayashi et al. 2020's
``||f_h(x_j)||``), for a separate-projection GQA model (SmolLM2, real weights), GPT-2's fused
Conv1D, GPT-NeoX's fused-per-head projection and Whisper's cross-attention (keys: encoder
states); every other family gives one positive norm per head and real key."""
from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, tiny_batch, tiny_hf

import workbench as wb
from workbench._value_norms import value_norm_key, value_norms


def _hand(v: torch.Tensor, w_out: torch.Tensor, n_heads: int, n_kv: int) -> torch.Tensor:
    """v [key, n_kv * d] (v projection output), w_out [d_model, n_heads * d] (nn.Linear layout)
    -> [head, key] norms of v_kv(h) @ w_out[:, h].T."""
    d = w_out.shape[1] // n_heads
    rows = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        rows.append((v[:, kv * d:(kv + 1) * d] @ w_out[:, h * d:(h + 1) * d].T).norm(dim=-1))
    return torch.stack(rows)


def test_smollm2_value_norms_match_hf_weights(builtin):
    model = builtin("smollm2-135m")
    batch = model.prepare(["When Mary and John went to the store, John gave a drink to", "Hi there"])
    got = value_norms(model, batch)
    mask = batch.query_mask["self"]
    with torch.no_grad():
        hs = model.hf(**batch.model_inputs, output_hidden_states=True).hidden_states
        for layer in (0, 17, 29):
            block = model.hf.model.layers[layer]
            v = block.self_attn.v_proj(block.input_layernorm(hs[layer]))
            for i in range(2):
                k = int(mask[i].sum())
                want = _hand(v[i, :k], block.self_attn.o_proj.weight, 9, 3)
                have = got[value_norm_key("self", layer, i)]
                assert have.shape == (9, k) and have.dtype == torch.float32
                torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)
    assert len(got) == 30 * 2


def test_gpt2_fused_conv1d_value_norms():
    hf = tiny_hf("gpt2")
    model = wb.wrap(hf)
    batch = tiny_batch("gpt2", hf)
    got = value_norms(model, batch)
    with torch.no_grad():
        hs = hf(**batch.model_inputs, output_hidden_states=True).hidden_states
        for layer in range(2):
            attn = hf.transformer.h[layer].attn
            qkv = attn.c_attn(hf.transformer.h[layer].ln_1(hs[layer]))      # Conv1D: [.., 3 * 32]
            v = qkv[..., 64:96]
            for i, k in ((0, 11), (1, 7)):                                   # input 1 is padded after 7
                want = _hand(v[i, :k], attn.c_proj.weight.T, 4, 4)           # Conv1D weight is [in, out]
                torch.testing.assert_close(got[value_norm_key("self", layer, i)], want, rtol=1e-4, atol=1e-5)


def test_whisper_cross_attention_value_norms_read_encoder_states():
    hf = tiny_hf("whisper")
    model = wb.wrap(hf)
    batch = tiny_batch("whisper", hf)
    got = value_norms(model, batch)
    with torch.no_grad():
        out = hf(**batch.model_inputs)
        enc = out.encoder_last_hidden_state
        for layer in range(len(hf.model.decoder.layers)):
            ca = hf.model.decoder.layers[layer].encoder_attn
            want = _hand(ca.v_proj(enc[0]), ca.out_proj.weight, ca.num_heads, ca.num_heads)
            have = got[value_norm_key("cross", layer, 0)]
            assert have.shape == (ca.num_heads, enc.shape[1])
            torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)
    assert {k.split("/")[1] for k in got} == {"encoder", "decoder", "cross"}


def test_gpt_neox_fused_per_head_value_norms():
    hf = tiny_hf("gpt_neox")
    model = wb.wrap(hf)
    batch = tiny_batch("gpt_neox", hf)
    got = value_norms(model, batch)
    with torch.no_grad():
        hs = hf(**batch.model_inputs, output_hidden_states=True).hidden_states
        for layer in range(2):
            block = hf.gpt_neox.layers[layer]
            qkv = block.attention.query_key_value(block.input_layernorm(hs[layer]))     # [.., head * (q|k|v) * d]
            v = qkv.reshape(2, 11, 4, 3, 8)[:, :, :, 2].reshape(2, 11, 32)
            want = _hand(v[0], block.attention.dense.weight, 4, 4)
            torch.testing.assert_close(got[value_norm_key("self", layer, 0)], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("gpt2", "gpt_neox", "whisper")])
def test_every_family_gives_one_norm_per_head_and_real_key(family):
    hf = tiny_hf(family)
    model = wb.wrap(hf)
    batch = tiny_batch(family, hf)
    got = value_norms(model, batch)
    for site in model.sites:
        n = got[value_norm_key(site.stream, site.layer, 1)]
        mask = batch.query_mask.get("self")
        assert n.shape == (site.n_heads, int(mask[1].sum()) if mask is not None else n.shape[1])
        assert torch.isfinite(n).all() and (n > 0).all()
