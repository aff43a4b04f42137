"""Hidden sinks, massive activations and the head taxonomy on real models."""
from __future__ import annotations

import pytest

import workbench as wb
from workbench.analyses import Context, registry
from workbench.analyses import hidden_sinks, massive, taxonomy
from workbench.inputs import natural_passages


@pytest.fixture(scope="module")
def smol():
    return wb.load("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return wb.load("minilm-l6")


def test_new_analyses_are_registered():
    names = set(registry())
    assert {"hidden_sinks", "massive", "rollout", "flow", "retrieval", "alignment", "encoder_heads", "taxonomy",
            "kv_plan", "faithfulness"} <= names


def test_massive_activations_on_smollm2_sit_on_first_token_at_fixed_dims(smol):
    batch = smol.prepare(natural_passages(2), max_tokens=32)
    res = massive.ANALYSIS.run(Context(smol, batch, {}))
    tab = res.table, res.tables["massive"]
    t = tab[1]
    assert len(t) > 0
    assert (t["value"].abs() > 100).all() and (t["ratio"] >= 1000).all()
    assert set(t["position"]) == {0}                     # Sun et al.: on the first token
    assert len(set(t["dim"])) <= 3                       # at a few fixed feature dimensions
    assert set(t["input"]) == {0, 1}
    # The heads that attend most to the massive-activation token are the sink heads.
    a = tab[0]["massive.alpha_on_massive"]
    assert a.max() > 0.9 and a.median() > 0.3


def test_massive_none_in_minilm_and_thresholds_respected(minilm):
    batch = minilm.prepare(natural_passages(2), max_tokens=32)
    states = massive.hidden_states(minilm, batch)
    assert len(states["self"]) == 7
    assert len(massive.find_massive(states, batch.query_mask)) == 0   # post-LN BERT: no massive entries
    loose = massive.find_massive(states, batch.query_mask, min_abs=1.0, ratio=5.0)
    assert len(loose) > 0 and (loose["value"].abs() > 1).all()


def test_hidden_sinks_on_smollm2(smol):
    batch = smol.prepare(natural_passages(3), max_tokens=64)
    res = hidden_sinks.ANALYSIS.run(Context(smol, batch, {}))
    heads, sinks = res.table, res.tables["hidden_sinks"]
    assert len(heads) == 270 and len(sinks) > 0
    assert (sinks["position"] > 0).all() and (sinks["alpha"] > 0.1).all()
    # A hidden sink position must be seen by >= min_queries valid queries.
    lengths = batch.query_mask["self"].sum(1)
    assert all(p <= int(lengths[i]) - 4 for i, p in zip(sinks["input"], sinks["position"]))
    # The tokens are named and low-semantic tokens dominate (ACT).
    top = [d["token"] for d in res.summary["most_common_sink_tokens"]]
    assert any(t.strip() in {"the", ".", ",", "a", "of", "and"} for t in top)
    with pytest.raises(ValueError, match="threshold"):
        hidden_sinks.hidden_sink_positions({}, {}, threshold=1.5)


def test_taxonomy_classifies_every_head(smol, minilm):
    batch = smol.prepare(natural_passages(2), max_tokens=32)
    tab = taxonomy.taxonomy_table(smol, batch, retrieval_grid="none")
    assert len(tab) == 270 and set(tab["taxonomy.type"]) <= set(taxonomy.ORDER)
    assert (tab["taxonomy.type"] == "induction").sum() >= 1          # SmolLM2 has induction heads
    assert tab.loc[tab["taxonomy.type"] == "induction", "taxonomy.induction"].min() > 0.4
    assert (tab["taxonomy.type"] == "sink").sum() > 100               # strong first-token sinks
    b2 = minilm.prepare(natural_passages(2), max_tokens=32)
    t2 = taxonomy.ANALYSIS.run(Context(minilm, b2, {}))
    assert t2.table["taxonomy.induction"].isna().all()                 # not a causal stack
    assert t2.summary["thresholds"] == taxonomy.THRESHOLDS
    # the known previous/next-token head of MiniLM layer 0
    assert (t2.table[t2.table["layer"] == 0]["taxonomy.type"] == "local").any()
