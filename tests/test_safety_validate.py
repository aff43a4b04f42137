"""Every argument is checked before the model loads (one line, exit 2); inputs longer than
the model's context and patterns too large to keep are refused before tracing; only
UserError is a tidy one-line error, anything else keeps its traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clirun import cli, one_line_error
from workbench.errors import UserError


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a model is loaded."""
    import workbench.zoo

    def forbidden(*a, **k):
        raise AssertionError("the model was loaded before the bad argument was refused")

    monkeypatch.setattr(workbench.zoo, "load", forbidden)


@pytest.mark.parametrize("args,needles", [
    (["run", "minilm-l6", "--param", "sinks.epsilon=abc"], ["sinks", "epsilon", "'abc'", "number"]),
    (["run", "minilm-l6", "--param", "sinks.epsilon=7"], ["sinks", "epsilon", "7"]),
    (["run", "minilm-l6", "--param", "sinks.min_queries=2.5"], ["sinks", "min_queries", "integer"]),
    (["run", "minilm-l6", "--param", "sinks.epsilon=0.2", "--param", "sinks.epsilon=0.3"], ["twice"]),
    (["run", "minilm-l6", "--max-tokens", "1"], ["--max-tokens", ">= 2"]),
    (["run", "minilm-l6", "--batch-size", "0"], ["--batch-size"]),
    (["run", "minilm-l6", "--save-patterns", "-1"], ["--save-patterns"]),
    (["run", "minilm-l6", "--max-save-gib", "0"], ["--max-save-gib"]),
    (["run", "minilm-l6", "--analyses", ""], ["--analyses"]),
    (["run", "minilm-l6", "--seed", "-1"], ["--seed", ">= 0"]),
    (["patch", "minilm-l6", "--seed", "-1"], ["--seed", ">= 0"]),
    (["patch", "minilm-l6", "--n", "0"], ["--n must be >= 1"]),
    (["patch", "minilm-l6", "--shard-size", "0"], ["--shard-size"]),
    (["patch", "minilm-l6", "--method", "exact,psychic"], ["psychic"]),
    (["patch", "minilm-l6", "--task", "telepathy"], ["unknown task 'telepathy'"]),
    (["patch", "minilm-l6", "--task", "{tmp}/missing.jsonl"], ["missing.jsonl", "does not exist"]),
    (["patch", "minilm-l6", "--task", "{tmp}/badjson.jsonl"], ["badjson.jsonl:2", "not valid JSON"]),
    (["patch", "minilm-l6", "--task", "{tmp}/nokeys.jsonl"], ["nokeys.jsonl:1", "corrupt"]),
    (["patch", "minilm-l6", "--task", "{tmp}/binary.jsonl"], ["binary.jsonl", "UTF-8"]),
    (["patch", "minilm-l6", "--task", "{tmp}/noaudio.jsonl"], ["noaudio.jsonl:1", "gone.wav"]),
    (["prune", "minilm-l6", "--orders", "importance,astrology"], ["astrology", "--orders"]),
    (["prune", "minilm-l6", "--step", "0"], ["--step", "(0, 1]"]),
    (["prune", "minilm-l6", "--step", "1.5"], ["--step"]),
    (["prune", "minilm-l6", "--max-fraction", "2"], ["--max-fraction"]),
    (["prune", "minilm-l6", "--seeds", "-1"], ["--seeds"]),
    (["prune", "minilm-l6", "--orders", "random", "--seeds", "0"], ["--seeds"]),
    (["run", "{tmp}/notamodel"], ["no config.json", "no weights", "no tokenizer"]),
    (["run", "{tmp}/t5like"], ["'t5'", "not supported"]),
    (["run", "{tmp}/afile.bin"], ["is a file"]),
    (["run", "./nowhere"], ["unknown model"]),
    (["run", "a/b/c"], ["unknown model"]),
])
def test_bad_arguments_are_refused_before_the_model_loads(tmp_path, capsys, no_load, args, needles):
    (tmp_path / "badjson.jsonl").write_text('{"clean": "a", "corrupt": "b"}\n{"clean": \n')
    (tmp_path / "nokeys.jsonl").write_text('{"clean": "a b c"}\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81" * 20)
    (tmp_path / "noaudio.jsonl").write_text('{"clean_audio": "gone.wav", "corrupt_audio": "gone.wav"}\n')
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "README.md").write_text("hello")
    (tmp_path / "t5like").mkdir()
    (tmp_path / "t5like" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "t5like" / "model.safetensors").write_bytes(b"")
    (tmp_path / "afile.bin").write_bytes(b"x")
    args = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "x")]
    one_line_error(*cli(capsys, *args), *needles)
    assert not (tmp_path / "x").exists()


def test_port_out_of_range_is_refused(tmp_path, capsys):
    one_line_error(*cli(capsys, "serve", tmp_path, "--port", "99999"), "--port", "99999", "65535")
    one_line_error(*cli(capsys, "serve", tmp_path, "--port", "-1"), "--port")
    one_line_error(*cli(capsys, "serve", tmp_path / "nope"), "not a folder")


def test_offline_hub_id_fails_in_one_line(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-m", "workbench.cli", "run", "someone/no-such-model", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, env=env, timeout=300)
    one_line_error(res.returncode, res.stderr, "someone/no-such-model", "not in the local hub cache", "HF_HUB_OFFLINE")


def test_a_folder_with_config_and_weights_but_no_tokenizer_needs_one_for_text(tmp_path, capsys, no_load):
    from tiny import tiny_hf

    tiny_hf("gpt2").save_pretrained(tmp_path / "tiny")
    capsys.readouterr()
    one_line_error(*cli(capsys, "run", tmp_path / "tiny", "--out", tmp_path / "x"), "no tokenizer")


def test_inputs_longer_than_the_context_are_refused_or_truncated_when_asked(tmp_path, capsys):
    args = ["run", "minilm-l6", "--prompts", "random", "--max-prompts", "1", "--max-tokens", "600",
            "--save-patterns", "0", "--analyses", "entropy", "--quiet"]
    line = one_line_error(*cli(capsys, *args, "--out", tmp_path / "a"), "600 tokens", "at most 512",
                          "max_position_embeddings", "--truncate")
    assert not (tmp_path / "a").exists(), line
    code, err = cli(capsys, *args, "--truncate", "--out", tmp_path / "b")
    assert code == 0, err
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert len(meta["inputs"]["items"][0]["tokens"]["self"]) == 512 and meta["inputs"]["truncate"] is True


def test_patterns_over_the_memory_bound_are_refused_with_the_figure_and_the_flag(tmp_path, capsys):
    # minilm: 6 layers x 12 heads; 2 inputs of 512 tokens: float32 capture 4*2*512*512 plus
    # float16 copies 2*2*512*512 bytes per head = 72 * 3145728 B = 0.211 GiB
    line = one_line_error(*cli(capsys, "run", "minilm-l6", "--prompts", "random", "--max-prompts", "2",
                               "--max-tokens", "512", "--max-save-gib", "0.1", "--out", tmp_path / "a", "--quiet"),
                          "0.2 GiB", "--save-patterns", "--max-save-gib")
    assert "0.1 GiB" in line and not (tmp_path / "a").exists()


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import workbench.zoo.builtin as builtin

    def broken(name):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(builtin, "installed", broken)
    from workbench.cli import main

    with pytest.raises(ValueError, match="internal bug"):
        main(["models"])


def test_debug_prints_the_traceback_of_a_user_error(tmp_path, capsys, no_load):
    code, err = cli(capsys, "--debug", "run", "gpt-17", "--out", tmp_path / "x")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("workbench: error: unknown model")


def test_one_user_error_type_and_python_messages_name_arguments(tmp_path):
    from workbench import cli, runs
    from workbench.job import JobConfig, trace_job

    assert cli.UserError is UserError and issubclass(runs.RunExistsError, UserError)
    with pytest.raises(UserError) as e:
        JobConfig("minilm-l6", tmp_path / "x", max_tokens=1)
    assert "max_tokens" in str(e.value) and "--" not in str(e.value) and "--max-tokens" in e.value.cli
    with pytest.raises(UserError, match="epsilon") as e:
        trace_job(JobConfig("minilm-l6", tmp_path / "x", params={"sinks": {"epsilon": "abc"}}))
    with pytest.raises(UserError) as e:
        trace_job(JobConfig("minilm-l6", tmp_path / "x", params={"flow": {"max_work": 5}}))
    assert "params" in str(e.value) and "--param" not in str(e.value)


def test_units_of_another_sweep_are_refused_in_one_line_and_kept(tmp_path, capsys):
    from tiny import tiny_hf
    from workbench.patching import UnitStore

    tiny_hf("gpt2").save_pretrained(tmp_path / "tiny")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"clean": [1, 2, 3], "corrupt": [1, 5, 3], "target": 4, "distractor": 6}))
    UnitStore(tmp_path / "u" / "exact", "fingerprint-of-another-sweep")
    capsys.readouterr()
    line = one_line_error(*cli(capsys, "patch", tmp_path / "tiny", "--task", pairs, "--units", tmp_path / "u",
                               "--out", tmp_path / "x", "--quiet"), "different sweep", "--units")
    assert "store" not in line and (tmp_path / "u" / "exact" / "sweep.json").is_file()
