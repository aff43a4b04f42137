"""The backend switch (workbench.cuda._backend), Stats through the Triton kernel on tiny
models, and meta.json's record of the backend that ran."""
from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.cuda import _backend
from workbench.cuda import BackendError, KernelFallbackWarning, head_stats
from workbench.errors import UserError

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny import tiny_batch, tiny_hf

HAS_TRITON = __import__("importlib.util").util.find_spec("triton") is not None
CUDA_LIKE = types.SimpleNamespace(device=torch.device("cuda"))   # choose() reads only .device


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv(_backend.ENV, raising=False)
    monkeypatch.setattr(_backend, "_WARNED", set())
    monkeypatch.setattr(_backend, "_USED", {})


def test_requested_from_argument_then_environment(monkeypatch):
    assert _backend.requested() == "auto"
    monkeypatch.setenv(_backend.ENV, "torch")
    assert _backend.requested() == "torch"
    assert _backend.requested("triton") == "triton"
    monkeypatch.setenv(_backend.ENV, "cuda")
    with pytest.raises(UserError, match="environment variable WORKBENCH_BACKEND is 'cuda'; use one of auto"):
        _backend.requested()
    with pytest.raises(UserError, match="^backend is 'fast'"):
        _backend.requested("fast")


def test_auto_runs_the_reference_on_cpu_tensors_without_warning():
    q = torch.randn(1, 2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.choose("head_stats", None, q, q) == "torch"
    assert _backend.used() == {"head_stats": ["torch"]}


def test_auto_warns_once_where_triton_was_expected(monkeypatch):
    monkeypatch.setattr(_backend, "_has_triton", lambda: False)
    with pytest.warns(KernelFallbackWarning, match="Triton is not installed"):
        assert _backend.choose("head_stats", "auto", CUDA_LIKE) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.choose("head_stats", "auto", CUDA_LIKE) == "torch"      # once per reason


def test_explicit_triton_that_cannot_run_raises_with_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 2, 5, 8)
    if HAS_TRITON:
        with pytest.raises(BackendError, match="tensors are on cpu, not a CUDA device"):
            head_stats(q, q, scaling=1.0, backend="triton")
    monkeypatch.setattr(_backend, "_has_triton", lambda: False)
    with pytest.raises(BackendError, match="Triton is not installed"):
        _backend.choose("head_stats", "triton", q)
    assert issubclass(BackendError, UserError)            # one line on the CLI


def test_interpreter_counts_as_able_to_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 2, 5, 8)
    want = "triton" if HAS_TRITON else None
    assert (_backend.triton_unavailable(q) is None) == (want == "triton")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("family", ["llama", "gemma2", "bert"])
def test_stats_through_the_kernel_match_the_reference(family, monkeypatch):
    """A Stats trace with WORKBENCH_BACKEND=triton (GQA + padding, softcap + window,
    bidirectional with padding) equals the default reference within float32 rounding."""
    model = wb.wrap(tiny_hf(family))
    batch = tiny_batch(family, model.hf)
    ref = model.run(batch, capture=[wb.Stats()]).stats
    monkeypatch.setenv(_backend.ENV, "triton")
    got = model.run(batch, capture=[wb.Stats()]).stats
    assert _backend.used() == {"head_stats": ["torch", "triton"]}
    for key, st in ref.items():
        for name, want in st.to_dict().items():
            have = getattr(got[key], name)
            assert have.shape == want.shape and have.dtype == want.dtype, (key, name)
            if name == "row_max_pos":                   # ties may pick another key of equal mass
                continue
            torch.testing.assert_close(have, want, atol=2e-5, rtol=1e-5, msg=f"{key} {name}")


def test_meta_records_the_backend(tmp_path, monkeypatch):
    from workbench.job import JobConfig, trace_job

    cfg = dict(model="minilm-l6", prompts="random", max_prompts=2, max_tokens=12, analyses=["entropy"],
               save_patterns=0, quiet=True)
    out, _ = trace_job(JobConfig(out=tmp_path / "run", **cfg))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] == {"requested": "auto", "ran": {"head_stats": ["torch"]}}
    import jsonschema            # the dev extra installs it

    from workbench import schema

    jsonschema.Draft202012Validator(schema.meta_json_schema()).validate(meta)
    bad = dict(meta, backend={"requested": "cuda", "ran": {}})
    assert not jsonschema.Draft202012Validator(schema.meta_json_schema()).is_valid(bad)
    monkeypatch.setenv(_backend.ENV, "nope")
    with pytest.raises(UserError, match="WORKBENCH_BACKEND is 'nope'"):
        trace_job(JobConfig(out=tmp_path / "bad", **cfg))
    assert not (tmp_path / "bad").exists()
