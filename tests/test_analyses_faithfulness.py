"""Faithfulness panel (Abnar & Zuidema 2020, Table 1) and ACT calibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.analyses import Context, act, faithfulness
from workbench.inputs import natural_passages


def test_faithfulness_panel_on_minilm():
    model = wb.load("minilm-l6")
    batch = model.prepare(natural_passages(3, seed=1), max_tokens=16)
    res = faithfulness.ANALYSIS.run(Context(model, batch, {"max_inputs": 3}))
    tab = res.tables["faithfulness"]
    assert len(tab) == 6 * 3 * 2
    assert set(tab["method"]) == set(faithfulness.METHODS) and set(tab["reference"]) == set(faithfulness.REFERENCES)
    assert tab["spearman"].between(-1, 1).all()
    l0 = tab[tab["layer"] == 0].set_index(["method", "reference"])["spearman"]
    assert l0["flow", "grad"] == pytest.approx(l0["rollout", "grad"], abs=1e-6)   # coincide at layer 1
    # Input-gradient importance agrees with raw attention better than chance in upper layers.
    assert tab[(tab["method"] == "raw") & (tab["reference"] == "grad") & (tab["layer"] >= 3)]["spearman"].mean() > 0.2
    with pytest.raises(ValueError, match="text models"):
        faithfulness.faithfulness_table(wb.load("whisper-tiny.en"), None)


def test_token_importance_blankout_and_gradient_on_smollm2():
    model = wb.load("smollm2-135m")
    ids = model.tokenizer("The capital of France is")["input_ids"]
    blank, grad = faithfulness.token_importance(model, ids)
    assert blank.shape == grad.shape == (len(ids),)
    assert (grad > 0).all() and blank.argmax() in (2, 3)              # " France" / " of" decide " Paris"


def test_act_calibration_keeps_rows_stochastic_and_scales_sinks():
    fn = act.calibrate_fn(beta=0.4)
    t = 60                                                            # uniform causal rows: alpha_k < 0.1 ...
    a = torch.rand(2, t, t) * 0.2 + 1
    a = a * torch.tril(torch.ones(t, t))
    a[:, 3:, 3] += 30.0                                               # ... except key 3, a hidden sink
    a = a / a.sum(-1, keepdim=True)
    out = fn(a, 0)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, t))
    torch.testing.assert_close(out[:, 3:, 3], 0.4 * a[:, 3:, 3])
    torch.testing.assert_close(out[:, 3:, 1] / a[:, 3:, 1], out[:, 3:, 2] / a[:, 3:, 2])  # others scaled alike
    torch.testing.assert_close(out[:, :3], a[:, :3])                  # rows that do not see the sink: unchanged
    assert (out[:, :, 0] >= a[:, :, 0]).all()                         # first token never calibrated down


def test_act_on_smollm2_reports_loss_change_per_set():
    model = wb.load("smollm2-135m")
    batch = model.prepare(natural_passages(1), max_tokens=32)
    res = act.ANALYSIS.run(Context(model, batch, {}))
    sets = res.summary["sets"]
    assert set(sets) == {"early", "middle", "late", "all"} and sets["all"]["n_heads"] > 0
    assert all(np.isfinite(v["loss_change_nats"]) for v in sets.values())
    assert abs(sets["all"]["loss_change_nats"]) < 1.0
    assert act.applies(wb.load("minilm-l6")) is not None
