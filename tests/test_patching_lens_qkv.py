"""A peer as oracle for q/k/v node patching (issue 11, parts 2 and 5): on smollm2-135m, patching
a head's query, key or value with TransformerLens' ``TransformerBridge`` (one
``run_with_hooks`` per unit) equals ``patch(..., method="exact", node=...)`` within 1e-4, for
resample noising and zero ablation (noising).

The bridge's hooks (transformer_lens ``model_bridge``, ``PositionEmbeddingsAttentionBridge``,
which re-implements Llama attention so that its hooks fire):

- ``blocks.L.attn.hook_q`` [batch, pos, head, d_head] (9 query heads), ``hook_k`` /
  ``hook_v`` [batch, pos, kv_head, d_head] (3 KV heads: the projections' outputs, BEFORE the
  bridge repeats them over the query heads of their group), so a k/v unit is one KV head, as in
  the workbench (``Head(stream, layer, kv_head)``, shared by query heads kv_head * 3 .. + 2);
- ``hook_q`` / ``hook_k`` are BEFORE rotary embeddings (``hook_rot_q`` / ``hook_rot_k`` come
  after), the workbench's nodes after. Rotary is a linear map fixed per position, so for
  resample (the same positions in clean and corrupt: one template, no padding) and for zero
  the two patches are the same; for mean they are not (the mean of rotated vectors is not the
  rotated mean), so mean ablation is not compared here.

Both layouts are checked on the bridge itself (``test_bridge_hooks_are_pre_rotary_and_per_kv_head``).

TransformerLens shares no code with the workbench. A missing transformer-lens (the ``lens``
extra) fails here, it is not skipped.
"""
from __future__ import annotations

import pytest
import torch
from lens_bridge import boot_bridge

from workbench import Head, tasks
from workbench.patching import patch

# units with non-trivial effects on IOI (s2 corruption, template 0; measured with the engine), sorted
UNITS = {"q": [Head("self", 17, 4), Head("self", 23, 7), Head("self", 24, 4)],      # query heads
         "k": [Head("self", 23, 1), Head("self", 24, 1)],                           # KV heads
         "v": [Head("self", 20, 0), Head("self", 23, 1)]}
N_HEADS, N_KV_HEADS = 9, 3


@pytest.fixture(scope="module")
def bridge_and_task(builtin):
    model = builtin("smollm2-135m")
    bridge = boot_bridge(model)
    task = tasks.ioi(model, n=2, template=0, corruption="s2")     # one template: no padding
    assert "attention_mask" not in task.clean.model_inputs or bool(task.clean.model_inputs["attention_mask"].all()), \
        "the bridge is called without a mask: the prompts must not be padded"
    return model, bridge, task


def lens_effects(bridge, task, node: str, units: list[Head], ablation: str) -> torch.Tensor:
    """[unit, input]: metric(patched) - metric(clean), one bridge forward per unit with the
    unit's slice of ``hook_{node}`` replaced (zero or the corrupt run's value)."""
    clean = task.clean.model_inputs["input_ids"]
    corrupt = task.corrupt.model_inputs["input_ids"]
    met = task.metric
    idx = torch.arange(len(clean))
    names = {f"blocks.{u.layer}.attn.hook_{node}" for u in units}
    with torch.no_grad():
        _, cache = bridge.run_with_cache(corrupt, names_filter=lambda n: n in names)
        heads = N_HEADS if node == "q" else N_KV_HEADS
        for name in names:                          # the hook's layout: [batch, pos, unit, d_head]
            assert cache[name].shape[:3] == (*clean.shape, heads), (name, tuple(cache[name].shape))
        base = met(bridge(clean)[idx[:, None], met.positions()], idx)
        out = torch.zeros(len(units), len(clean))
        for i, u in enumerate(units):
            name = f"blocks.{u.layer}.attn.hook_{node}"
            fired = []

            def hook(x, hook, u=u, name=name, fired=fired):
                x[:, :, u.head] = 0.0 if ablation == "zero" else cache[name][:, :, u.head]
                fired.append(name)
                return x

            logits = bridge.run_with_hooks(clean, fwd_hooks=[(name, hook)])
            assert fired == [name], f"{name} fired {len(fired)} times (want once)"
            out[i] = met(logits[idx[:, None], met.positions()], idx) - base
    return out


@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("node", ["q", "k", "v"])
def test_node_patching_equals_transformer_lens_bridge(bridge_and_task, node, ablation):
    model, bridge, task = bridge_and_task
    units = UNITS[node]
    want = lens_effects(bridge, task, node, units, ablation)
    got = patch(model, task.clean, task.metric, corrupt=task.corrupt, heads=units, ablation=ablation,
                direction="noising", method="exact", node=node)
    assert got.heads == units                        # UNITS are listed sorted, as the result's rows
    assert want.abs().max() > 0.05, "effects too small for the comparison to mean anything"
    torch.testing.assert_close(got.per_input, want, atol=1e-4, rtol=0)


def test_bridge_hooks_are_pre_rotary_and_per_kv_head(bridge_and_task):
    """What the docstring says of the bridge's hooks, seen in one forward: ``hook_k`` is
    [batch, pos, kv_head, d_head] and equals ``hook_rot_k`` only at position 0 (RoPE rotates
    position 0 by angle 0), so it is taken before rotary; likewise ``hook_q`` / ``hook_rot_q``."""
    _, bridge, task = bridge_and_task
    ids = task.clean.model_inputs["input_ids"]
    names = [f"blocks.3.attn.hook_{n}" for n in ("q", "k", "v", "rot_q", "rot_k")]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    assert sorted(cache.keys()) == sorted(names), "a q/k/v hook did not fire"
    for pre, post, heads in (("q", "rot_q", N_HEADS), ("k", "rot_k", N_KV_HEADS)):
        a, b = cache[f"blocks.3.attn.hook_{pre}"], cache[f"blocks.3.attn.hook_{post}"]
        assert a.shape == b.shape == (*ids.shape, heads, 64)
        torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-5, rtol=0)
        assert (a[:, 1:] - b[:, 1:]).abs().amax() > 1e-2
    assert cache["blocks.3.attn.hook_v"].shape == (*ids.shape, N_KV_HEADS, 64)
