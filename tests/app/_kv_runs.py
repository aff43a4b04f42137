"""Run folders of ``workbench patch --node k`` written by the CLI, for the dashboard tests of
KV-head rows (``Head(stream, layer, kv_head)``; issue 11).

A tiny random Llama with 6 query heads and 2 KV heads per layer (r = 3: KV head k feeds query
heads 3k, 3k+1, 3k+2, the grouping of HF's ``repeat_kv``), two token-id pairs, and three runs:
``kv`` (``--node k --method exact,atp``), ``kvpos`` (``--node k --per-position``) and ``z`` (the
default node). Expected names and links in the tests are written out from that grouping
(``group``, ``detail_href``), not from the dashboard's helpers.
"""
from __future__ import annotations

import json
from pathlib import Path

N_HEADS, N_KV, LAYERS = 6, 2, 2
R = N_HEADS // N_KV


def group(kv: int) -> list[int]:
    """The query heads that read KV head ``kv``."""
    return [kv * R + i for i in range(R)]


def detail_href(run: str, layer: int, head: int) -> str:
    """Head detail of query head ``head`` of ``run`` (stream ``self``)."""
    return f"/detail?run={run}&stream=self&layer={layer}&head={head}"


def write_kv_runs(root: Path) -> Path:
    """Write the tiny GQA model, its pairs and the runs ``kv``, ``kvpos`` and ``z`` under ``root``;
    returns the runs folder."""
    import torch
    import transformers as tf

    from workbench.cli import main

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(num_hidden_layers=LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=N_KV,
                         hidden_size=48, intermediate_size=64, vocab_size=97, max_position_embeddings=64)
    tf.LlamaForCausalLM(cfg).save_pretrained(root / "tiny-gqa")
    pairs = root / "p.jsonl"
    pairs.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 9, 4], "corrupt": [1, 5, 3, 9, 4], "target": 4,
                                            "distractor": 6}) for _ in range(2)))
    runs = root / "runs"
    model, task = str(root / "tiny-gqa"), str(pairs)
    for name, extra in (("kv", ["--node", "k", "--method", "exact,atp"]),
                        ("kvpos", ["--node", "k", "--per-position"]), ("z", [])):
        assert main(["patch", model, "--task", task, "--quiet", *extra, "--out", str(runs / name)]) == 0
    return runs
