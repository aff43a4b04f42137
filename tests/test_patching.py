"""Patching engine on tiny random models of every family: the fast exact path against the
naive one-forward-per-head loop, clean-into-clean, AtP in the small-perturbation limit,
AtP* GradDrop, work units and the record of finished units."""
from __future__ import annotations

import copy

import pytest
import torch

import workbench as wb
from workbench.batch import Batch
from workbench.patching import InProcessExecutor, Sweep, PatchConfig, UnitStore, metrics, patch, run_units
from tiny import FAMILIES, scale_weights, tiny_hf, tiny_inputs

TOL = 1e-5


def sharpened(family: str):
    """A tiny model with weights scaled up, so heads have effects far above round-off."""
    hf = tiny_hf(family)
    scale_weights(hf, 4.0, positions=False)   # effects far above round-off
    return wb.wrap(hf)


def pair(family: str, model, seed: int = 1) -> tuple[Batch, Batch]:
    """Clean and corrupt batches of equal shapes (padding kept where the family has a mask)."""
    hf = model.hf
    a, b = tiny_inputs(family, hf, seed=seed), tiny_inputs(family, hf, seed=seed + 1)
    if family in ("wav2vec2", "hubert"):
        a = {"input_values": a["input_values"][:, :560]}
        b = {"input_values": b["input_values"][:, :560]}
    qm = {}
    if "attention_mask" in a:
        b["attention_mask"] = a["attention_mask"]
        qm = {"self": a["attention_mask"].bool()}
    if family == "whisper":
        b["decoder_input_ids"] = a["decoder_input_ids"]
    n = next(iter(a.values())).shape[0]
    return Batch(a, qm, [{}] * n), Batch(b, qm, [{}] * n)


def metric_for(family: str, model, clean: Batch):
    n = len(clean)
    if model.kind == "causal":
        return metrics.LogitDiff(metrics.last_positions(clean), [3] * n, [5] * n)
    if family == "whisper":
        ids = clean.model_inputs["decoder_input_ids"]
        return metrics.TokenLogProb(torch.arange(ids.shape[1] - 1).expand(n, -1), ids[:, 1:])
    with torch.no_grad():
        h = model.run(clean).output.last_hidden_state
    w = clean.model_inputs.get("attention_mask", torch.ones(n, h.shape[1]))
    return metrics.CosineSimilarity(w, torch.randn(n, h.shape[-1], generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def setups():
    out = {}
    for fam in FAMILIES:
        m = sharpened(fam)
        clean, corrupt = pair(fam, m)
        out[fam] = (m, clean, corrupt, metric_for(fam, m, clean))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_naive_every_family(setups, family):
    m, clean, corrupt, met = setups[family]
    naive = patch(m, clean, met, corrupt=corrupt, method="naive")
    assert naive.per_input.abs().max() > 1e-4, "effects too small for the comparison to mean anything"
    # per-site units; the rank-d_head update; every site of a stack in one pipelined replay,
    # in batches of 5 variants that join at different layers
    for kw in (dict(update="z"), dict(update="rank"), dict(sites_per_unit=None, max_rows=5)):
        fast = patch(m, clean, met, corrupt=corrupt, method="exact", **kw)
        assert fast.heads == naive.heads == m.heads()
        torch.testing.assert_close(fast.per_input, naive.per_input, atol=TOL, rtol=0)
    torch.testing.assert_close(fast.base_metric, fast.clean_metric, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "hubert"])
def test_fast_equals_naive_per_position(setups, family):
    m, clean, corrupt, met = setups[family]
    heads = [h for h in m.heads() if h.head in (0, 3)]                 # GQA: heads of both kv groups
    fast = patch(m, clean, met, corrupt=corrupt, heads=heads, per_position=True, max_rows=7)
    fast2 = patch(m, clean, met, corrupt=corrupt, heads=heads, per_position=True, sites_per_unit=None)
    naive = patch(m, clean, met, corrupt=corrupt, heads=heads, per_position=True, method="naive")
    for key in fast.per_position:
        torch.testing.assert_close(fast.per_position[key], naive.per_position[key], atol=TOL, rtol=0)
        torch.testing.assert_close(fast2.per_position[key], naive.per_position[key], atol=TOL, rtol=0)
    assert any(v.abs().max() > 1e-4 for v in fast.per_position.values())


@pytest.mark.parametrize("family,ablation,direction", [
    ("llama", "zero", "noising"), ("llama", "mean", "noising"), ("llama", "resample", "denoising"),
    ("llama", "zero", "denoising"), ("gpt2", "mean", "denoising"), ("whisper", "zero", "noising"),
    ("bert", "mean", "noising"),
])
def test_fast_equals_naive_ablations_and_directions(setups, family, ablation, direction):
    m, clean, corrupt, met = setups[family]
    kw = dict(corrupt=corrupt, ablation=ablation, direction=direction)
    fast, naive = patch(m, clean, met, **kw), patch(m, clean, met, method="naive", **kw)
    torch.testing.assert_close(fast.per_input, naive.per_input, atol=TOL, rtol=0)
    assert (fast.ablation, fast.direction) == (ablation, direction)
    if direction == "denoising" and ablation == "resample":
        torch.testing.assert_close(fast.base_metric, fast.corrupt_metric, atol=1e-6, rtol=0)


def test_causal_prefix_skip_is_used_and_exact(setups):
    """Clean and corrupt share a prefix: the fast path starts after it and stays exact."""
    m, clean, _, met = setups["llama"]
    ids = clean.model_inputs["input_ids"].clone()
    ids[:, 5] = (ids[:, 5] % 90) + 3                                    # change one token, keep the prefix
    corrupt = Batch({**clean.model_inputs, "input_ids": ids}, clean.query_mask, clean.items)
    sweep = Sweep(m, clean, met, corrupt=corrupt, config=PatchConfig())
    st = sweep.setup(0)
    starts = []
    orig = st["res"].run_rows

    def spy(*a, **kw):
        starts.append(a[4] if len(a) > 4 else kw.get("start", 0))
        return orig(*a, **kw)

    st["res"].run_rows = spy
    fast = sweep.assemble(run_units(sweep.run_unit, sweep.units()))
    assert starts and min(starts) == 5
    naive = patch(m, clean, met, corrupt=corrupt, method="naive")
    torch.testing.assert_close(fast.per_input, naive.per_input, atol=TOL, rtol=0)


@pytest.mark.parametrize("method", ["exact", "naive", "atp", "atp*"])
def test_clean_into_clean_has_zero_effect(setups, method):
    m, clean, _, met = setups["llama"]
    res = patch(m, clean, met, corrupt=clean, method=method, per_position=method in ("exact", "atp"))
    assert torch.equal(res.per_input, torch.zeros_like(res.per_input))
    for v in (res.per_position or {}).values():
        assert torch.equal(v, torch.zeros_like(v))


@pytest.mark.parametrize("family", ["llama", "wav2vec2", "whisper"])
def test_atp_matches_exact_for_a_tiny_perturbation(setups, family):
    """AtP is the first-order term: for corrupt = clean + eps the error shrinks like eps^2
    (float64 copy of the model, so round-off does not hide the trend)."""
    m32, clean, _, met = setups[family]
    m = wb.wrap(copy.deepcopy(m32.hf).double())
    g = torch.Generator().manual_seed(3)
    if family == "llama":
        with torch.no_grad():
            emb = m.hf.get_input_embeddings()(clean.model_inputs["input_ids"])
        base_inputs = {"inputs_embeds": emb, "attention_mask": clean.model_inputs["attention_mask"]}
        field = "inputs_embeds"
    else:
        field = "input_features" if family == "whisper" else "input_values"
        base_inputs = {**clean.model_inputs, field: clean.model_inputs[field].double()}
    base = Batch(base_inputs, clean.query_mask, clean.items)
    noise = torch.randn(base_inputs[field].shape, generator=g, dtype=torch.float64)
    errs = []
    for eps in (1e-2, 1e-3):
        pert = Batch({**base_inputs, field: base_inputs[field] + eps * noise}, clean.query_mask, clean.items)
        exact = patch(m, base, met, corrupt=pert, method="exact")
        atp = patch(m, base, met, corrupt=pert, method="atp")
        scale = exact.per_input.abs().max()
        assert scale > 0
        errs.append(float((atp.per_input - exact.per_input).abs().max() / scale))
    assert errs[1] < 0.02, errs
    assert errs[1] < errs[0] / 5, errs          # relative error ~ eps: the neglected terms are second order


def test_atp_star_last_layer_heads_equal_abs_atp(setups):
    """GradDrop leaves the gradient of a last-layer head unchanged except when its own layer is
    dropped, so AtP* = 1/(L-1) * (L-1) * |AtP| = |AtP| per input for those heads."""
    m, clean, corrupt, met = setups["llama"]
    res = patch(m, clean, met, corrupt=corrupt, method="atp*")
    assert (res.per_input >= 0).all()
    last = max(h.layer for h in res.heads)
    rows = [i for i, h in enumerate(res.heads) if h.layer == last]
    torch.testing.assert_close(res.per_input[rows], res.extra["atp"][rows].abs(), atol=1e-6, rtol=1e-5)
    first = [i for i, h in enumerate(res.heads) if h.layer == 0]
    assert not torch.allclose(res.per_input[first], res.extra["atp"][first].abs())


def test_result_table_and_tensor(setups):
    m, clean, corrupt, met = setups["whisper"]
    res = patch(m, clean, met, corrupt=corrupt, method="atp")
    t = res.table()
    assert len(t) == len(m.heads())
    for col in ("effect", "effect_norm", "rank", "method", "metric", "ablation", "direction"):
        assert f"patch.{col}" in t.columns
    assert set(t["patch.method"]) == {"atp"} and sorted(t["patch.rank"]) == list(range(1, len(t) + 1))
    tensor = res.tensor()
    assert res.streams() == ["encoder", "decoder", "cross"] and tensor.shape == (3, 2, 4)
    h = res.heads[5]
    assert tensor[res.streams().index(h.stream), h.layer, h.head] == res.effect[5]


def test_units_shards_and_resume(setups, tmp_path):
    m, clean, corrupt, met = setups["gpt2"]
    whole = patch(m, clean, met, corrupt=corrupt)
    calls = []

    class Flaky(InProcessExecutor):
        def map(self, fn, units):
            for i, u in enumerate(units):
                if i == 2:
                    raise KeyboardInterrupt
                calls.append(u.id)
                yield u, fn(u)

    kw = dict(corrupt=corrupt, shard_size=1, sites_per_unit=1, store=str(tmp_path / "units"))
    with pytest.raises(KeyboardInterrupt):
        patch(m, clean, met, executor=Flaky(), **kw)
    assert len(calls) == 2 and len(list((tmp_path / "units").glob("*.safetensors"))) == 2
    rerun = []
    res = patch(m, clean, met, executor=InProcessExecutor(lambda i, n, u: rerun.append(u.id)), **kw)
    assert len(rerun) == 4 - 2 and not set(rerun) & set(calls)     # 2 shards x 2 sites, 2 were done
    torch.testing.assert_close(res.per_input, whole.per_input, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="different sweep"):
        patch(m, clean, met, corrupt=corrupt, shard_size=1, sites_per_unit=1, ablation="zero",
              store=str(tmp_path / "units"))
    store = UnitStore(tmp_path / "other", "abc")
    assert not store.done(Sweep(m, clean, met, corrupt=corrupt).units()[0])


def test_errors_say_what_to_do(setups):
    m, clean, corrupt, met = setups["llama"]
    with pytest.raises(ValueError, match="corrupt"):
        patch(m, clean, met)                                            # resample needs corrupt inputs
    with pytest.raises(ValueError, match="unknown method"):
        patch(m, clean, met, corrupt=corrupt, method="magic")
    short = Batch({k: v[:, :-1] for k, v in corrupt.model_inputs.items()}, {}, corrupt.items)
    with pytest.raises(ValueError, match="same length"):
        patch(m, clean, met, corrupt=short)
    with pytest.raises(ValueError, match="has heads"):
        patch(m, clean, met, corrupt=corrupt, heads=[wb.Head("self", 0, 9)])
