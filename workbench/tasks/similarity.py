"""Sentence similarity for a sentence encoder (e.g. all-MiniLM-L6-v2).

Each item is (sentence, corrupted sentence, paraphrase of the sentence). The corrupted
sentence swaps one content word ("guitar" -> "piano") and tokenises to the same length.
Metric: cosine similarity between the mean-pooled last hidden states (over real tokens,
sentence-transformers pooling) of the input and the paraphrase's embedding, computed once
with the unedited model. Patching from the corrupt run lowers it where a head carries the
swapped word's meaning.
"""
from __future__ import annotations

import torch

from ..patching.metrics import CosineSimilarity, mean_pool
from ._task import Task, require_text_model

ITEMS = (
    ("A man is playing a guitar.", "A man is playing a piano.", "Someone is playing the guitar."),
    ("A woman is slicing an onion.", "A woman is slicing a tomato.", "Someone is cutting an onion."),
    ("The cat sleeps on the sofa.", "The dog sleeps on the sofa.", "A cat is napping on the couch."),
    ("A child is riding a bicycle.", "A child is riding a horse.", "A kid rides a bike."),
    ("The plane is landing at the airport.", "The train is arriving at the station.",
     "An airplane touches down at the airport."),
    ("He drinks a cup of coffee.", "He drinks a cup of tea.", "A man is having coffee."),
    ("The chef is cooking pasta in the kitchen.", "The chef is cooking rice in the kitchen.", "A cook prepares pasta."),
    ("Two boys are playing football.", "Two boys are playing chess.", "Kids are playing soccer."),
    ("She is reading a book in the library.", "She is reading a newspaper in the library.", "A woman reads a book."),
    ("The sun is shining today.", "The moon is shining today.", "It is a sunny day."),
)


def similarity(model, n: int | None = None, seed: int = 0, items=ITEMS) -> Task:
    """Up to ``n`` (default all) sentence pairs whose clean/corrupt token counts match."""
    require_text_model(model, "similarity", kind="encoder")
    tok = model.tokenizer
    keep = [it for it in items if len(tok(it[0])["input_ids"]) == len(tok(it[1])["input_ids"])]
    keep = keep[:n] if n else keep
    if not keep:
        raise ValueError("no sentence pair tokenises to equal lengths for this tokenizer")
    clean = model.prepare([c for c, _, _ in keep])
    corrupt = model.prepare([x for _, x, _ in keep])
    ref = model.prepare([r for _, _, r in keep])
    with torch.no_grad():
        emb = mean_pool(model.run(ref).output.last_hidden_state, ref.model_inputs["attention_mask"]).cpu()
    metric = CosineSimilarity(clean.model_inputs["attention_mask"], emb)
    return Task("similarity", clean, corrupt, metric,
                "cosine(mean-pooled input, paraphrase embedding); corrupt = one content word swapped",
                {"items": [list(it) for it in keep], "n": len(keep)})
