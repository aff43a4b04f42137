"""Definition oracles for activation patching (issue 11, part 1).

Every expected effect here is built directly from ``Model.run`` with ``SetZ`` edits and the
metric, written out in the test: no ``Sweep``, no ``_source`` / ``_base_batch``, no
``Ablate``, no ``Model.mean_z``. The engine's fast path (``exact``) and its naive loop
(``naive``) must both equal it, for every ablation x direction x (per head | per head and
position), on a tiny random model of every family and on smollm2-135m.

Definitions (shared/METHODS.md; Heimersheim & Nanda 2024, "How to use and interpret
activation patching"; Zhang & Nanda 2024, "Towards best practices of activation patching"),
for a head h of the patched set H and input i, M the metric:

    noising   resample   M(clean; z_h := z_h(corrupt)) - M(clean)
    noising   zero/mean  M(clean; z_h := a_h)          - M(clean)
    denoising resample   M(corrupt; z_h := z_h(clean)) - M(corrupt)
    denoising zero/mean  M(clean; z_g := a_g for g in H, g != h; z_h := z_h(clean))
                         - M(clean; z_g := a_g for every g in H)

with a_h = 0 (zero) or the mean of z_h over every *valid* (non-padding) position of every
clean input (mean). Per position, only query position q of z_h takes the patched value; the
other positions keep the base run's z_h (the ablation value in the ablated base run).
"""
from __future__ import annotations

import math

import pytest
import torch

from workbench import tasks
from workbench.capture import SetZ, Z
from workbench.patching import patch
from test_patching import metric_for, pair, sharpened
from tiny import FAMILIES, TEXT

TOL = 1e-5
CONFIGS = [(a, d, p) for a in ("zero", "mean", "resample") for d in ("noising", "denoising") for p in (False, True)]


# -- the oracle -------------------------------------------------------------------------------
def z_of(model, batch, heads) -> dict:
    """z of each head in one unedited run: {head: [n, pos, d_head]}."""
    with torch.no_grad():
        tr = model.run(batch, capture=[Z(sorted({h.site_key for h in heads}))])
    return {h: tr.z[h.site_key][:, :, h.head] for h in heads}


def valid_mask(batch, head, t: int) -> torch.Tensor:
    """Real query positions of the head's stream, bool [n, t] (all True without a mask)."""
    mask = batch.model_inputs.get("attention_mask")
    if head.stream not in ("self",) or mask is None:
        n = next(v for v in batch.model_inputs.values() if torch.is_tensor(v)).shape[0]
        return torch.ones(n, t, dtype=torch.bool)
    return mask.bool()


def hand_mean(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of z [n, pos, d] over the valid positions, written out as a loop: [d]."""
    rows = [z[i, q].double() for i in range(z.shape[0]) for q in range(z.shape[1]) if valid[i, q]]
    return (sum(rows) / len(rows)).to(z.dtype)


def metric_of(model, batch, metric, edits=()) -> torch.Tensor:
    with torch.no_grad():
        return metric.evaluate(model.run(batch, edits=list(edits)).output).float()


def oracle(model, clean, corrupt, metric, heads, ablation, direction, per_position, positions=None):
    """Expected effects: {head: [n]} or, per position, {head: [n, pos]} (0 at padding; NaN at
    positions not in ``positions`` when given)."""
    z_clean = z_of(model, clean, heads)
    z_corrupt = z_of(model, corrupt, heads)
    ablated = {}
    for h in heads:
        z = z_clean[h]
        ablated[h] = (torch.zeros_like(z) if ablation == "zero"
                      else hand_mean(z, valid_mask(clean, h, z.shape[1])).expand_as(z).clone())
    if direction == "noising":
        base, base_edits = clean, {}
        source = z_corrupt if ablation == "resample" else ablated
        base_z = z_clean
    elif ablation == "resample":
        base, base_edits, source, base_z = corrupt, {}, z_clean, z_corrupt
    else:
        base, base_edits, source, base_z = clean, dict(ablated), z_clean, ablated
    m_base = metric_of(model, base, metric, [SetZ(g, v) for g, v in base_edits.items()])
    out = {}
    for h in heads:
        def effect(value):
            edits = {**base_edits, h: value}
            return metric_of(model, base, metric, [SetZ(g, v) for g, v in edits.items()]) - m_base

        if not per_position:
            out[h] = effect(source[h])
            continue
        n, t = base_z[h].shape[:2]
        valid = valid_mask(base, h, t)
        eff = torch.zeros(n, t) if positions is None else torch.full((n, t), float("nan"))
        for q in range(t) if positions is None else positions:
            value = base_z[h].clone()
            value[:, q] = source[h][:, q]
            eff[:, q] = effect(value) * valid[:, q]
        out[h] = eff
    return out


def check(model, clean, corrupt, metric, heads, ablation, direction, per_position, atol=TOL,
          methods=("exact", "naive"), positions=None):
    """Engine paths ``methods`` == the oracle (per position: at ``positions``, default all);
    returns the oracle's effects."""
    want = oracle(model, clean, corrupt, metric, heads, ablation, direction, per_position, positions)
    kw = dict(corrupt=corrupt, heads=heads, ablation=ablation, direction=direction, per_position=per_position)
    for method in methods:
        res = patch(model, clean, metric, method=method, **kw)
        assert res.heads == heads
        if per_position:
            for h in heads:
                row = [g for g in heads if g.site_key == h.site_key].index(h)
                got, exp = res.per_position[h.site_key][row], want[h]
                if positions is not None:
                    got, exp = got[:, positions], exp[:, positions]
                torch.testing.assert_close(got, exp, atol=atol, rtol=0, msg=lambda m: f"{method} {h.name}: {m}")
            if positions is not None:
                continue
            expected_per_input = torch.stack([want[h].sum(1) for h in heads])
        else:
            expected_per_input = torch.stack([want[h] for h in heads])
        torch.testing.assert_close(res.per_input, expected_per_input, atol=atol, rtol=0,
                                   msg=lambda m: f"{method}: {m}")
    if positions is not None:
        want = {h: w[:, positions] for h, w in want.items()}
    return want


def assert_changes_matter(model, clean, corrupt, heads, want, ablation, per_position):
    """Effects are non-zero where the corruption (or the ablation) changes the head (per
    position: one position of a head may move the metric by round-off only, e.g. one of 30
    encoder frames of tiny Whisper, so only the largest is held to the threshold)."""
    z_clean, z_corrupt = z_of(model, clean, heads), z_of(model, corrupt, heads)
    for h in heads:
        if ablation == "resample" and torch.equal(z_clean[h], z_corrupt[h]):
            assert want[h].abs().max() == 0, h.name
            continue
        assert want[h].abs().max() > (0 if per_position else 1e-4), f"{h.name}: effect {want[h]} too small"
    assert max(float(w.abs().max()) for w in want.values()) > 1e-4


def two_heads(model):
    """Head 1 of the first site and head 2 of the last (different layers, streams, kv groups)."""
    hs = model.heads()
    first, last = hs[0].site_key, hs[-1].site_key
    return sorted([next(h for h in hs if h.site_key == first and h.head == 1),
                   next(h for h in hs if h.site_key == last and h.head == 2)])


# -- tiny models of every family ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setups():
    cache = {}

    def get(family):
        if family not in cache:
            m = sharpened(family)
            clean, corrupt = pair(family, m)
            cache[family] = (m, clean, corrupt, metric_for(family, m, clean))
        return cache[family]
    return get


@pytest.mark.parametrize("ablation,direction,per_position", CONFIGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_equals_definition_tiny(tiny_setups, family, ablation, direction, per_position):
    m, clean, corrupt, met = tiny_setups(family)
    heads = two_heads(m)
    want = check(m, clean, corrupt, met, heads, ablation, direction, per_position)
    assert_changes_matter(m, clean, corrupt, heads, want, ablation, per_position)


@pytest.mark.parametrize("family", TEXT)
def test_mean_is_over_valid_positions_only(tiny_setups, family):
    """With padding present, the mean ablation value is the mean over real positions: the
    engine's effect equals the oracle built from the hand mean, and differs from the one built
    from the mean over every position (padding included)."""
    m, clean, corrupt, met = tiny_setups(family)
    mask = clean.model_inputs["attention_mask"].bool()
    assert not mask.all(), "the test needs padding"
    heads = two_heads(m)
    z = z_of(m, clean, heads)
    res = patch(m, clean, met, corrupt=corrupt, heads=heads, ablation="mean", method="naive")
    for i, h in enumerate(heads):
        valid = hand_mean(z[h], mask)
        with_pad = z[h].double().mean((0, 1)).to(z[h].dtype)
        assert (valid - with_pad).abs().max() > 1e-3
        m_clean = metric_of(m, clean, met)
        right = metric_of(m, clean, met, [SetZ(h, valid.expand_as(z[h]))]) - m_clean
        wrong = metric_of(m, clean, met, [SetZ(h, with_pad.expand_as(z[h]))]) - m_clean
        torch.testing.assert_close(res.per_input[i], right, atol=TOL, rtol=0)
        assert (res.per_input[i] - wrong).abs().max() > 10 * TOL


def hand_rank(effects: list[float]) -> list[int]:
    """1 = largest |effect|, ties broken by order, written out."""
    return [1 + sum(abs(o) > abs(e) or (abs(o) == abs(e) and j < i) for j, o in enumerate(effects))
            for i, e in enumerate(effects)]


@pytest.mark.parametrize("ablation,direction", [("resample", "noising"), ("resample", "denoising"),
                                                ("zero", "noising"), ("mean", "denoising")])
def test_rank_and_normalised_effect(tiny_setups, ablation, direction):
    """Every head of a tiny gpt2: rank (1 = largest |effect|) and effect / (M(corrupt) - M(clean))
    (noising; the opposite sign for denoising; NaN without a corrupt reference) by hand."""
    m, clean, corrupt, met = tiny_setups("gpt2")
    heads = m.heads()
    res = patch(m, clean, met, corrupt=corrupt, ablation=ablation, direction=direction)
    want = oracle(m, clean, corrupt, met, heads, ablation, direction, False)
    effects = [float(want[h].mean()) for h in heads]
    assert len({round(abs(e), 6) for e in effects}) == len(effects)          # no ties: the order is tested
    table = res.table()
    assert list(table["patch.rank"]) == hand_rank(effects)
    assert int(table["patch.rank"][max(range(len(heads)), key=lambda i: abs(effects[i]))]) == 1
    m_clean, m_corrupt = float(metric_of(m, clean, met).mean()), float(metric_of(m, corrupt, met).mean())
    if ablation == "resample":
        norm = (m_corrupt - m_clean) if direction == "noising" else (m_clean - m_corrupt)
        assert abs(norm) > 1e-3
        for e, got in zip(effects, table["patch.effect_norm"]):
            assert math.isclose(got, e / norm, rel_tol=1e-4, abs_tol=1e-6)
    else:
        assert table["patch.effect_norm"].isna().all()


def test_rank_hand_helper():
    assert hand_rank([0.1, -0.5, 0.3, 0.0]) == [3, 1, 2, 4]


# -- smollm2-135m ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_ioi(builtin):
    m = builtin("smollm2-135m")
    task = tasks.build(m, "ioi", n=2)
    return m, task


@pytest.mark.parametrize("ablation,direction,per_position", CONFIGS)
def test_engine_equals_definition_smollm2(smol_ioi, ablation, direction, per_position):
    """Per head: fast and naive paths. Per (head, position), to keep the 30-layer model cheap:
    one head, the fast path (fast == naive per position on smollm2 is test_patching_real's),
    the oracle at the first position, the first position where clean and corrupt differ, the
    one after and the last."""
    from workbench import Head

    m, task = smol_ioi
    heads = [Head("self", 9, 6), Head("self", 20, 0)]
    kw = {}
    if per_position:
        heads = heads[1:]
        ids_c, ids_x = task.clean.model_inputs["input_ids"], task.corrupt.model_inputs["input_ids"]
        first = int(torch.nonzero((ids_c != ids_x).any(0))[0])
        kw = dict(methods=("exact",), positions=sorted({0, first, first + 1, ids_c.shape[1] - 1}))
    want = check(m, task.clean, task.corrupt, task.metric, heads, ablation, direction, per_position, atol=1e-4, **kw)
    assert_changes_matter(m, task.clean, task.corrupt, heads, want, ablation, per_position)
