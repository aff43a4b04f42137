"""TransformerLens' ``TransformerBridge`` over a built-in workbench model, for the peer-oracle
tests (``test_patching_peer``, ``test_patching_lens_qkv``), booted offline from the model's
local folder."""
from __future__ import annotations

import copy


def boot_bridge(model):
    """A ``TransformerBridge`` on a deep copy of ``model.hf`` (never the shared model), on CPU."""
    from transformer_lens.model_bridge import TransformerBridge

    hf = copy.deepcopy(model.hf)
    folder = model.meta.get("cache") or model.source
    return TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=model.tokenizer, device="cpu")
