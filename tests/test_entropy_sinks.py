"""Entropy and sink analyses: exact on constructed patterns, and real behaviour on real models."""
from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench.analyses import entropy_table, sink_rate, sinks_table
from workbench.capture import reduce_pattern


def _causal(t):
    return torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None]


def _stats(pattern, allowed, qmask=None):
    return {("self", 0): reduce_pattern(pattern, allowed, qmask)}


def test_uniform_causal_rows_have_normalised_entropy_one():
    t = 9
    allowed = _causal(t)
    p = allowed.float().expand(1, 2, t, t) / allowed.float().sum(-1, keepdim=True)
    table = entropy_table(_stats(p, allowed), {})
    # row 0 sees one key and is skipped; rows i = 2..t (1-indexed) have H = ln i
    expected = sum(math.log(i) for i in range(2, t + 1)) / (t - 1)
    assert table["entropy.mean_nats"].tolist() == pytest.approx([expected] * 2, abs=1e-6)
    assert table["entropy.mean_norm"].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (table["entropy.n_rows"] == t - 1).all()


def test_one_hot_rows_have_zero_entropy_and_padding_rows_are_skipped():
    t = 6
    allowed = _causal(t)
    p = torch.zeros(2, 1, t, t)
    p[..., 0] = 1.0                                     # everything attends to the first token
    p[1, 0, 4:] = allowed[0, 0, 4:].float() / allowed[0, 0, 4:].float().sum(-1, keepdim=True)  # "padding" rows
    qmask = torch.ones(2, t, dtype=torch.bool)
    qmask[1, 4:] = False
    table = entropy_table(_stats(p, allowed, qmask), {"self": qmask})
    assert table["entropy.mean_nats"].item() == pytest.approx(0.0, abs=1e-7)
    assert table["entropy.n_rows"].item() == (t - 1) + 3


def test_sink_alpha_follows_gu_et_al():
    t = 8
    allowed = _causal(t)
    p = torch.zeros(1, 1, t, t)
    p[0, 0, 0, 0] = 1.0
    for i in range(1, t):                               # half on the first token, rest uniform
        p[0, 0, i, 0] = 0.5
        p[0, 0, i, 1:i + 1] = 0.5 / i
    table = sinks_table(_stats(p, allowed), {}, epsilon=0.3, min_queries=2)
    assert table["sinks.alpha1"].item() == pytest.approx((1 + 0.5 * (t - 1)) / t)
    assert bool(table["sinks.is_sink"].item()) and table["sinks.sink_frac"].item() == 1.0
    brute = [p[0, 0, k:, k].sum().item() / (t - k) for k in range(1, t - 1)]   # keys with >= 2 queries
    assert table["sinks.top_pos"].item() == 1 + max(range(len(brute)), key=brute.__getitem__)
    assert table["sinks.top_alpha"].item() == pytest.approx(max(brute))
    with pytest.raises(ValueError, match="epsilon"):
        sinks_table(_stats(p, allowed), {}, epsilon=1.5)


def test_smollm2_has_strong_first_token_sinks_on_natural_text(builtin):
    from workbench.inputs import natural_passages

    model = builtin("smollm2-135m")
    batch = model.prepare(natural_passages(4), max_tokens=64)
    trace = model.run(batch, capture=[wb.Stats()])
    table = sinks_table(trace.stats, trace.query_mask)
    ent = entropy_table(trace.stats, trace.query_mask)
    assert len(table) == 270 and len(ent) == 270
    assert sink_rate(table)["self"] > 30.0               # published: SmolLM2 sinks strongly on token 0
    sink_heads = table[table["sinks.is_sink"]].merge(ent, on=["stream", "layer", "head"])
    others = table[~table["sinks.is_sink"]].merge(ent, on=["stream", "layer", "head"])
    assert sink_heads["entropy.mean_norm"].mean() < others["entropy.mean_norm"].mean()


def test_whisper_encoder_analyses_use_only_real_frames(builtin):
    from workbench.inputs import builtin_clips, load_audio

    model = builtin("whisper-tiny.en")
    clip = builtin_clips()[0]
    batch = model.prepare_audio([load_audio(clip)], paths=[clip])
    trace = model.run(batch, capture=[wb.Stats("encoder")])
    n_real = batch.items[0]["n_frames"]
    ent = entropy_table(trace.stats, trace.query_mask)
    assert (ent["entropy.n_rows"] == n_real).all()
    sinks = sinks_table(trace.stats, trace.query_mask)
    assert (sinks["sinks.top_pos"] < n_real).all()


def test_an_analysis_is_callable_with_its_defaults_and_overrides():
    """``registry()[name](model, batch, **params)`` runs like ``workbench run`` does: defaults
    updated by params; a parameter it lacks or a model it does not apply to is refused."""
    from tiny import tiny_batch, tiny_hf

    from workbench.analyses import Context, registry

    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    sinks = registry()["sinks"]
    for params in ({}, {"epsilon": 0.05}):
        got = sinks(model, batch, **params).table
        want = sinks.run(Context(model, batch, {**sinks.defaults, **params})).table
        assert got.equals(want)
    loose, strict = sinks(model, batch, epsilon=0.05).table, sinks(model, batch, epsilon=0.9).table
    assert loose["sinks.is_sink"].sum() >= strict["sinks.is_sink"].sum()
    with pytest.raises(ValueError, match="no parameter.*thresh.*epsilon"):
        sinks(model, batch, thresh=0.5)
    with pytest.raises(ValueError, match="alignment does not apply"):
        registry()["alignment"](model, batch)


def test_sink_heads_and_sink_rate_use_one_definition():
    """A head that sinks strongly on one input of three has mean alpha1 > epsilon but is a
    sink on a minority of inputs: it is not a sink head, and the rate counts exactly the
    ``is_sink`` heads (before: is_sink from the mean alpha1, rate from the per-input mean)."""
    t = 16
    allowed = _causal(t)
    uniform = allowed.float() / allowed.float().sum(-1, keepdim=True)     # alpha1 = H_16 / 16 ~ 0.21
    first = torch.zeros(1, 1, t, t)
    first[..., 0] = 1.0                                                    # alpha1 = 1
    head0 = torch.cat([first, uniform, uniform])                           # [input, 1, t, t]
    head1 = torch.cat([first, first, uniform])
    p = torch.cat([head0, head1], dim=1)                                   # [3 inputs, 2 heads, t, t]
    table = sinks_table(_stats(p, allowed), {}, epsilon=0.3)
    alpha_uniform = sum(1 / i for i in range(1, t + 1)) / t
    assert alpha_uniform < 0.3 < (1 + 2 * alpha_uniform) / 3                 # the case the old code split
    assert table["sinks.alpha1"].tolist() == pytest.approx([(1 + 2 * alpha_uniform) / 3, (2 + alpha_uniform) / 3])
    assert table["sinks.sink_frac"].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert table["sinks.is_sink"].tolist() == [False, True]
    assert sink_rate(table)["self"] == pytest.approx(50.0)


def test_sinks_summary_rate_is_the_mean_of_is_sink():
    from tiny import tiny_batch, tiny_hf

    from workbench.analyses import registry

    model = wb.wrap(tiny_hf("llama"))
    batch = tiny_batch("llama", model.hf)
    for eps in (0.05, 0.2, 0.5):
        res = registry()["sinks"](model, batch, epsilon=eps)
        is_sink = res.table["sinks.is_sink"]
        assert res.summary["sink_rate_percent"]["self"] == round(100 * is_sink.mean(), 2)
        assert "more than half" in res.summary["sink_head_rule"]
        frac = res.table["sinks.sink_frac"]
        assert res.summary["per_input_rate_percent"]["self"] == pytest.approx(100 * frac.mean(), abs=0.006)
