"""Audio inputs into a ``Batch``: Whisper (features + decoder tokens) and wav2vec2/HuBERT."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .batch import Batch, pad_ids

from .schema import SAMPLE_RATE, WHISPER_SAMPLES_PER_FRAME

WHISPER_WINDOW_S = 30.0


def prepare_audio(model, waves: list, paths, transcripts) -> Batch:
    waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
    if not waves or any(w.size == 0 for w in waves):
        raise ValueError("every audio input needs at least one sample")
    paths = list(paths) if paths is not None else [None] * len(waves)
    if model.kind == "speech-seq2seq":
        batch = _whisper(model, waves, paths, transcripts)
    else:
        batch = _speech_encoder(model, waves, paths)
    from .inputs.audio import audio_source

    for item in batch.items:  # the file's own rate, channels, length (recorded in meta.json)
        if item["path"] is not None and Path(item["path"]).is_file():
            item["source"] = audio_source(item["path"])
    return batch


def _whisper(model, waves, paths, transcripts) -> Batch:
    for w, p in zip(waves, paths):
        if w.size / SAMPLE_RATE > WHISPER_WINDOW_S:
            raise ValueError(f"{p or 'audio'} is {w.size / SAMPLE_RATE:.1f} s long; Whisper takes at most "
                             f"{WHISPER_WINDOW_S:.0f} s: cut the clip into pieces of 30 s or less")
    fe = model.feature_extractor
    feats = fe(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features.to(model.dtype)
    n_enc = model.hf.config.max_source_positions
    n_real = [min(n_enc, math.ceil(w.size / WHISPER_SAMPLES_PER_FRAME)) for w in waves]
    enc_mask = torch.arange(n_enc)[None, :] < torch.tensor(n_real)[:, None]
    prompt = list(model.meta["prompt_ids"])
    eos = model.hf.config.eos_token_id
    if transcripts is None:
        transcripts = whisper_greedy(model.hf, feats.to(model.device), prompt, eos)
    seqs = [prompt + [t for t in tr if t != eos] for tr in transcripts]
    ids, mask = pad_ids(seqs, eos)
    items = []
    for i, (w, p, s) in enumerate(zip(waves, paths, seqs)):
        text_ids = s[len(prompt):]
        items.append({
            "index": i, "path": None if p is None else str(p), "duration_s": w.size / SAMPLE_RATE,
            "n_frames": n_real[i], "frame_rate": SAMPLE_RATE / WHISPER_SAMPLES_PER_FRAME,
            "text": _decode(model.tokenizer, text_ids),
            "tokens": {"decoder": model.token_strings(s)},
        })
    qm = mask.bool()
    return Batch({"input_features": feats, "decoder_input_ids": ids, "decoder_attention_mask": mask},
                 {"encoder": enc_mask, "decoder": qm, "cross": qm}, items)


def _decode(tok, ids) -> str:
    if tok is None:
        return ""
    return tok.decode(list(ids)).strip()


@torch.no_grad()
def whisper_greedy(hf, feats: torch.Tensor, prompt: list[int], eos: int, max_new_tokens: int = 120) -> list[list[int]]:
    """Greedy transcript token ids (without the prompt, without eos) for log-mel ``feats``
    [batch, mel, 3000], using the HF model's own forward with its KV cache."""
    enc = hf.get_encoder()(feats).last_hidden_state
    b = feats.shape[0]
    cur = torch.tensor([prompt] * b, device=enc.device)
    past = None
    out: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(max_new_tokens):
        o = hf(encoder_outputs=(enc,), decoder_input_ids=cur, past_key_values=past, use_cache=True)
        past = o.past_key_values
        nxt = o.logits[:, -1].argmax(-1)
        for i in range(b):
            if not done[i]:
                if int(nxt[i]) == eos:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        cur = nxt[:, None]
    return out


def _speech_encoder(model, waves, paths) -> Batch:
    fe = model.feature_extractor
    if fe is None:
        from transformers import Wav2Vec2FeatureExtractor

        fe = Wav2Vec2FeatureExtractor()
    enc = fe(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True, return_attention_mask=True)
    lengths = torch.tensor([w.size for w in waves])
    frames = model.audio_frames(lengths).long()
    n = int(frames.max())
    qmask = torch.arange(n)[None, :] < frames[:, None]
    inputs = {"input_values": enc.input_values.to(model.dtype)}
    if getattr(model.hf.config, "feat_extract_norm", "group") == "layer":
        inputs["attention_mask"] = enc.attention_mask
    items = [{"index": i, "path": None if p is None else str(p), "duration_s": w.size / SAMPLE_RATE,
              "n_frames": int(frames[i]), "frame_rate": n / (max(lengths).item() / SAMPLE_RATE),
              "tokens": {}} for i, (w, p) in enumerate(zip(waves, paths))]
    return Batch(inputs, {"self": qmask}, items)
