"""Per-head, per-key norms of what each key writes through a head: ``||v_j W_O[h]||``.

Kobayashi et al. 2020 ("Attention is Not Only a Weight: Analyzing Transformers with Vector
Norms", EMNLP) show that the attention weight ``A[h, i, j]`` alone overstates what a key
contributes: head ``h`` adds ``sum_j A[h, i, j] f_h(x_j)`` to query ``i``'s residual, with
``f_h(x_j) = (x_j W_V[h] + b_V[h]) W_O[h]`` (the value vector through the head's output
weights). Their norm-based analysis draws ``A[h, i, j] * ||f_h(x_j)||``; the dashboard
draws it beside the raw pattern from the norms saved here.

``value_norms(model, batch)`` runs one forward and reads the value vectors where the model
computes them (a forward hook on the site's value projection: ``v_proj`` or the v slice
of a fused ``qkv`` / GPT-2 ``c_attn`` / GPT-NeoX ``query_key_value``), so ``b_V`` and the
real inputs of every key (encoder states for cross-attention) are included. The output
bias ``b_O`` is added once per site, not per key, and is left out (as in the paper).

Stored next to the kept patterns as ``value_norm/<stream>/<layer>/<input>``: float32
``[head, key]``, cropped to the input's real keys like ``pattern/...``. This module
imports torch only inside its functions, so the dashboard can import ``value_norm_key``.
"""
from __future__ import annotations

PREFIX = "value_norm"


def value_norm_key(stream: str, layer: int, index: int) -> str:
    """``value_norm/<stream>/<layer>/<index>``: ``[head, key]`` float32 of input ``index``."""
    return f"{PREFIX}/{stream}/{int(layer)}/{int(index)}"


def _v_slice(out, site, layout: str):
    """The value part ``[batch, key, kv_head, d_head]`` of a projection's output."""
    n, kv, d = site.n_heads, site.n_kv_heads, site.d_head
    if layout == "separate":
        v = out
    elif layout == "fused":
        v = out[..., (n + kv) * d:(n + 2 * kv) * d]
    else:                                                      # fused-per-head: [head, (q|k|v), d]
        v = out.reshape(*out.shape[:-1], n, 3, d)[..., 2, :]
        return v
    return v.reshape(*v.shape[:-1], kv, d)


def value_norms(model, batch) -> dict:
    """``{value_norm_key(stream, layer, i): float32 [head, key]}`` for every site and input of
    ``batch``: ``||(x_j W_V[h] + b_V[h]) W_O[h]||_2`` per query head ``h`` (its KV head under
    grouped-query attention) and key position ``j``, cropped to the input's real keys.

    Raises:
        RuntimeError: the value projection of some site did not run in the forward.
    """
    import torch

    from .analyses._context import KEY_STREAM

    layout = model.family.qkv.layout
    index = {"separate": 2, "fused": 0, "fused-per-head": 0}[layout]
    seen: dict = {}
    handles = []
    try:
        for site in model.sites:
            proj = model.attention_module(site.stream, site.layer).get_submodule(model.family.qkv.names[index])

            def hook(_mod, _inp, out, site=site):
                seen[site.key] = _v_slice(out.detach(), site, layout).float()
            handles.append(proj.register_forward_hook(hook))
        model.run(batch)
    finally:
        for h in handles:
            h.remove()
    missing = [s.name for s in model.sites if s.key not in seen]
    if missing:
        raise RuntimeError(f"the value projection of site(s) {missing} did not run in the forward")
    out = {}
    for site in model.sites:
        v = seen[site.key]                                            # [batch, key, kv_head, d_head]
        group = site.n_heads // site.n_kv_heads
        w_o = model.W_O(site.stream, site.layer).detach().float().to(v.device)   # [head, d_head, d_model]
        v = v.repeat_interleave(group, dim=2)                         # [batch, key, head, d_head]
        norms = torch.einsum("bkhd,hdm->bhkm", v, w_o).norm(dim=-1)    # [batch, head, key]
        keys = batch.query_mask.get(KEY_STREAM[site.stream])         # None: every key is real
        for i in range(norms.shape[0]):
            k = norms.shape[-1] if keys is None else int(keys[i].sum())
            out[value_norm_key(site.stream, site.layer, i)] = norms[i, :, :k].cpu().contiguous()
    return out
