"""q/k/v nodes per key position and zero / mean denoising (issue 11, part 5) against an oracle
that shares no code with ``workbench.patching``.

The oracle is a deep copy of the tiny HF Llama (GQA: 4 query heads, 2 key/value heads, rotary)
whose attention runs through an attention function registered here with transformers'
``AttentionInterface``: it receives the post-rotary query / key / value exactly as HF's own
attention function would (the node the engine patches), optionally records them, rewrites
chosen slices, and calls HF's ``eager_attention_forward``. The metric is read from the logits
by hand (logit 3 - logit 5 at each input's last real token).

Definitions checked (M the metric, x_u the node of unit u, a_u = 0 or its mean over the valid
positions of the clean inputs, H the units of the sweep):

    per key position, resample noising  M(clean; x_u[p] := x_u[p](corrupt)) - M(clean), 0 at padding p
    zero / mean denoising               M(clean; x_g := a_g for g in H, g != u; x_u := x_u(clean))
                                        - M(clean; x_g := a_g for every g in H)
"""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from workbench import Head
from workbench.errors import UserError
from workbench.patching import patch
from test_patching import metric_for, pair, sharpened
from test_patching_nodes import eager_copy, hand_atp, patch_cli

TOL = 1e-5
IMPL = "nodes_more_oracle"
_INDEX = {"q": 0, "k": 1, "v": 2}
STATE: dict = {"record": None, "edits": {}}   # edits: {(layer, node): [(unit, positions or None, value), ...]}


def oracle_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF eager attention on (possibly rewritten) post-rotary q, k, v of layer ``module.layer_idx``."""
    layer = module.layer_idx
    qkv = [query, key, value]
    for node, i in _INDEX.items():
        for unit, positions, v in STATE["edits"].get((layer, node), ()):
            t = qkv[i].clone()
            if positions is None:
                t[:, unit] = v
            else:
                t[:, unit, positions] = v
            qkv[i] = t
    if STATE["record"] is not None:
        STATE["record"][layer] = [x.detach().clone() for x in qkv]
    return eager_attention_forward(module, *qkv, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


AttentionInterface.register(IMPL, oracle_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL, eager_mask)


def run(hf, inputs: dict, edits=None, record: bool = False):
    """(logit 3 - logit 5 at each input's last real token [n], {layer: [q, k, v]} if ``record``)."""
    STATE["edits"], STATE["record"] = edits or {}, ({} if record else None)
    try:
        with torch.no_grad():
            logits = hf(**inputs).logits
        rec = STATE["record"]
    finally:
        STATE["edits"], STATE["record"] = {}, None
    last = inputs["attention_mask"].sum(1) - 1
    at = logits[torch.arange(len(last)), last]
    return at[:, 3] - at[:, 5], rec


@pytest.fixture(scope="module")
def llama():
    m = sharpened("llama")
    clean, corrupt = pair("llama", m)
    hf = copy.deepcopy(m.hf)
    hf.set_attn_implementation(IMPL)
    return m, clean, corrupt, metric_for("llama", m, clean), hf.eval()


def hand_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of one unit's node x [n, T, d] over the valid positions (mask [n, T]), as a loop."""
    rows = [x[i, t].double() for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t]]
    return (sum(rows) / len(rows)).to(x.dtype)


# -- k / v per key position -----------------------------------------------------------------------
KV_UNITS = [Head("self", 0, 1), Head("self", 1, 0)]
POSITIONS = [2, 8]          # input 1 is padding from position 7: its effect at 8 must be 0


def per_key_oracle(hf, clean: dict, corrupt: dict, node: str) -> torch.Tensor:
    """[unit, n, position of POSITIONS]: one forward per (unit, key position)."""
    m0, _ = run(hf, clean)
    _, src = run(hf, corrupt, record=True)
    mask = clean["attention_mask"]
    out = torch.zeros(len(KV_UNITS), mask.shape[0], len(POSITIONS))
    for j, u in enumerate(KV_UNITS):
        for c, p in enumerate(POSITIONS):
            value = src[u.layer][_INDEX[node]][:, u.head, p]
            m, _ = run(hf, clean, {(u.layer, node): [(u.head, p, value)]})
            out[j, :, c] = (m - m0) * mask[:, p]
    return out


@pytest.mark.parametrize("node", ["k", "v"])
def test_key_position_resample_noising_equals_the_oracle(llama, node):
    m, clean, corrupt, met, hf = llama
    want = per_key_oracle(hf, clean.model_inputs, corrupt.model_inputs, node)
    assert (want[:, 1, 1] == 0).all() and (want[:, 0].abs() > 1e-5).all() and (want[:, 1, 0].abs() > 1e-5).all()
    got = {}
    for method in ("exact", "naive"):
        res = patch(m, clean, met, corrupt=corrupt, heads=KV_UNITS, node=node, method=method, per_position=True)
        pp = torch.stack([res.per_position[("self", u.layer)][0] for u in KV_UNITS])     # [unit, n, key pos]
        assert pp.shape == (2, 2, 11) and (pp[:, 1, 7:] == 0).all()
        torch.testing.assert_close(res.per_input, pp.sum(2), atol=1e-6, rtol=0)
        torch.testing.assert_close(pp[:, :, POSITIONS], want, atol=TOL, rtol=0, msg=lambda s: f"{method}: {s}")
        got[method] = pp
    torch.testing.assert_close(got["exact"], got["naive"], atol=TOL, rtol=0)


def test_key_position_every_unit_fast_equals_naive(llama):
    """Every KV unit of both layers, zero noising per key position, rank update and pipelined
    sites; AtP per position is [unit, n, key pos] too."""
    m, clean, corrupt, met, _ = llama
    naive = patch(m, clean, met, node="k", method="naive", ablation="zero", per_position=True)
    fast = patch(m, clean, met, node="k", method="exact", ablation="zero", per_position=True, update="rank",
                 sites_per_unit=None, max_rows=5)
    for k in naive.per_position:
        torch.testing.assert_close(fast.per_position[k], naive.per_position[k], atol=TOL, rtol=0)
    assert naive.per_input.abs().max() > 1e-3
    atp = patch(m, clean, met, node="v", method="atp", ablation="zero", per_position=True)
    assert atp.per_position[("self", 0)].shape == (2, 2, 11)


@pytest.mark.parametrize("node", ["k", "v"])
def test_atp_per_key_position_equals_a_hand_computation(node):
    """GPT-2 (no rotary): AtP and AtP*'s QK fix of one key position at a time (the softmax
    recomputed by hand with only key / value p of the head replaced), summed over the key
    positions, as ``extra`` holds them; AtP*'s GradDrop per key position is [unit, n, P], >= 0."""
    m = sharpened("gpt2")
    clean, corrupt = pair("gpt2", m)
    met = metric_for("gpt2", m, clean)
    hf = eager_copy(m)
    units = [Head("self", 0, 1), Head("self", 1, 2)]
    res = patch(m, clean, met, corrupt=corrupt, heads=units, node=node, method="atp*", per_position=True)
    whole = patch(m, clean, met, corrupt=corrupt, heads=units, node=node, method="atp*")
    for j, u in enumerate(units):
        per_p = [hand_atp(hf, clean.model_inputs, corrupt.model_inputs, u.layer, u.head, node, p) for p in range(11)]
        linear, qk = (torch.stack(x, 1).sum(1) for x in zip(*per_p))
        torch.testing.assert_close(res.extra["atp"][j], linear, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.extra["atp_qk"][j], qk, atol=1e-5, rtol=1e-4)
        if node == "k":
            assert (res.extra["atp_qk"][j] - whole.extra["atp_qk"][j]).abs().max() > 1e-4   # not the whole-node fix
    pp = res.per_position[("self", 0)]
    assert pp.shape == (1, 2, 11) and (pp >= 0).all() and pp.abs().max() > 0
    torch.testing.assert_close(res.per_input, torch.stack([res.per_position[("self", u.layer)][0] for u in units]).sum(2))


# -- zero / mean denoising -------------------------------------------------------------------------
DENOISE_UNITS = {"q": [Head("self", 0, 1), Head("self", 1, 2)], "k": KV_UNITS, "v": KV_UNITS}


def denoising_oracle(hf, clean: dict, node: str, ablation: str, units, position: int | None = None) -> torch.Tensor:
    """[unit, n]: restore each unit's clean node (only at ``position``, 0 where that is padding)
    into the run with every unit of ``units`` ablated."""
    _, rec = run(hf, clean, record=True)
    mask = clean["attention_mask"]
    a = {}
    for u in units:
        x = rec[u.layer][_INDEX[node]][:, u.head]                                  # [n, T, d]
        a[u] = torch.zeros(x.shape[-1]) if ablation == "zero" else hand_mean(x, mask)

    def edits(restored=None):
        e = {}
        for u in units:
            v = rec[u.layer][_INDEX[node]][:, u.head] if u == restored else a[u]
            if u == restored and position is not None:
                v = a[u].expand_as(v).clone()
                v[:, position] = rec[u.layer][_INDEX[node]][:, u.head, position]
            e.setdefault((u.layer, node), []).append((u.head, None, v))
        return e

    base, _ = run(hf, clean, edits())
    keep = mask[:, position] if position is not None else 1
    return torch.stack([(run(hf, clean, edits(u))[0] - base) * keep for u in units])


@pytest.mark.parametrize("node", ["q", "k", "v"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_zero_mean_denoising_equals_the_oracle(llama, node, ablation):
    m, clean, corrupt, met, hf = llama
    units = DENOISE_UNITS[node]
    want = denoising_oracle(hf, clean.model_inputs, node, ablation, units)
    assert want.abs().min() > 1e-4, f"effects too small to mean anything: {want}"
    for method in ("exact", "naive"):
        res = patch(m, clean, met, heads=units, node=node, method=method, ablation=ablation, direction="denoising")
        torch.testing.assert_close(res.per_input, want, atol=TOL, rtol=0, msg=lambda s: f"{method}: {s}")
        base, _ = run(hf, clean.model_inputs, {})
        assert not torch.allclose(res.base_metric, base, atol=1e-4), "the base run was not ablated"


@pytest.mark.parametrize("node,ablation", [("k", "zero"), ("v", "mean")])
def test_key_position_denoising_equals_the_oracle(llama, node, ablation):
    """Per key position and zero / mean denoising together: one key position of a unit restored
    into the ablated run (the fast path's replays keep the ablation downstream)."""
    m, clean, corrupt, met, hf = llama
    want = torch.stack([denoising_oracle(hf, clean.model_inputs, node, ablation, KV_UNITS, p) for p in POSITIONS], 2)
    assert (want[:, 0].abs() > 1e-5).all() and (want[:, 1, 1] == 0).all()
    for method in ("exact", "naive"):
        res = patch(m, clean, met, heads=KV_UNITS, node=node, method=method, ablation=ablation, direction="denoising",
                    per_position=True)
        pp = torch.stack([res.per_position[("self", u.layer)][0] for u in KV_UNITS])
        torch.testing.assert_close(pp[:, :, POSITIONS], want, atol=TOL, rtol=0, msg=lambda s: f"{method}: {s}")


def test_mean_is_over_valid_positions_only(llama):
    """Mean denoising of v: the base run ablates with the hand mean over valid positions (the
    oracle above), not with a mean that also averages the padding (input 1, positions 7..10).
    (For k any constant key gives uniform attention, so the mean's value cannot show there.)"""
    m, clean, corrupt, met, hf = llama
    units = DENOISE_UNITS["v"]
    res = patch(m, clean, met, heads=units, node="v", method="exact", ablation="mean", direction="denoising")
    _, rec = run(hf, clean.model_inputs, record=True)
    mask = clean.model_inputs["attention_mask"]
    assert not mask.all()
    valid = {u: hand_mean(rec[u.layer][2][:, u.head], mask) for u in units}
    padded = {u: rec[u.layer][2][:, u.head].mean((0, 1)) for u in units}
    base = {name: run(hf, clean.model_inputs, {(u.layer, "v"): [(u.head, None, a[u])] for u in units})[0]
            for name, a in (("valid", valid), ("padded", padded))}
    torch.testing.assert_close(res.base_metric, base["valid"], atol=TOL, rtol=0)
    assert (res.base_metric - base["padded"]).abs().max() > 1e-4


def test_denoising_atp_linearises_at_the_ablated_run(llama):
    """AtP and AtP* of zero denoising read the ablated base run (its metric), and AtP* with v
    (linear in the node) equals plain AtP's QK-fixed estimate; verified AtP* runs."""
    from workbench.patching import verified_patch

    m, clean, corrupt, met, hf = llama
    units = DENOISE_UNITS["v"]
    base, _ = run(hf, clean.model_inputs, {(u.layer, "v"): [(u.head, None, torch.zeros(8))] for u in units})
    res = patch(m, clean, met, heads=units, node="v", method="atp*", ablation="zero", direction="denoising")
    torch.testing.assert_close(res.base_metric, base, atol=TOL, rtol=0)
    torch.testing.assert_close(res.extra["atp_qk"], res.extra["atp"], atol=1e-5, rtol=1e-4)
    ver = verified_patch(m, clean, met, heads=units, node="v", ablation="zero", direction="denoising", k=1, sample=1,
                         top=1)
    exact = patch(m, clean, met, heads=units, node="v", ablation="zero", direction="denoising")
    torch.testing.assert_close(ver.per_input, exact.per_input, atol=TOL, rtol=0)


def test_store_fingerprint_tells_the_new_options_apart(llama, tmp_path):
    """A unit store of one sweep refuses a sweep that differs only in per_position or in the
    ablation of denoising; a rerun of the same sweep reuses its units."""
    from workbench.patching import PatchConfig, Sweep

    m, clean, corrupt, met, _ = llama
    fp = {}
    for kw in (dict(per_position=True), dict(per_position=False), dict(direction="denoising", ablation="zero"),
               dict(direction="denoising", ablation="mean")):
        fp[json.dumps(kw)] = Sweep(m, clean, met, corrupt=corrupt, heads=KV_UNITS,
                                   config=PatchConfig(node="k", **kw)).fingerprint()
    assert len(set(fp.values())) == 4
    a = patch(m, clean, met, corrupt=corrupt, heads=KV_UNITS, node="k", per_position=True, store=str(tmp_path / "u"))
    b = patch(m, clean, met, corrupt=corrupt, heads=KV_UNITS, node="k", per_position=True, store=str(tmp_path / "u"))
    torch.testing.assert_close(b.per_position[("self", 1)], a.per_position[("self", 1)], atol=0, rtol=0)


def test_patch_command_key_positions_and_denoising(tmp_path):
    out = tmp_path / "run"
    assert patch_cli(tmp_path, out, "--quiet", "--node", "v", "--per-position") == 0
    heads = pd.read_parquet(out / "heads.parquet")
    assert len(heads) == 4 and set(heads["patch.node"]) == {"v"}
    assert patch_cli(tmp_path, tmp_path / "d", "--quiet", "--node", "q", "--ablation", "mean",
                     "--direction", "denoising") == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())["analyses"]["patch"]
    assert (meta["node"], meta["ablation"], meta["direction"]) == ("q", "mean", "denoising")


def test_whisper_cross_attention_key_positions_are_encoder_frames():
    """Cross-attention k per key position: one column per encoder frame (30), fast == naive;
    decoder self-attention: one per decoder token (7)."""
    m = sharpened("whisper")
    clean, corrupt = pair("whisper", m)
    met = metric_for("whisper", m, clean)
    units = [Head("cross", 1, 2), Head("decoder", 1, 0)]
    res = {meth: patch(m, clean, met, corrupt=corrupt, heads=units, node="k", method=meth, per_position=True)
           for meth in ("exact", "naive")}
    assert res["exact"].per_position[("cross", 1)].shape == (1, 2, 30)
    assert res["exact"].per_position[("decoder", 1)].shape == (1, 2, 7)
    assert res["naive"].per_position[("cross", 1)].abs().max() > 1e-6
    for k, v in res["naive"].per_position.items():
        torch.testing.assert_close(res["exact"].per_position[k], v, atol=TOL, rtol=0)


def test_sweep_rebuilt_from_its_spec_gives_the_same_units(tmp_path):
    """The Ray path: a worker rebuilds the sweep from its spec (plain data); for k per key
    position, q mean denoising and v mean noising its identity (fingerprint + digest of the
    means; q/k/v means were keyed by site and broke it) and unit results are the driver's."""
    from test_ray_spec import _tiny_task
    from workbench.executors import JobSpec, identity, spec_of, task_source
    from workbench.patching import PatchConfig, Sweep

    model, pairs, task = _tiny_task(tmp_path)
    for cfg in (PatchConfig("exact", node="k", per_position=True),
                PatchConfig("naive", "mean", "denoising", node="q", shard_size=1),
                PatchConfig("exact", "mean", node="v")):
        sweep = Sweep(model, task.clean, task.metric, corrupt=task.corrupt, heads=[Head("self", 1, 1)], config=cfg)
        again = JobSpec.from_json(spec_of(sweep, task_source(str(tmp_path / "m"), str(pairs))).to_json()).build()
        assert identity(again) == identity(sweep) and again.fingerprint() == sweep.fingerprint()
        unit = sweep.units()[-1]
        mine, theirs = sweep.run_unit(unit), again.run_unit(unit)
        assert mine.keys() == theirs.keys() and any(v.abs().max() > 0 for k, v in mine.items() if k != "base_metric")
        for k in mine:
            torch.testing.assert_close(theirs[k], mine[k], atol=0, rtol=0)


@pytest.mark.parametrize("node", ["z", "v"])
def test_store_fingerprint_includes_the_mean_reference(llama, tmp_path, node):
    """Mean ablation over another reference batch is another sweep: its unit store must not be
    reused (the fingerprint held no reference inputs, so a rerun silently took the old units)."""
    from workbench.patching import PatchConfig, Sweep

    m, clean, corrupt, met, _ = llama
    cfg = PatchConfig(ablation="mean", node=node)
    a = Sweep(m, clean, met, heads=KV_UNITS, config=cfg, reference=clean).store_key()
    b = Sweep(m, clean, met, heads=KV_UNITS, config=cfg, reference=corrupt).store_key()
    assert a != b and a == Sweep(m, clean, met, heads=KV_UNITS, config=cfg).fingerprint()   # clean: the default
    patch(m, clean, met, heads=KV_UNITS, node=node, ablation="mean", reference=clean, store=str(tmp_path / "u"))
    with pytest.raises(UserError, match="different sweep"):
        patch(m, clean, met, heads=KV_UNITS, node=node, ablation="mean", reference=corrupt, store=str(tmp_path / "u"))
