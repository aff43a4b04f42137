"""Real HF tokenizer classes over a tiny character vocabulary, built in memory (no files)."""
from __future__ import annotations

import transformers as tf


def toy_tokenizer(kind: str):
    """A real GPT-2 (adds nothing) or Llama (adds BOS) tokenizer over a character vocabulary."""
    letters = "abcdefghijklmnopqrstuvwxyz.,"
    if kind == "gpt2":
        vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(letters + "Ġ")}}
        return tf.GPT2Tokenizer(vocab=vocab, merges=[])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(letters + "▁")}}
    return tf.LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
