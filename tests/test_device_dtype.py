"""Device and dtype: requests checked before loading, reduced precision done right.

bfloat16 and float16 run on the CPU, so these run everywhere; tests that need CUDA are
marked ``gpu`` (``pytest -m gpu``) and skipped without it.
"""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from tiny import FAMILIES, tiny_hf, tiny_inputs
from workbench.batch import Batch
from workbench.errors import UserError
from workbench.patching import patch
from workbench.patching.metrics import CosineSimilarity, LogitDiff, last_positions

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
# A pattern recomputed by the workbench (float32) equals HF eager's attentions in the
# model's dtype to within one machine epsilon of that dtype (bfloat16 2^-7, float16 2^-10):
# HF rounds the probabilities to the dtype, and scores rounded in the dtype may differ by
# an ulp between fused and unfused kernels. Measured worst case over the tiny families:
# 6.0e-3 (bfloat16, qwen3), 5.7e-4 (float16, olmo2).
PATTERN_TOL = {dt: torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16)}
# fast (exact) patching replays the naive loop's own computation; measured bit-identical in
# bfloat16 on the tiny models. Stated tolerance: 1e-3 nats (bfloat16 logits hold ~3 digits).
FAST_NAIVE_BF16_TOL = 1e-3


def _eager_attentions(family, inputs, dtype):
    hf = tiny_hf(family, "eager").to(dtype)
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    with torch.no_grad():
        out = hf(**cast, output_attentions=True)
    if family == "whisper":
        return {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
    return {"self": out.attentions}


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_without_cuda_is_one_line_user_error(device):
    with pytest.raises(UserError, match="no CUDA device") as err:
        wb.load("smollm2-135m", device=device)          # refused before any weights are read
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no CUDA device"):
        wb.wrap(tiny_hf("gpt2"), device=device)
    with pytest.raises(UserError, match="no CUDA device"):
        wb.wrap(tiny_hf("gpt2"), device_map={"": device})


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": "int8"}, "unknown dtype"),
    ({"dtype": torch.int64}, "not a floating dtype"),
    ({"device": "tpu:0"}, "device"),
    ({"device": "cpu", "device_map": "auto"}, "not both"),
    ({"device_map": "everywhere"}, "unknown device_map"),
    ({"device_map": {"": "disk"}}, "offload_folder"),
    ({"max_memory": {"cpu": "1GiB"}}, "max_memory is only used with device_map"),
    ({"revision": "main"}, "revision applies to hub ids"),
])
def test_bad_placement_requests_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        wb.load("smollm2-135m", **kwargs)
    assert "\n" not in str(err.value)


def test_wrap_casts_and_records_dtype_and_device():
    model = wb.wrap(tiny_hf("llama"), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu") and model.device_map is None
    assert all(p.dtype == torch.bfloat16 for p in model.hf.parameters())
    tr = model.run(Batch(tiny_inputs("llama", model.hf)), capture=[wb.Stats(), wb.Pattern(), wb.Z()])
    assert tr.logits.dtype == torch.bfloat16 and tr.z[("self", 0)].dtype == torch.bfloat16
    st = tr.stats[("self", 0)]
    assert tr.pattern[("self", 0)].dtype == torch.float32          # statistics accumulate in float32
    assert st.row_entropy.dtype == st.col_sum.dtype == torch.float32


def test_audio_features_are_cast_to_the_model_dtype():
    model = wb.wrap(tiny_hf("whisper"), dtype=torch.float16)
    inputs = tiny_inputs("whisper", model.hf)                     # float32 features
    tr = model.run(Batch(inputs), capture=[wb.Stats("encoder")])
    assert tr.logits.dtype == torch.float16 and torch.isfinite(tr.logits).all()


def test_builtin_honours_dtype_auto_as_the_shipped_weights():
    from workbench.zoo.builtin import BUILTINS

    model = wb.load("whisper-tiny.en", dtype="auto")              # CTranslate2 float16 weights
    assert BUILTINS["whisper-tiny.en"].checkpoint_dtype == "float16" and model.dtype == torch.float16
    assert wb.load("minilm-l6", dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_patterns_equal_hf_eager_in_the_same_dtype(family, dtype):
    model = wb.wrap(tiny_hf(family), dtype=dtype)
    inputs = tiny_inputs(family, model.hf)
    ref = _eager_attentions(family, inputs, dtype)
    trace = model.run(Batch(inputs), capture=[wb.Pattern()])
    assert set(trace.pattern) == {s.key for s in model.sites}
    mask = inputs.get("attention_mask")
    for (stream, layer), pattern in trace.pattern.items():
        want = ref[stream][layer]
        assert want.dtype == dtype and pattern.dtype == torch.float32 and pattern.shape == want.shape
        diff = (pattern - want.float()).abs()
        if mask is not None and stream == "self":
            diff = diff[mask.bool()[:, None, :, None].expand_as(diff)]     # padding query rows aside
        assert diff.max().item() <= PATTERN_TOL[dtype], (stream, layer, diff.max().item())


def _metric(family, inputs, batch):
    if family == "bert":
        return CosineSimilarity(inputs["attention_mask"].float(), torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
    if family == "whisper":
        return LogitDiff(torch.tensor([6, 6]), [3, 4], [5, 6])
    return LogitDiff(last_positions(batch), [3, 4], [5, 6])


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "bert", "whisper"])
def test_fast_patching_equals_naive_in_bfloat16(family):
    model = wb.wrap(tiny_hf(family), dtype="bfloat16")
    inputs = tiny_inputs(family, model.hf)
    qm = {"self": inputs["attention_mask"].bool()} if "attention_mask" in inputs else {}
    batch = Batch(inputs, qm, [{}, {}])
    metric = _metric(family, inputs, batch)
    fast = patch(model, batch, metric, ablation="zero", method="exact")
    naive = patch(model, batch, metric, ablation="zero", method="naive")
    assert fast.per_input.dtype == torch.float32                  # metrics in float32
    assert naive.per_input.abs().max() > 1e-4                     # the heads do move the metric
    assert (fast.per_input - naive.per_input).abs().max().item() <= FAST_NAIVE_BF16_TOL


def test_smollm2_bf16_finds_the_fp32_sink_and_low_entropy_heads(builtin):
    """Top-10 first-token sink heads (alpha1, Gu et al. 2024) and top-10 lowest mean-entropy
    heads of smollm2-135m in bfloat16 are the same sets as in float32 (measured: 10/10 each)."""
    from workbench.analyses.entropy import entropy_table
    from workbench.analyses.sinks import sinks_table
    from workbench.inputs import natural_passages

    tops = {}
    for model in (builtin("smollm2-135m"), wb.load("smollm2-135m", dtype="bfloat16")):
        batch = model.prepare(natural_passages(4), max_tokens=64)
        trace = model.run(batch, capture=[wb.Stats()])
        sinks, ent = sinks_table(trace.stats, trace.query_mask), entropy_table(trace.stats, trace.query_mask)
        heads = lambda df: {(int(l), int(h)) for l, h in zip(df["layer"], df["head"])}  # noqa: E731
        tops[model.dtype] = heads(sinks.nlargest(10, "sinks.alpha1")), heads(ent.nsmallest(10, "entropy.mean_nats"))
    assert tops[torch.bfloat16][0] == tops[torch.float32][0]
    assert tops[torch.bfloat16][1] == tops[torch.float32][1]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", ["llama", "whisper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_on_cuda_captures_and_patching_match_the_cpu(family, dtype):
    cpu = wb.wrap(tiny_hf(family), dtype=dtype)
    gpu_model = wb.wrap(tiny_hf(family), dtype=dtype, device="cuda")
    assert gpu_model.device.type == "cuda"
    inputs = tiny_inputs(family, cpu.hf)                          # CPU tensors: run moves them
    qm = {"self": inputs["attention_mask"].bool()} if "attention_mask" in inputs else {}
    batch = Batch(inputs, qm, [{}, {}])
    a = cpu.run(batch, capture=[wb.Pattern(), wb.Stats()])
    b = gpu_model.run(batch, capture=[wb.Pattern(), wb.Stats()])
    tol = 1e-4 if dtype == torch.float32 else PATTERN_TOL[dtype]
    for key, p in a.pattern.items():
        assert b.pattern[key].device.type == "cuda"
        assert (b.pattern[key].cpu() - p).abs().max().item() <= tol, key
        assert (b.stats[key].col_sum.cpu() - a.stats[key].col_sum).abs().max().item() <= 10 * tol, key
    metric = _metric(family, inputs, batch)
    fast = patch(gpu_model, batch, metric, ablation="zero", method="exact")
    naive = patch(gpu_model, batch, metric, ablation="zero", method="naive")
    assert fast.per_input.device.type == "cpu"                   # results come back on the CPU
    assert (fast.per_input - naive.per_input).abs().max().item() <= (1e-5 if dtype == torch.float32 else 1e-2)



def test_cli_device_and_dtype_reach_the_model_and_meta_json(tmp_path, capsys):
    import json

    from workbench.cli import main

    out = tmp_path / "run"
    code = main(["run", "minilm-l6", "--dtype", "bfloat16", "--device", "cpu", "--max-prompts", "2",
                 "--max-tokens", "8", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    model = json.loads((out / "meta.json").read_text())["model"]
    assert (model["dtype"], model["device"], model["device_map"]) == ("bfloat16", "cpu", None)
    if not HAS_CUDA:
        for cmd in ("run", "patch", "prune"):
            capsys.readouterr()
            code = main([cmd, "smollm2-135m", "--device", "cuda", "--out", str(tmp_path / f"cuda-{cmd}"), "--quiet"])
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert code == 2 and len(err) == 1 and "no CUDA device" in err[0], (cmd, err)
            assert not (tmp_path / f"cuda-{cmd}").exists()
