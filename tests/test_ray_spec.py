"""Job specs (``workbench.executors.spec``): a sweep rebuilt from plain data in another place is
the driver's sweep (same fingerprint, same unit results), also where the pairs file is gone;
specs hold JSON data only; a spec that does not describe the job is told apart."""
from __future__ import annotations

import json

import pytest
import torch

ROWS = [{"clean": [1, 2, 3, 9, 7], "corrupt": [1, 5, 3, 9, 7], "target": 4, "distractor": 6},
        {"clean": [3, 8, 2, 2, 5], "corrupt": [3, 8, 6, 2, 5], "target": 1, "distractor": 2}]


def _tiny_task(tmp_path):
    """(model, pairs file, task) of a tiny random Llama saved in ``tmp_path / "m"``."""
    from tiny import tiny_hf

    import workbench as wb
    from workbench import tasks

    tiny_hf("llama").save_pretrained(tmp_path / "m")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in ROWS))
    model = wb.load(str(tmp_path / "m"))
    return model, pairs, tasks.build(model, str(pairs))


def test_sweep_rebuilt_from_its_spec_without_the_pairs_file(tmp_path):
    import workbench as wb
    from workbench.executors import JobSpec, identity, spec_of, task_source
    from workbench.patching import PatchConfig, Sweep

    model, pairs, task = _tiny_task(tmp_path)
    heads = [wb.Head("self", 1, 0), wb.Head("self", 1, 3)]
    for cfg, corrupt in ((PatchConfig("exact", "mean", shard_size=1), task.corrupt),
                         (PatchConfig("naive", "zero"), None)):            # prune's sweep: no corrupt inputs
        sweep = Sweep(model, task.clean, task.metric, corrupt=corrupt, heads=heads, config=cfg)
        spec = spec_of(sweep, task_source(str(tmp_path / "m"), str(pairs)))
        text = spec.to_json()
        assert json.loads(text)["args"]["source"]["task_file"]["text"] == pairs.read_text()
        pairs.rename(tmp_path / "moved.jsonl")                             # a worker without the file
        try:
            again = JobSpec.from_json(text).build()
        finally:
            (tmp_path / "moved.jsonl").rename(pairs)
        assert again is not sweep and again.model is not model
        assert identity(again) == identity(sweep) and again.units() == sweep.units()
        unit = sweep.units()[-1]
        mine, theirs = sweep.run_unit(unit), again.run_unit(unit)
        assert mine.keys() == theirs.keys()
        for k in mine:
            torch.testing.assert_close(theirs[k], mine[k], atol=0, rtol=0)


def test_spec_identity_tells_other_sweeps_apart(tmp_path):
    from workbench.executors import identity
    from workbench.patching import PatchConfig, Sweep

    model, _, t = _tiny_task(tmp_path)
    cfg = PatchConfig("naive", "mean")
    mean_clean = Sweep(model, t.clean, t.metric, config=cfg)
    # the same sweep whose mean ablation comes from other reference inputs: same fingerprint, other identity
    mean_corrupt = Sweep(model, t.clean, t.metric, config=cfg, reference=t.corrupt)
    assert mean_clean.fingerprint() == mean_corrupt.fingerprint()
    assert identity(mean_clean) != identity(mean_corrupt)
    zero = Sweep(model, t.clean, t.metric, config=PatchConfig("naive", "zero"))
    assert identity(zero) == zero.fingerprint() != mean_clean.fingerprint()


def test_job_spec_holds_plain_json_only():
    from workbench.executors import JobSpec

    with pytest.raises(ValueError, match="module:function"):
        JobSpec("no_colon")
    with pytest.raises(ValueError, match="plain JSON"):
        JobSpec("m:f", {"t": torch.zeros(1)})
    with pytest.raises(ValueError, match="plain JSON"):
        JobSpec("m:f", {"heads": (1, 2)})                                  # a tuple would come back a list
    spec = JobSpec("m:f", {"a": [1, 2], "b": {"c": None}})
    assert JobSpec.from_json(spec.to_json()) == spec
