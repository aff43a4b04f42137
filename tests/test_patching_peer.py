"""A peer as oracle (issue 11, part 2): head patching on smollm2-135m with TransformerLens'
``TransformerBridge`` (one ``run_with_hooks`` per head, overwriting ``hook_z``) equals the
engine's exact fast path within 1e-4, for zero ablation and for resample noising.

TransformerLens shares no code with the workbench: it wraps the HF model with its own hook
points. transformer-lens is part of the ``lens`` extra the test environment installs; a missing
install fails here (it is not skipped).
"""
from __future__ import annotations

import pytest
import torch
from lens_bridge import boot_bridge

from workbench import Head, tasks
from workbench.patching import patch

HEADS = [Head("self", 0, 3), Head("self", 9, 6), Head("self", 14, 2), Head("self", 20, 0), Head("self", 29, 7)]


@pytest.fixture(scope="module")
def bridge_and_task(builtin):
    model = builtin("smollm2-135m")
    bridge = boot_bridge(model)
    task = tasks.ioi(model, n=3, template=0)               # one template: no padding
    return model, bridge, task


def lens_effects(bridge, task, heads, ablation: str) -> torch.Tensor:
    """[head, input]: metric(patched) - metric(clean), the metric read from the bridge's logits."""
    clean = task.clean.model_inputs["input_ids"]
    corrupt = task.corrupt.model_inputs["input_ids"]
    met = task.metric
    idx = torch.arange(len(clean))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(corrupt, names_filter=lambda n: n.endswith("attn.hook_z"))
        base = met(bridge(clean)[idx[:, None], met.positions()], idx)
        out = torch.zeros(len(heads), len(clean))
        for i, h in enumerate(heads):
            name = f"blocks.{h.layer}.attn.hook_z"

            def hook(z, hook, h=h, name=name):
                z[:, :, h.head] = 0.0 if ablation == "zero" else cache[name][:, :, h.head]
                return z

            logits = bridge.run_with_hooks(clean, fwd_hooks=[(name, hook)])
            out[i] = met(logits[idx[:, None], met.positions()], idx) - base
    return out


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_engine_equals_transformer_lens_bridge(bridge_and_task, ablation):
    model, bridge, task = bridge_and_task
    assert "attention_mask" not in task.clean.model_inputs or bool(task.clean.model_inputs["attention_mask"].all()), \
        "the bridge is called without a mask: the prompts must not be padded"
    want = lens_effects(bridge, task, HEADS, ablation)
    got = patch(model, task.clean, task.metric, corrupt=task.corrupt, heads=HEADS, ablation=ablation,
                direction="noising", method="exact")
    assert want.abs().max() > 0.05, "effects too small for the comparison to mean anything"
    torch.testing.assert_close(got.per_input, want, atol=1e-4, rtol=0)
