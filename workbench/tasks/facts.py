"""Factual recall: "The capital of France is" -> " Paris".

Clean prompts name a subject; the corrupt prompt of a pair names another subject of the
same relation ("The capital of Italy is"), and the metric is the logit difference between
the clean answer and the corrupt prompt's answer at the last token (nats), so patching
from the corrupt run moves the prediction from one fact to the other. Only pairs whose
subjects and answers are single tokens (leading space) are kept, so a pair tokenises to
the same length.
"""
from __future__ import annotations

import numpy as np

from ..patching.metrics import LogitDiff, last_positions
from ._task import Task, require_text_model

RELATIONS = {
    "capital": ("The capital of {X} is", (
        ("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("England", "London"),
        ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Austria", "Vienna"), ("Egypt", "Cairo"), ("Greece", "Athens"),
        ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("China", "Beijing"),
        ("Canada", "Ottawa"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("India", "Delhi"),
        ("Belgium", "Brussels"), ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Kenya", "Nairobi"),
        ("Peru", "Lima"), ("Cuba", "Havana"))),
    "language": ("The official language of {X} is", (
        ("France", "French"), ("Italy", "Italian"), ("Germany", "German"), ("Spain", "Spanish"),
        ("Japan", "Japanese"), ("Russia", "Russian"), ("Greece", "Greek"), ("Portugal", "Portuguese"),
        ("China", "Chinese"), ("Poland", "Polish"), ("Sweden", "Swedish"), ("Finland", "Finnish"))),
}


def facts(model, n: int = 16, seed: int = 0) -> Task:
    """``n`` factual-recall pairs (deterministic given ``seed``)."""
    require_text_model(model, "facts")
    tok = model.tokenizer

    def one(text):
        ids = tok(" " + text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    pool = []
    for rel, (tpl, pairs) in RELATIONS.items():
        ok = [(s, one(s), a, one(a)) for s, a in pairs]
        ok = [p for p in ok if p[1] is not None and p[3] is not None]
        pool += [(rel, tpl, ok)] if len(ok) >= 2 else []
    if not pool:
        raise ValueError(f"no single-token subject/answer pairs for {model.name}'s tokenizer")
    rng = np.random.default_rng(seed)
    clean, corrupt, tgt, dis, rels = [], [], [], [], []
    for i in range(n):
        rel, tpl, ok = pool[i % len(pool)]
        a, b = rng.choice(len(ok), 2, replace=False)
        (s1, _, _, t1), (s2, _, _, t2) = ok[a], ok[b]
        if t1 == t2:
            continue
        clean.append(tpl.format(X=s1))
        corrupt.append(tpl.format(X=s2))
        tgt.append(t1)
        dis.append(t2)
        rels.append(rel)
    cb, xb = model.prepare(clean), model.prepare(corrupt)
    if cb.model_inputs["input_ids"].shape != xb.model_inputs["input_ids"].shape:
        raise ValueError("facts clean/corrupt prompts tokenise to different lengths")
    return Task("facts", cb, xb, LogitDiff(last_positions(cb), tgt, dis),
                "logit(clean answer) - logit(corrupt answer) at the last token; corrupt = another subject",
                {"clean": clean, "corrupt": corrupt, "relations": rels, "seed": seed, "n": len(clean)})
