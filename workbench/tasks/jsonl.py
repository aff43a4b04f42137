"""User pairs from a JSONL file: one JSON object per line, one pair per object.

Causal LMs::

    {"clean": "When Mary and John ...", "corrupt": "When Alice and Bob ...",
     "target": " Mary", "distractor": " John"}

metric logit(target) - logit(distractor) at the last token; without ``distractor``, log p(target).
``target``/``distractor`` are text whose first token is used (write the leading space a
BPE tokenizer needs). Prompts may also be lists of token ids and targets token ids
(``{"clean": [12, 7, 99], "corrupt": [12, 8, 99], "target": 5, "distractor": 6}``), for
models without a tokenizer.

Sentence encoders::

    {"clean": "A man is playing a guitar.", "corrupt": "A man is playing a piano.",
     "reference": "Someone is playing the guitar."}

metric cosine similarity to the reference's embedding (see ``similarity``).

Whisper::

    {"clean_audio": "a.wav", "corrupt_audio": "a_noisy.wav"}

metric log p of the greedy transcript of the clean clip (see ``speech``); relative paths
are taken from the file's folder.

Every pair must tokenise to the same number of tokens (audio: the same duration); a bad
line raises ``workbench.errors.UserError`` naming its line number. ``check_pairs_file``
checks what needs no model (readable UTF-8, one JSON object per line, the pair keys) so the
CLI refuses a bad file before the model loads.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..schema import SAMPLE_RATE
from ..patching.metrics import CosineSimilarity, LogitDiff, LogProb, last_positions, mean_pool
from ._task import Task


def read_pairs(path: str | Path) -> list[dict]:
    """Parse the JSONL file; UserError for a missing, unreadable or non-UTF-8 file and, naming
    the line, for invalid JSON or non-objects."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"pairs file {path} does not exist; give a .jsonl file of clean/corrupt pairs")
    if not path.is_file():
        raise UserError(f"pairs file {path} is not a file; give a .jsonl file of clean/corrupt pairs")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"pairs file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"pairs file {path} is not UTF-8 text (byte {exc.start}); give a .jsonl file") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{i}: expected a JSON object per line")
        obj["_line"] = i
        rows.append(obj)
    if not rows:
        raise UserError(f"{path} holds no pairs")
    return rows


def check_pairs_file(path: str | Path, n: int | None = None) -> list[dict]:
    """``read_pairs`` plus, per line, the pair keys every model needs: ``clean``/``corrupt``
    (text or token ids) or ``clean_audio``/``corrupt_audio`` (paths that exist), one form
    throughout. Model-specific keys (target, reference) are checked by ``from_jsonl``.

    Raises:
        UserError: naming the file and line.
    """
    rows = read_pairs(path)[:n] if n else read_pairs(path)
    audio = "clean_audio" in rows[0]
    for r in rows:
        if audio:
            _need(r, ("clean_audio", "corrupt_audio"), path)
            for k in ("clean_audio", "corrupt_audio"):
                p = Path(r[k]) if Path(r[k]).is_absolute() else Path(path).parent / r[k]
                if not p.is_file():
                    raise UserError(f"{path}:{r['_line']}: {k} file {p} does not exist")
        else:
            _need(r, ("clean", "corrupt"), path, ids_ok=True)
    return rows


def _is_ids(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _need(row: dict, keys: tuple, path, ids_ok: bool = False) -> None:
    miss = [k for k in keys if not ((isinstance(row.get(k), str) and row[k]) or (ids_ok and _is_ids(row.get(k))))]
    if miss:
        raise UserError(f"{path}:{row['_line']}: missing or empty {miss}; expected keys {list(keys)}")


def from_jsonl(model, path: str | Path, n: int | None = None) -> Task:
    """Build a task from the pairs in ``path`` (first ``n`` lines with pairs if given).

    Raises:
        UserError: a bad file or line (naming it), or pairs that do not fit ``model``.
    """
    rows = check_pairs_file(path, n)
    if model.kind == "speech-seq2seq":
        return _audio(model, rows, Path(path))
    tok = model.tokenizer
    for r in rows:
        _need(r, ("clean", "corrupt"), path, ids_ok=True)
    as_ids = _is_ids(rows[0]["clean"])
    if any(_is_ids(r[k]) != as_ids for r in rows for k in ("clean", "corrupt")):
        raise UserError(f"{path}: give every prompt as text or every prompt as a list of token ids, not a mix")
    if not as_ids and tok is None:
        raise UserError(f"{model.name} has no tokenizer: give prompts as lists of token ids")
    for r in rows:
        lc, lx = (len(r[k]) if as_ids else len(tok(r[k])["input_ids"]) for k in ("clean", "corrupt"))
        if lc != lx:
            raise UserError(f"{path}:{r['_line']}: clean has {lc} tokens but corrupt has {lx}; "
                            "a pair must tokenise to the same length")
    if as_ids:
        clean = model.prepare(token_ids=[r["clean"] for r in rows])
        corrupt = model.prepare(token_ids=[r["corrupt"] for r in rows])
    else:
        clean = model.prepare([r["clean"] for r in rows])
        corrupt = model.prepare([r["corrupt"] for r in rows])
    meta = {"file": str(path), "pairs": [{k: v for k, v in r.items() if k != "_line"} for r in rows]}
    if model.kind == "encoder":
        if as_ids:
            raise UserError(f"{path}: sentence-encoder pairs are text with a 'reference' sentence")
        for r in rows:
            _need(r, ("clean", "corrupt", "reference"), path)
        ref = model.prepare([r["reference"] for r in rows])
        with torch.no_grad():
            emb = mean_pool(model.run(ref).output.last_hidden_state, ref.model_inputs["attention_mask"])
        return Task(Path(path).name, clean, corrupt, CosineSimilarity(clean.model_inputs["attention_mask"], emb),
                    "cosine similarity to the reference sentence's embedding", meta)
    for r in rows:
        if not isinstance(r.get("target"), (str, int)) or r.get("target") == "":
            raise UserError(f"{path}:{r['_line']}: missing 'target' (text or a token id)")

    def first(t):
        if isinstance(t, int):
            return t
        if tok is None:
            raise UserError(f"{model.name} has no tokenizer: give target/distractor as token ids")
        return tok(t, add_special_tokens=False)["input_ids"][0]

    tgt = [first(r["target"]) for r in rows]
    pos = last_positions(clean)
    if all("distractor" in r for r in rows):
        metric = LogitDiff(pos, tgt, [first(r["distractor"]) for r in rows])
        desc = "logit(target) - logit(distractor) at the last token"
    elif any("distractor" in r for r in rows):
        bad = next(r["_line"] for r in rows if "distractor" not in r)
        raise UserError(f"{path}:{bad}: give 'distractor' on every line or on none")
    else:
        metric, desc = LogProb(pos, tgt), "log p(target) at the last token"
    return Task(Path(path).name, clean, corrupt, metric, desc, meta)


def _audio(model, rows, path: Path) -> Task:
    from ..inputs import load_audio
    from .speech import speech

    waves, noisy, paths = [], [], []
    for r in rows:
        _need(r, ("clean_audio", "corrupt_audio"), path)
        try:
            a, b = (load_audio(p if Path(p).is_absolute() else path.parent / p)
                    for p in (r["clean_audio"], r["corrupt_audio"]))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}:{r['_line']}: {exc}") from None
        if len(a) != len(b):
            raise UserError(f"{path}:{r['_line']}: clean and corrupt audio differ in length "
                            f"({len(a) / SAMPLE_RATE:.2f} s vs {len(b) / SAMPLE_RATE:.2f} s)")
        waves.append(a)
        noisy.append(b)
        paths.append(r["clean_audio"])
    task = speech(model, waves=waves, paths=paths, corrupt_waves=noisy,
                  corrupt_paths=[r["corrupt_audio"] for r in rows])
    task.name, task.description = path.name, "log p(greedy clean transcript); corrupt = the paired audio file"
    return task
