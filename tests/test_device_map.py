"""Models larger than one device: dispatched with accelerate (``device_map``), tested on the
CPU with accelerate's offloading (layers on "disk" through an offload folder, or a
``max_memory`` budget), since CI has no GPU. The reference is the same tiny model, not
dispatched."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from tiny import tiny_hf, tiny_inputs
from workbench.batch import Batch
from workbench.errors import UserError
from workbench.patching import patch
from workbench.patching.metrics import LogitDiff, last_positions

MAPS = {
    "llama": {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"},
    "gpt2": {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
             "transformer.h.0": "disk", "transformer.h.1": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"},
    "whisper": {"model.encoder": "disk", "model.decoder": "cpu", "proj_out": "cpu"},
}
OFFLOADED = {"llama": [("self", 1)], "gpt2": [("self", 0)], "whisper": [("encoder", 0), ("encoder", 1)]}


def _batch(family, hf):
    inputs = tiny_inputs(family, hf)
    qm = {"self": inputs["attention_mask"].bool()} if "attention_mask" in inputs else {}
    return Batch(inputs, qm, [{}, {}])


def _metric(family, batch):
    return LogitDiff(torch.tensor([6, 6]) if family == "whisper" else last_positions(batch), [3, 4], [5, 6])


@pytest.mark.parametrize("family", sorted(MAPS))
def test_dispatched_model_traces_and_patches_as_the_plain_one(family, tmp_path):
    plain = wb.wrap(tiny_hf(family))
    model = wb.wrap(tiny_hf(family), device_map=MAPS[family], offload_folder=tmp_path / "offload")
    assert model.device_map == MAPS[family] and model.device == torch.device("cpu")
    assert [s.key for s in model.offloaded] == OFFLOADED[family]        # reported, not skipped
    for stream, layer in OFFLOADED[family]:                              # really offloaded: weights streamed in
        attn = model.attention_module(stream, layer)
        assert hasattr(attn, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in model.hf.modules())
        assert all(p.device.type == "meta" for p in attn.parameters())
    assert any((tmp_path / "offload").iterdir())

    batch = _batch(family, plain.hf)
    fired = []
    hooks = [model.out_proj(*s.key).register_forward_pre_hook(lambda m, a, k=s.key: fired.append(k))
             for s in model.sites]
    try:
        got = model.run(batch, capture=[wb.Pattern(), wb.Stats(), wb.Z()])
    finally:
        for h in hooks:
            h.remove()
    assert sorted(set(fired)) == sorted(s.key for s in model.sites)   # hooks fire on dispatched modules
    want = plain.run(batch, capture=[wb.Pattern(), wb.Stats(), wb.Z()])
    assert torch.equal(got.logits, want.logits)
    for key in want.pattern:
        assert torch.equal(got.pattern[key], want.pattern[key]), key
        assert torch.equal(got.z[key], want.z[key]), key
        for name, t in want.stats[key].to_dict().items():
            assert torch.equal(getattr(got.stats[key], name), t), (key, name)

    metric = _metric(family, batch)
    heads = [wb.Head(*OFFLOADED[family][0], h) for h in (0, 1)] + [wb.Head(*model.sites[-1].key, 2)]
    ref = patch(plain, batch, metric, heads=heads, ablation="zero", method="naive").per_input
    assert ref.abs().max() > 1e-4
    for method in ("exact", "naive"):
        eff = patch(model, batch, metric, heads=heads, ablation="zero", method=method).per_input
        assert torch.allclose(eff, ref, atol=1e-6), method


def test_max_memory_budget_offloads_the_rest_to_disk(tmp_path):
    plain = wb.wrap(tiny_hf("llama"))
    hf = tiny_hf("llama")
    per_layer = sum(p.numel() * 4 for p in hf.model.layers[0].parameters())
    model = wb.wrap(hf, device_map="auto", max_memory={"cpu": int(1.5 * per_layer)}, offload_folder=tmp_path / "o")
    assert "disk" in model.device_map.values() and model.offloaded
    batch = _batch("llama", plain.hf)
    got = model.run(batch, capture=[wb.Stats()])
    want = plain.run(batch, capture=[wb.Stats()])
    for key, st in want.stats.items():
        assert torch.equal(got.stats[key].col_sum, st.col_sum) and torch.equal(got.stats[key].row_entropy, st.row_entropy)


def test_load_a_folder_with_a_device_map(tmp_path):
    tiny_hf("gpt2").save_pretrained(tmp_path / "gpt2")
    model = wb.load(str(tmp_path / "gpt2"), device_map=MAPS["gpt2"], offload_folder=tmp_path / "off", dtype="auto")
    assert model.device_map == MAPS["gpt2"] and [s.key for s in model.offloaded] == [("self", 0)]
    plain = wb.wrap(tiny_hf("gpt2"))
    batch = _batch("gpt2", plain.hf)
    assert torch.equal(model.run(batch, capture=[wb.Pattern()]).pattern[("self", 0)],
                       plain.run(batch, capture=[wb.Pattern()]).pattern[("self", 0)])


def test_dispatch_refusals(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("not the workbench's")
    with pytest.raises(UserError, match="not an empty folder"):
        wb.wrap(tiny_hf("llama"), device_map=MAPS["llama"], offload_folder=tmp_path / "full")
    assert (tmp_path / "full" / "mine.txt").read_text() == "not the workbench's"
    with pytest.raises(UserError, match="offload_folder"):
        wb.wrap(tiny_hf("llama"), device_map=MAPS["llama"])
    model = wb.wrap(tiny_hf("llama"), device_map=MAPS["llama"], offload_folder=tmp_path / "o")
    with pytest.raises(UserError, match="already dispatched"):
        wb.wrap(model.hf, device="cpu")
    batch = _batch("llama", tiny_hf("llama"))
    with pytest.raises(UserError, match="update='z'"):
        patch(model, batch, _metric("llama", batch), ablation="zero", method="exact", update="rank")
