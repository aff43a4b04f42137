"""Real run folders written by the workbench's own writers, built once per test session:
``run`` (``trace_job`` on minilm-l6, patterns saved), ``patch`` and ``prune`` (the CLI on a
tiny GPT-2 folder with token-id pairs) and ``circuit`` (``workbench circuit --analysis dla``,
when that command exists). Used by tests/test_schema.py, test_open_run.py, test_report.py."""
from __future__ import annotations

import json
from pathlib import Path

_ROOT: dict[str, Path] = {}


def real_runs(tmp_path_factory) -> dict[str, Path]:
    """{kind: run folder} for kind in run, run2, patch, prune (and circuit when available)."""
    if "root" in _ROOT:
        return _runs(_ROOT["root"])
    from tiny import tiny_hf

    from workbench.cli import build_parser, main
    from workbench.job import JobConfig, trace_job

    root = tmp_path_factory.mktemp("real-runs")
    for name, prompts in (("run", "natural"), ("run2", "random")):
        trace_job(JobConfig(model="minilm-l6", out=root / name, prompts=prompts, max_prompts=2, max_tokens=12,
                            analyses=["entropy", "sinks", "taxonomy"], save_patterns=2, quiet=True,
                            command=f"test {name}"))
    tiny_hf("gpt2").save_pretrained(root / "tiny-gpt2")
    pairs = root / "p.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9], "corrupt": [1, 5, 3, 9], "target": 4,
                                            "distractor": 6}) for _ in range(2)))
    common = ["--task", str(pairs), "--quiet"]
    assert main(["patch", str(root / "tiny-gpt2"), *common, "--out", str(root / "patch"), "--per-position"]) == 0
    assert main(["prune", str(root / "tiny-gpt2"), *common, "--out", str(root / "prune"), "--step", "0.25",
                 "--seeds", "1"]) == 0
    if "circuit" in build_parser()._subparsers._group_actions[0].choices:
        assert main(["circuit", str(root / "tiny-gpt2"), *common, "--out", str(root / "circuit"),
                     "--analysis", "dla"]) == 0
    _ROOT["root"] = root
    return _runs(root)


def _runs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(root.iterdir()) if (p / "meta.json").is_file()}
