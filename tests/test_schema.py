"""The run-folder schema lives in workbench/schema.py only: one definition of each constant,
a JSON Schema that every writer's meta.json satisfies, version rules, one rollout."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from real_runs import real_runs
from workbench import _rollout, schema
from workbench.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("workbench", "analyses", "app") for p in (ROOT / d).rglob("*.py")]
SCHEMA_NAMES = {"SCHEMA_VERSION", "MIN_SCHEMA_VERSION", "HEAD_KEYS", "SAMPLE_RATE", "WHISPER_FRAMES_PER_SECOND",
                "WHISPER_SAMPLES_PER_FRAME", "MEL_FRAMES_PER_SECOND", "ENCODER_FPS", "MEL_FPS", "FPS"}


def _literal(node) -> bool:
    return isinstance(node, (ast.Constant, ast.List, ast.Tuple)) and all(
        isinstance(n, ast.Constant) for n in ast.walk(node) if n is not node and not isinstance(n, ast.Load))


def test_schema_constants_and_rollout_are_defined_once():
    literals, rates, rollouts = [], [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _literal(node.value):
                literals += [(rel, t.id) for t in node.targets if isinstance(t, ast.Name) and t.id in SCHEMA_NAMES]
            if isinstance(node, ast.Constant) and node.value in (16000, 16_000) and not isinstance(node.value, bool):
                rates.append(rel)
            if isinstance(node, ast.FunctionDef) and node.name in ("rollout", "residual_matrices"):
                rollouts.append((rel, ast.unparse(node)))
    assert {r for r, _ in literals} == {"workbench/schema.py"}, literals
    assert rates == ["workbench/schema.py"], rates
    # analyses/rollout.py wraps the numpy definition; it defines no arithmetic of its own
    assert {r for r, _ in rollouts} == {"workbench/_rollout.py", "analyses/rollout.py"}
    assert all("_rollout." in src for r, src in rollouts if r == "analyses/rollout.py")


def test_schema_and_readers_import_no_torch():
    code = ("import sys, workbench.schema, workbench._rollout, workbench.app.run, workbench.app.store, "
            "workbench.app.metrics; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_writer_meta_satisfies_the_json_schema(tmp_path_factory):
    runs = real_runs(tmp_path_factory)
    assert {"run", "patch", "prune"} <= set(runs)
    validator = jsonschema.Draft202012Validator(schema.meta_json_schema())
    validator.check_schema(schema.meta_json_schema())
    for kind, folder in runs.items():
        meta = json.loads((folder / "meta.json").read_text())
        errors = [e.message for e in validator.iter_errors(meta)]
        assert not errors, (kind, errors)
        assert meta["schema_version"] == schema.SCHEMA_VERSION
        assert meta["packages"]["python"] and meta["model"]["family"]
    bad = json.loads((runs["run"] / "meta.json").read_text())
    bad["inputs"]["kind"] = "video"
    del bad["model"]["name"]
    assert len(list(validator.iter_errors(bad))) == 2          # the schema can fail


@pytest.mark.parametrize("version", [2, "2.0", 17])
def test_a_newer_major_version_is_refused_in_one_line(version):
    with pytest.raises(UserError, match=r"^run 'x' has schema_version .*newer than the 1.*upgrade workbench") as e:
        schema.check_schema_version({"schema_version": version}, "run 'x'")
    assert "\n" not in str(e.value)


def test_older_and_minor_versions_are_read(monkeypatch):
    assert schema.check_schema_version({"schema_version": 1}) == 1
    assert schema.check_schema_version({"schema_version": "1.3"}) == 1       # a newer minor: additions only
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)                          # a future workbench reads 1 and 2
    assert schema.check_schema_version({"schema_version": 1}) == 1
    assert schema.check_schema_version({"schema_version": 2}) == 2
    monkeypatch.setattr(schema, "MIN_SCHEMA_VERSION", 2)
    with pytest.raises(UserError, match="older than the oldest"):
        schema.check_schema_version({"schema_version": 1})
    for bad in ({"schema_version": "one"}, {"schema_version": True}, {}):
        with pytest.raises(UserError):
            schema.check_schema_version(bad)


def test_dashboard_reader_refuses_a_newer_version():
    from workbench.app.run import RunError, validate_meta

    meta = {"schema_version": 2, "model": {"name": "m"}, "inputs": {"items": []}}
    with pytest.raises(RunError, match="schema_version 2, newer"):
        validate_meta("r", meta)
    assert validate_meta("r", {**meta, "schema_version": 1}) is not None


def _hand_rollout(layers):
    """Abnar & Zuidema 2020 by explicit loops over python floats."""
    t = len(layers[0][0])
    r = [[float(i == j) for j in range(t)] for i in range(t)]
    out = []
    for heads in layers:
        a = [[sum(h[i][j] for h in heads) / len(heads) for j in range(t)] for i in range(t)]
        a = [[v / sum(row) for v in row] for row in a]
        a = [[0.5 * a[i][j] + 0.5 * (i == j) for j in range(t)] for i in range(t)]
        a = [[v / sum(row) for v in row] for row in a]
        r = [[sum(a[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
        out.append(r)
    return np.array(out)


def test_one_rollout_matches_a_hand_computation_in_the_app_and_the_analysis():
    from workbench.analyses.rollout import residual_matrices, rollout

    rng = np.random.default_rng(0)
    p = np.tril(rng.random((3, 2, 5, 5)))
    p[:, :, :, :] /= p.sum(-1, keepdims=True)
    p[1] *= 0.7                      # cropped rows that lost mass: renormalised before the residual
    want = _hand_rollout(p.tolist())
    np.testing.assert_allclose(_rollout.rollout_from_patterns(list(p)), want, atol=1e-12)
    got = rollout(residual_matrices(torch.tensor(p).mean(1)))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
