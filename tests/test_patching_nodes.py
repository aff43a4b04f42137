"""q, k, v patching nodes (issue 11, part 5) against oracles that share no code with the engine.

Exact patching oracle: the HF model itself (tiny models: a deep copy with HF eager attention;
smollm2-135m: its HF module outside any workbench run), with a forward hook on the projection
that produces the node (Llama: ``q_proj`` / ``k_proj`` / ``v_proj``; GPT-2: ``c_attn``, whose
output is [q | k | v]) replacing one head's slice of that output by the corrupt run's slice
(or by 0, or by its mean over the real positions). The metric is read from the logits by hand.

The engine patches the node *after* rotary embeddings, as the attention function receives it.
The equivalence relied on: rotary acts on each head and position separately, as a linear map
R_t that depends only on the position index t; clean and corrupt inputs of a pair have the same
length and padding, hence the same positions, so replacing the pre-rotary slice by the corrupt
run's gives R_t q_corrupt,t, exactly the corrupt run's post-rotary query (likewise keys), and
replacing it by 0 gives R_t 0 = 0. A mean is not preserved by rotary (the mean of R_t x_t is
not R_t of the mean), so mean ablation is checked where no rotary applies (v; every GPT-2 node).

k and v units are key/value heads (GQA: tiny Llama has 4 query heads, 2 KV heads; the oracle
replaces the KV head's slice of k_proj / v_proj, which every query head of its group reads).

AtP oracle (GPT-2, no rotary): the plain estimate sum (x' - x) . dM/dx with dM/dx read from
the HF graph at c_attn's output, and the QK fix sum (z' - z) . dM/dz with z' = softmax(q' k^T /
sqrt(d) + mask) v computed by hand and dM/dz read at c_proj's input.
"""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from workbench import Head, tasks
from workbench.cli import main
from workbench.errors import UserError
from workbench.patching import patch
from test_patching import metric_for, pair, sharpened
from tiny import tiny_hf

TOL = 1e-5


# -- the oracle -------------------------------------------------------------------------------
def proj_slice(hf, layer: int, node: str, unit: int):
    """(module, slice of its output's last axis) holding ``node`` of ``unit`` at ``layer``."""
    cfg = hf.config
    if cfg.model_type == "gpt2":
        d_model = cfg.n_embd
        d = d_model // cfg.n_head
        off = "qkv".index(node) * d_model
        return hf.transformer.h[layer].attn.c_attn, slice(off + unit * d, off + (unit + 1) * d)
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return getattr(hf.model.layers[layer].self_attn, f"{node}_proj"), slice(unit * d, (unit + 1) * d)


def logit_diff(hf, inputs: dict, hooks=()) -> torch.Tensor:
    """logit[3] - logit[5] at each input's last real token (the tiny tests' metric), with
    forward hooks ``(module, fn)`` active."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        with torch.no_grad():
            logits = hf(**inputs).logits
    finally:
        for h in handles:
            h.remove()
    last = inputs["attention_mask"].sum(1) - 1 if "attention_mask" in inputs else \
        torch.full((logits.shape[0],), logits.shape[1] - 1)
    at = logits[torch.arange(len(last)), last]
    return at[:, 3] - at[:, 5]


def proj_out(hf, inputs: dict, module) -> torch.Tensor:
    got = {}
    handle = module.register_forward_hook(lambda m, a, out: got.setdefault("out", out.detach().clone()))
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        handle.remove()
    return got["out"]


def oracle(hf, clean: dict, corrupt: dict, units, node: str, ablation: str = "resample", direction: str = "noising",
           metric=logit_diff, per_position: bool = False) -> torch.Tensor:
    """Expected effects [unit, n] (per position: [unit, n, pos], 0 at padding)."""
    base, src = (clean, corrupt) if direction == "noising" else (corrupt, clean)
    m_base = metric(hf, base)
    out = []
    for u in units:
        module, sl = proj_slice(hf, u.layer, node, u.head)
        if ablation == "resample":
            value = proj_out(hf, src, module)[..., sl]
        elif ablation == "zero":
            value = torch.zeros_like(proj_out(hf, base, module)[..., sl])
        else:                                                    # mean over the real positions, a loop
            x, mask = proj_out(hf, clean, module)[..., sl], clean["attention_mask"]
            rows = [x[i, t].double() for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t]]
            value = (sum(rows) / len(rows)).to(x.dtype).expand_as(x)

        def effect(v):
            def hook(m, a, o):
                o = o.clone()
                o[..., sl] = v
                return o
            return metric(hf, base, [(module, hook)]) - m_base

        if not per_position:
            out.append(effect(value))
            continue
        base_x = proj_out(hf, base, module)[..., sl]
        mask = base["attention_mask"]
        cols = []
        for t in range(base_x.shape[1]):
            v = base_x.clone()
            v[:, t] = value[:, t]
            cols.append(effect(v) * mask[:, t])
        out.append(torch.stack(cols, 1))
    return torch.stack(out)


def eager_copy(model):
    hf = copy.deepcopy(model.hf)
    hf.set_attn_implementation("eager")
    return hf.eval()


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(family):
        if family not in cache:
            m = sharpened(family)
            clean, corrupt = pair(family, m)
            cache[family] = (m, clean, corrupt, metric_for(family, m, clean), eager_copy(m))
        return cache[family]
    return get


UNITS = {"q": [Head("self", 0, 1), Head("self", 1, 2)], "k": [Head("self", 0, 1), Head("self", 1, 0)]}
UNITS["v"] = UNITS["k"]
CASES = [("llama", n, "resample", "noising") for n in "qkv"] + [
    ("llama", "q", "zero", "noising"), ("llama", "k", "zero", "noising"), ("llama", "v", "mean", "noising"),
    ("llama", "k", "resample", "denoising"),
    ("gpt2", "q", "resample", "noising"), ("gpt2", "k", "mean", "noising"), ("gpt2", "v", "zero", "noising")]


@pytest.mark.parametrize("family,node,ablation,direction", CASES)
def test_fast_and_naive_equal_the_projection_hook_oracle(tiny, family, node, ablation, direction):
    m, clean, corrupt, met, hf = tiny(family)
    units = UNITS[node]
    want = oracle(hf, clean.model_inputs, corrupt.model_inputs, units, node, ablation, direction)
    assert want.abs().min() > 1e-4, f"effects too small to mean anything: {want}"
    for method in ("exact", "naive"):
        res = patch(m, clean, met, corrupt=corrupt, heads=units, node=node, method=method, ablation=ablation,
                    direction=direction)
        assert res.heads == units and res.node == node
        torch.testing.assert_close(res.per_input, want, atol=TOL, rtol=0, msg=lambda s: f"{method}: {s}")


def test_query_per_position_equals_the_oracle(tiny):
    m, clean, corrupt, met, hf = tiny("llama")
    units = UNITS["q"]
    want = oracle(hf, clean.model_inputs, corrupt.model_inputs, units, "q", per_position=True)
    assert (want[:, 1, 7:] == 0).all() and want.abs().max() > 1e-3       # input 1 is padded from position 7
    for method in ("exact", "naive"):
        res = patch(m, clean, met, corrupt=corrupt, heads=units, node="q", method=method, per_position=True)
        got = torch.stack([res.per_position[("self", h.layer)][0] for h in units])
        torch.testing.assert_close(got, want, atol=TOL, rtol=0, msg=lambda s: f"{method}: {s}")


def test_every_kv_unit_fast_equals_naive(tiny):
    """Every unit of tiny Llama's k node (GQA: per KV head, one row each, a unit patches the z of
    its two query heads), with the rank-d_head update and with every site in one pipelined unit."""
    m, clean, corrupt, met, _ = tiny("llama")
    node = "k"
    naive = patch(m, clean, met, corrupt=corrupt, node=node, method="naive")
    n_units = 2 * 2
    assert len(naive.heads) == n_units and naive.tensor().shape == (1, 2, n_units // 2)
    assert set(naive.table()["patch.node"]) == {node}
    for kw in (dict(update="rank"), dict(sites_per_unit=None, max_rows=3)):
        fast = patch(m, clean, met, corrupt=corrupt, node=node, method="exact", **kw)
        torch.testing.assert_close(fast.per_input, naive.per_input, atol=TOL, rtol=0)


# -- AtP and the QK fix against a hand-built computation (GPT-2: no rotary) --------------------
def hand_atp(hf, clean: dict, corrupt: dict, layer: int, head: int, node: str, position: int | None = None):
    """(plain AtP, AtP with the QK fix) of one GPT-2 head's q, k or v node, per input [n];
    with ``position``, of that position of the node only (k / v: a key position)."""
    attn = hf.transformer.h[layer].attn
    cfg = hf.config
    d_model, d = cfg.n_embd, cfg.n_embd // cfg.n_head
    src = proj_out(hf, corrupt, attn.c_attn)
    got = {}

    def keep_qkv(m, a, out):
        out.retain_grad()
        got["qkv"] = out

    def keep_z(m, a):
        a[0].retain_grad()
        got["z"] = a[0]

    handles = [attn.c_attn.register_forward_hook(keep_qkv), attn.c_proj.register_forward_pre_hook(keep_z)]
    try:
        logits = hf(**clean).logits
    finally:
        for h in handles:
            h.remove()
    mask = clean["attention_mask"]
    last = mask.sum(1) - 1
    at = logits[torch.arange(len(last)), last]
    (at[:, 3] - at[:, 5]).sum().backward()
    qkv, z = got["qkv"], got["z"]
    part = lambda x, i: x[..., i * d_model + head * d:i * d_model + (head + 1) * d]   # noqa: E731
    i = "qkv".index(node)
    new = part(src, i)
    if position is not None:
        new = part(qkv, i).detach().clone()
        new[:, position] = part(src, i)[:, position]
    linear = ((new - part(qkv, i).detach()) * part(qkv.grad, i)).sum((1, 2))
    qkv_new = [part(qkv, j).detach() for j in range(3)]
    qkv_new[i] = new
    q, k, v = qkv_new
    t = q.shape[1]
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))[None] & mask.bool()[:, None, :]
    scores = (q @ k.transpose(1, 2)) / d ** 0.5
    a = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    z_new = a @ v
    zh = z.detach()[..., head * d:(head + 1) * d]
    qk = ((z_new - zh) * z.grad[..., head * d:(head + 1) * d]).sum((1, 2))
    return linear, qk


@pytest.mark.parametrize("node", ["q", "k"])
def test_atp_and_the_qk_fix_equal_a_hand_computation(tiny, node):
    m, clean, corrupt, met, hf = tiny("gpt2")
    units = UNITS[node]
    res = patch(m, clean, met, corrupt=corrupt, heads=units, node=node, method="atp*")
    for j, u in enumerate(units):
        linear, qk = hand_atp(hf, clean.model_inputs, corrupt.model_inputs, u.layer, u.head, node)
        torch.testing.assert_close(res.extra["atp"][j], linear, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.extra["atp_qk"][j], qk, atol=1e-5, rtol=1e-4)
        assert (linear - qk).abs().max() > 1e-4, "the QK fix changed nothing here: the test would not see it"
    assert (res.per_input >= 0).all() and res.per_input.abs().max() > 0          # GradDrop: magnitudes
    plain = patch(m, clean, met, corrupt=corrupt, heads=units, node=node, method="atp")
    torch.testing.assert_close(plain.per_input, res.extra["atp"], atol=1e-6, rtol=0)


def test_value_qk_fix_is_the_linear_estimate(tiny):
    """z is linear in v: the QK-fixed estimate and the plain one agree (GQA: a KV head sums its group)."""
    m, clean, corrupt, met, _ = tiny("llama")
    res = patch(m, clean, met, corrupt=corrupt, node="v", method="atp*")
    assert res.extra["atp"].abs().max() > 1e-3
    torch.testing.assert_close(res.extra["atp_qk"], res.extra["atp"], atol=1e-5, rtol=1e-4)


# -- bad input ------------------------------------------------------------------------------------
def test_unknown_node_and_unit_raise(tiny):
    m, clean, corrupt, met, _ = tiny("llama")
    with pytest.raises(UserError, match="unknown node 'o'"):
        patch(m, clean, met, corrupt=corrupt, node="o")
    with pytest.raises(ValueError, match="has key/value heads 0..1"):
        patch(m, clean, met, corrupt=corrupt, node="k", heads=[Head("self", 0, 3)])


def patch_cli(tmp_path, out, *args) -> int:
    """``workbench patch`` on a tiny Llama folder and two token pairs (written once under tmp_path)."""
    pairs = tmp_path / "p.jsonl"
    if not pairs.exists():
        tiny_hf("llama").save_pretrained(tmp_path / "tiny-llama")
        pairs.write_text("\n".join(json.dumps({"clean": [1, 7, 3, 9, 11], "corrupt": [1, 7, 5, 9, 11], "target": 4,
                                                "distractor": 6}) for _ in range(2)))
    return main(["patch", str(tmp_path / "tiny-llama"), "--task", str(pairs), "--out", str(out), *args])


def test_patch_command_node(tmp_path, capsys):
    out = tmp_path / "run"
    assert patch_cli(tmp_path, out, "--quiet", "--node", "k", "--method", "exact,atp-star") == 0
    heads = pd.read_parquet(out / "heads.parquet")
    assert len(heads) == 4 and set(heads["patch.node"]) == {"k"} and sorted(heads["head"].unique()) == [0, 1]
    assert heads["patch.effect"].abs().max() > 0 and "patch.effect_atp_star" in heads.columns
    assert json.loads((out / "meta.json").read_text())["analyses"]["patch"]["node"] == "k"
    assert patch_cli(tmp_path, tmp_path / "x", "--node", "v", "--per-position", "--method", "atp-star-verified") == 2
    assert "patches whole heads (no --per-position)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- smollm2-135m ---------------------------------------------------------------------------------
@pytest.mark.parametrize("node,units", [("q", [Head("self", 9, 6), Head("self", 20, 0)]),
                                        ("k", [Head("self", 9, 2), Head("self", 14, 0)]),
                                        ("v", [Head("self", 9, 2), Head("self", 20, 0)])])
def test_smollm2_equals_the_projection_hook_oracle(builtin, node, units):
    """IOI (s2 corruption, one template: no padding), resample noising; the oracle hooks the HF
    module's q_proj / k_proj / v_proj outside any workbench run (plain SDPA attention)."""
    model = builtin("smollm2-135m")
    task = tasks.ioi(model, n=2, template=0)
    met = task.metric
    pos = met.positions()[:, 0]

    def metric(hf, inputs, hooks=()):
        handles = [mod.register_forward_hook(fn) for mod, fn in hooks]
        try:
            with torch.no_grad():
                logits = hf(input_ids=inputs["input_ids"]).logits
        finally:
            for h in handles:
                h.remove()
        at = logits[torch.arange(len(pos)), pos]
        return at.gather(1, met.target[:, None])[:, 0] - at.gather(1, met.distractor[:, None])[:, 0]

    want = oracle(model.hf, task.clean.model_inputs, task.corrupt.model_inputs, units, node, metric=metric)
    assert want.abs().max() > 1e-2
    for method in ("exact", "naive"):
        res = patch(model, task.clean, met, corrupt=task.corrupt, heads=units, node=node, method=method)
        torch.testing.assert_close(res.per_input, want, atol=1e-4, rtol=0, msg=lambda s: f"{method}: {s}")


@pytest.mark.parametrize("family", ["gemma2", "gpt_neox", "qwen3", "bert", "whisper"])
def test_key_node_fast_equals_naive_other_families(tiny, family):
    """The k node on families whose attention differs: Gemma 2 (soft-capping: the eager function),
    GPT-NeoX (partial rotary), Qwen3 (q/k norms), BERT (encoder), Whisper (cross-attention keys
    from the encoder). Every unit, fast path == naive loop, and some unit moves the metric."""
    m, clean, corrupt, met, _ = tiny(family)
    naive = patch(m, clean, met, corrupt=corrupt, node="k", method="naive")
    fast = patch(m, clean, met, corrupt=corrupt, node="k", method="exact")
    assert naive.per_input.abs().max() > 1e-4
    assert len(fast.heads) == sum(s.n_kv_heads for s in m.sites)
    torch.testing.assert_close(fast.per_input, naive.per_input, atol=TOL, rtol=0)
