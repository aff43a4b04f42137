"""Dataset-scale statistics (``workbench.dataset_stats``): entropy and sink head tables from
sums and counts per chunk of prompts, merged, checked against a hand computation from HF
eager attention (``output_attentions=True``), against the per-input path of ``workbench
run``, across chunk sizes, and resumed from recorded units."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

N_PROMPTS = 200
COLS = ["entropy.mean_nats", "entropy.mean_norm", "entropy.std_norm", "entropy.n_rows", "sinks.alpha1",
        "sinks.sink_frac", "sinks.is_sink", "sinks.top_pos", "sinks.top_alpha", "sinks.top_token"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama folder (sharpened weights, so heads differ) with a word-level tokenizer
    that adds a BOS, and a file of 200 prompts of 2-14 words (ragged, so batches pad)."""
    from tiny import word_level_llama

    root = tmp_path_factory.mktemp("dstats")
    word_level_llama(root, N_PROMPTS)
    return root


@pytest.fixture(scope="module")
def setup(tiny):
    import workbench as wb
    from workbench.job import text_inputs

    model = wb.load(str(tiny / "tiny"))
    texts = (tiny / "prompts.txt").read_text().splitlines()
    batch, _ = text_inputs(model, prompts=str(tiny / "prompts.txt"), texts=texts, max_prompts=N_PROMPTS,
                           max_tokens=32)
    return model, batch, texts


def _job(setup, chunk_size, **kw):
    from workbench.dataset_stats import DatasetStats

    model, batch, _ = setup
    return DatasetStats(model, batch, {"entropy": {}, "sinks": {}}, chunk_size=chunk_size, **kw)


def _table(results) -> pd.DataFrame:
    t = results["entropy"].table.merge(results["sinks"].table, on=["stream", "layer", "head"])
    return t.sort_values(["stream", "layer", "head"]).reset_index(drop=True)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame, atol=1e-5):
    assert len(a) == len(b) and list(a[["layer", "head"]].values.ravel()) == list(b[["layer", "head"]].values.ravel())
    for c in COLS:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), atol=atol, rtol=0, err_msg=c)
        else:
            assert a[c].tolist() == b[c].tolist(), c


def _oracle(tiny, texts, epsilon=0.3, min_queries=4) -> pd.DataFrame:
    """The definitions of entropy.py / sinks.py computed by hand in float64 from HF eager
    attention, prompts of equal length batched together (no padding)."""
    import transformers as tf

    hf = tf.AutoModelForCausalLM.from_pretrained(str(tiny / "tiny"), attn_implementation="eager").eval()
    tok = tf.AutoTokenizer.from_pretrained(str(tiny / "tiny"))
    ids = [tok(t)["input_ids"] for t in texts]
    per: dict = {}                                # (layer, head) -> per input: lists, in input order
    by_len: dict = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    for T, group in sorted(by_len.items()):
        with torch.no_grad():
            att = hf(torch.tensor([ids[i] for i in group]), output_attentions=True).attentions
        for layer, a in enumerate(att):
            A = a.double().numpy()                                           # [n, head, T, T], causal
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.where(A > 0, A * np.log(A), 0.0).sum(-1)[:, :, 1:]   # rows i >= 1 see 2+ keys
            norm = ent / np.log(np.arange(2, T + 1))
            alpha = A.sum(2) / (T - np.arange(T))                            # key k is seen by T - k queries
            for h in range(A.shape[1]):
                d = per.setdefault((layer, h), {})
                for j, i in enumerate(group):
                    later = [(alpha[j, h, k], k) for k in range(1, T) if T - k >= min_queries]
                    best = max(v for v, _ in later) if later else None
                    k = min(k for v, k in later if v == best) if later else None
                    d[i] = (ent[j, h].mean(), norm[j, h].mean(), norm[j, h], alpha[j, h, 0], best,
                            None if k is None else (k, tok.decode([ids[i][k]])))
    rows = []
    for (layer, h), d in sorted(per.items()):
        nats, mnorm, rws, a1, top, where = zip(*(d[i] for i in range(len(texts))))
        found = [w for w in where if w is not None]
        pos = Counter(k for k, _ in found).most_common(1)[0][0] if found else -1
        frac = float(np.mean(np.array(a1) > epsilon))
        rows.append({"stream": "self", "layer": layer, "head": h, "entropy.mean_nats": np.mean(nats),
                     "entropy.mean_norm": np.mean(mnorm), "entropy.std_norm": np.std(np.concatenate(rws), ddof=1),
                     "entropy.n_rows": sum(len(r) for r in rws), "sinks.alpha1": np.mean(a1),
                     "sinks.sink_frac": frac, "sinks.is_sink": frac > 0.5, "sinks.top_pos": pos,
                     "sinks.top_alpha": np.mean([t for t in top if t is not None]) if found else float("nan"),
                     "sinks.top_token": next(t for k, t in found if k == pos) if found else ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def merged(setup):
    """The head table of the 200 prompts in units of 64 (forward batches of 8)."""
    return _table(_job(setup, 64).run())


def test_merged_sums_equal_a_hand_computation_from_hf_eager_attention(tiny, setup, merged):
    want = _oracle(tiny, setup[2])
    assert merged["sinks.is_sink"].any() and not merged["sinks.is_sink"].all()     # the heads differ
    assert merged["sinks.top_token"].nunique() > 1
    _assert_same(merged, want, atol=1e-7)         # observed: 4e-9 (float32 patterns, float64 sums)


def test_run_table_equals_the_per_input_path_of_workbench_run(tiny, capsys):
    from workbench.cli import main
    from workbench.job import JobConfig, trace_job

    prompts = str(tiny / "prompts.txt")
    # no --max-prompts: a prompt FILE is read whole (was cut to 16 lines)
    args = ["run", str(tiny / "tiny"), "--prompts", prompts, "--max-tokens", "32",
            "--chunk-size", "48", "--batch-size", "24", "--save-patterns", "1", "--quiet"]
    assert main([*args, "--out", str(tiny / "sums")]) == 0
    # the same command with one more analysis that needs per-input tensors takes the per-input path
    _, old = trace_job(JobConfig(model=str(tiny / "tiny"), out=tiny / "per_input", prompts=prompts,
                                 max_prompts=500, max_tokens=32, analyses=["entropy", "sinks", "massive"], quiet=True,
                                 batch_size=24, save_patterns=1))
    meta = json.loads((tiny / "sums" / "meta.json").read_text())
    assert meta["reduction"]["units"] == math.ceil(N_PROMPTS / 48) and "reduction" not in old
    assert len(meta["inputs"]["items"]) == N_PROMPTS
    a = pd.read_parquet(tiny / "sums" / "heads.parquet")
    b = pd.read_parquet(tiny / "per_input" / "heads.parquet")
    assert [c for c in a.columns if c.startswith(("entropy.", "sinks."))] == COLS
    _assert_same(a, b, atol=1e-6)
    assert meta["summary"]["entropy"] == old["summary"]["entropy"]
    assert meta["summary"]["sinks"] == old["summary"]["sinks"]
    assert not (tiny / ".sums.units").exists()                 # finished units are removed with the run


def test_max_prompts_defaults_to_16_for_built_in_sets_and_clips_and_all_lines_of_a_file(tmp_path):
    from workbench.job import JobConfig

    assert JobConfig(model="m", out=tmp_path / "a").max_prompts == 16
    assert JobConfig(model="m", out=tmp_path / "a", prompts="random").max_prompts == 16
    assert JobConfig(model="m", out=tmp_path / "a", audio=["x.wav"]).max_prompts == 16
    assert JobConfig(model="m", out=tmp_path / "a", prompts="my_prompts.txt").max_prompts is None
    assert JobConfig(model="m", out=tmp_path / "a", prompts="my_prompts.txt", max_prompts=3).max_prompts == 3


def test_chunk_size_does_not_change_the_result_nor_the_size_of_a_unit(setup, merged):
    from workbench.patching.units import Unit

    other, base = _job(setup, 23, batch_size=23), _job(setup, 64)
    assert len(other.units()) == math.ceil(N_PROMPTS / 23) and len(base.units()) == math.ceil(N_PROMPTS / 64)
    _assert_same(_table(other.run()), merged, atol=1e-6)
    small, big = other.run_unit(Unit(8)), base.run_unit(Unit(0))    # 16 inputs vs 64: sums of the same shape
    assert small.keys() == big.keys() and all(small[k].shape == big[k].shape for k in small)
    assert int(small["entropy/self/0/inputs"]) == N_PROMPTS - 8 * 23 and int(big["entropy/self/0/inputs"]) == 64


class _Stop(Exception):
    pass


class _Counting:
    """In-process executor that counts the units it runs and can fail after ``stop_after``."""

    def __init__(self, stop_after=None):
        self.ran, self.stop_after = [], stop_after

    def map(self, fn, units):
        for u in units:
            if self.stop_after is not None and len(self.ran) == self.stop_after:
                raise _Stop
            self.ran.append(u)
            yield u, fn(u)


def test_an_interrupted_job_resumes_from_its_recorded_units(setup, tmp_path):
    from workbench.dataset_stats import DatasetStats
    from workbench.errors import UserError
    from workbench.patching.units import UnitStore

    model, batch, _ = setup
    sub = batch.select(list(range(75)))
    job = DatasetStats(model, sub, {"entropy": {}, "sinks": {"epsilon": 0.25}}, chunk_size=15, batch_size=15)
    store = UnitStore(tmp_path / "units", job.fingerprint())
    with pytest.raises(_Stop):
        job.run(_Counting(stop_after=2), store)
    assert len(list((tmp_path / "units").glob("shard*.safetensors"))) == 2
    again = _Counting()
    resumed = job.run(again, UnitStore(tmp_path / "units", job.fingerprint()))
    assert [u.shard for u in again.ran] == [2, 3, 4]                  # only the units not recorded
    _assert_same(_table(resumed), _table(job.run()), atol=1e-9)
    other = DatasetStats(model, sub, {"entropy": {}, "sinks": {}}, chunk_size=15)   # other epsilon: another job
    assert other.fingerprint() != job.fingerprint()
    with pytest.raises(UserError, match="different sweep"):
        UnitStore(tmp_path / "units", other.fingerprint())


def test_spec_rebuilds_the_same_job_in_plain_data(setup, tiny):
    from workbench.dataset_stats import text_source
    from workbench.executors.spec import JobSpec
    from workbench.patching.units import Unit

    src = text_source(str(tiny / "tiny"), prompts=str(tiny / "prompts.txt"), texts=setup[2],
                      max_prompts=N_PROMPTS, max_tokens=32)
    job = _job(setup, 64, source=src)
    again = JobSpec.from_json(job.spec().to_json()).build()
    assert again.fingerprint() == job.fingerprint() and again.model is not job.model
    a, b = job.run_unit(Unit(3)), again.run_unit(Unit(3))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), atol=1e-9) for k in a)


def test_bad_settings_are_user_errors_before_any_compute(setup, tiny):
    from workbench.dataset_stats import DatasetStats
    from workbench.errors import UserError
    from workbench.job import JobConfig

    with pytest.raises(UserError, match="chunk_size must be an integer >= 1"):
        JobConfig(model="x", out=tiny / "x", chunk_size=0)
    with pytest.raises(UserError, match="entropy and sinks only"):
        DatasetStats(setup[0], setup[1], {"rollout": {}})
    with pytest.raises(UserError, match="chunk_size must be an integer >= 1"):
        _job(setup, 0)
    from workbench.job import validate
    from workbench.patching.units import InProcessExecutor

    with pytest.raises(UserError, match="executor runs the units of the dataset statistics"):
        validate(JobConfig(model="x", out=tiny / "x", analyses=["entropy", "rollout"], executor=InProcessExecutor()))


def test_the_driver_folds_unit_results_without_keeping_them(setup):
    """``assemble`` over a generator drops each unit's result once it is merged: when unit k+1
    is asked for, no tensor of units before k is alive (k's is the loop's current item)."""
    import gc
    import weakref

    from workbench.dataset_stats import DatasetStats
    from workbench.patching.units import Unit

    model, batch, _ = setup
    job = DatasetStats(model, batch.select(list(range(40))), {"entropy": {}, "sinks": {}}, chunk_size=8)
    one = job.run_unit(Unit(0))
    refs: list = []

    def results():
        for i in range(len(job.units())):
            gc.collect()
            alive = [j for j, rs in enumerate(refs[:-1]) if any(r() is not None for r in rs)]
            assert alive == [], f"results of units {alive} still held when unit {i} is asked for"
            res = {k: v.clone() for k, v in one.items()}
            refs.append([weakref.ref(v) for v in res.values()])
            yield Unit(i), res

    out = job.assemble(results())
    assert len(refs) == 5 and out["entropy"].table["entropy.n_rows"].iloc[0] == 5 * int(one["entropy/self/0/rows"])


def test_fused_attention_output_gives_the_hand_computed_tables(tiny, setup):
    """``workbench run --attn-output fused`` (one pass over the scores) on both paths, sums per
    chunk and per input: the same hand computation from HF eager attention within float
    round-off, recorded in meta.json; its units are not those of the default job."""
    from workbench.cli import main
    from workbench.job import JobConfig, trace_job

    want = _oracle(tiny, setup[2])
    prompts = str(tiny / "prompts.txt")
    assert main(["run", str(tiny / "tiny"), "--prompts", prompts, "--max-tokens", "32", "--attn-output", "fused",
                 "--quiet", "--out", str(tiny / "fused")]) == 0
    meta = json.loads((tiny / "fused" / "meta.json").read_text())
    assert meta["attn_output"] == "fused" and "reduction" in meta
    got = pd.read_parquet(tiny / "fused" / "heads.parquet").sort_values(["layer", "head"]).reset_index(drop=True)
    _assert_same(got, want, atol=1e-5)
    _, per = trace_job(JobConfig(model=str(tiny / "tiny"), out=tiny / "fused_per_input", prompts=prompts,
                                 max_tokens=32, analyses=["entropy", "sinks", "massive"], quiet=True,
                                 attn_output="fused"))
    assert per["attn_output"] == "fused" and "reduction" not in per
    got = pd.read_parquet(tiny / "fused_per_input" / "heads.parquet").sort_values(["layer", "head"])
    _assert_same(got.reset_index(drop=True), want, atol=1e-5)
    assert _job(setup, 64, attn_output="fused").fingerprint() != _job(setup, 64).fingerprint()
    spec = _job(setup, 64, attn_output="fused", source={"model": "tiny"}).spec()
    assert spec.args["attn_output"] == "fused"
    from workbench.errors import UserError

    for bad in (lambda: _job(setup, 64, attn_output="eager"),
                lambda: JobConfig(model=str(tiny / "tiny"), out=tiny / "never", attn_output="eager")):
        with pytest.raises(UserError, match="attn_output is 'eager'; use one of sdpa, fused"):
            bad()
    assert not (tiny / "never").exists()
