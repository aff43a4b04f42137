"""Peak memory of ``workbench run`` (entropy, sinks) against the number of prompts.

Each measurement is a fresh process that runs ``trace_job`` on N short prompts and reports
its peak resident memory (``ru_maxrss``) and wall time; ``sums`` is the dataset-statistics
path (units of ``--chunk-size`` prompts reduced to per-head sums, merged as they come),
``per-input`` the path that keeps every prompt's statistics (what ``workbench run`` does for
analyses without a mergeable reduction), forced here by declaring nothing mergeable.

    .venv/bin/python benchmarks/dataset_stats.py [--model smollm2-135m] [--n 200 2000]

The default model, ``smollm2-shaped``, is a random Llama with SmolLM2-135M's attention layout
(30 layers x 9 heads, 3 KV heads) and a tiny width, written to a temporary folder with a
word-level tokenizer: per-input statistics have the size they have on SmolLM2 (they depend on
layers x heads x tokens only) while the forward costs little, so the figures show memory,
not compute, on a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("the a cat dog house river city music light stone small old quick green early quiet runs sees "
         "holds finds near under over with from into").split()

CHILD = r"""
import json, resource, sys, time
import workbench.dataset_stats as ds
from workbench.job import JobConfig, trace_job
model, prompts, n, out, path, chunk, batch = sys.argv[1:8]
if path == "per-input":
    ds.mergeable = lambda analyses: False
t = time.perf_counter()
_, meta = trace_job(JobConfig(model=model, out=out, prompts=prompts, max_prompts=int(n), max_tokens=16,
                              save_patterns=0, quiet=True, chunk_size=int(chunk), batch_size=int(batch)))
print(json.dumps({"path": path, "n": int(n), "seconds": round(time.perf_counter() - t, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "units": meta.get("reduction", {}).get("units")}))
"""


def smollm2_shaped(folder: Path) -> str:
    """A random Llama with SmolLM2-135M's attention layout and a word-level tokenizer (BOS added)."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    cfg = tf.LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=72,
                         intermediate_size=128, vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-shaped", help="smollm2-shaped (default) or any model name / folder")
    ap.add_argument("--n", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--paths", nargs="+", default=["sums", "per-input"])
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = smollm2_shaped(Path(tmp) / "model") if args.model == "smollm2-shaped" else args.model
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
                                     for _ in range(max(args.n))) + "\n")
        rows = []
        for path in args.paths:
            for n in args.n:
                out = Path(tmp) / f"run-{path}-{n}"
                res = subprocess.run([sys.executable, "-c", CHILD, model, str(prompts), str(n), str(out), path,
                                      str(args.chunk_size), str(args.batch_size)],
                                     capture_output=True, text=True, check=True)
                rows.append({**json.loads(res.stdout.strip().splitlines()[-1]), "model": args.model})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'path':10} {'prompts':>8} {'peak RSS MiB':>13} {'seconds':>8}")
    for r in rows:
        print(f"{r['path']:10} {r['n']:>8} {r['peak_rss_mib']:>13} {r['seconds']:>8}")


if __name__ == "__main__":
    main()
