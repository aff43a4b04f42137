"""Transcript log-probability for Whisper: clean clip vs the same clip with added noise.

For each bundled speech clip (``workbench.inputs.builtin_clips()``, or given waveforms),
the reference transcript is the model's own greedy transcript of the clean clip. Corrupt:
the clip plus white Gaussian noise at ``snr_db`` (signal-to-noise ratio in dB over the whole
clip; seeded). Both are teacher-forced with the same decoder tokens. Metric: log p of the
transcript tokens (after the decoder prompt) summed over tokens (nats).
"""
from __future__ import annotations

import numpy as np
import torch

from ..patching.metrics import TokenLogProb
from ._task import Task


def add_noise(wave: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``wave`` plus white Gaussian noise at ``snr_db`` dB (power ratio over the clip)."""
    rng = np.random.default_rng(seed)
    p = float(np.mean(wave.astype(np.float64) ** 2))
    noise = rng.standard_normal(wave.shape) * np.sqrt(p / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def speech(model, n: int | None = None, seed: int = 0, snr_db: float = 0.0, waves=None, paths=None,
           corrupt_waves=None, corrupt_paths=None) -> Task:
    """Whisper transcript task on up to ``n`` clips (default: every bundled clip).

    ``waves`` (16 kHz float32 [samples] each) replace the bundled clips; ``corrupt_waves``
    (same lengths) replace the noisy copies, e.g. a user's own paired recordings. Raises
    ValueError for a model that is not Whisper."""
    if model.kind != "speech-seq2seq":
        raise ValueError(f"task 'speech' needs a Whisper model (e.g. whisper-tiny.en); {model.name} is {model.kind}")
    if waves is None:
        from ..inputs import builtin_clips, load_audio

        paths = [str(p) for p in builtin_clips()][:n] if n else [str(p) for p in builtin_clips()]
        waves = [load_audio(p) for p in paths]
    noised = corrupt_waves is None
    if noised:
        corrupt_waves = [add_noise(w, snr_db, seed + i) for i, w in enumerate(waves)]
    clean = model.prepare_audio(waves, paths=paths)
    prompt = len(model.meta.get("prompt_ids", [])) or 1
    ids = clean.model_inputs["decoder_input_ids"]
    transcripts = [ids[i, prompt:][clean.model_inputs["decoder_attention_mask"][i, prompt:].bool()].tolist()
                   for i in range(len(waves))]
    corrupt = model.prepare_audio(corrupt_waves, paths=corrupt_paths or paths, transcripts=transcripts)
    mask = clean.model_inputs["decoder_attention_mask"]
    t = ids.shape[1]
    pos = torch.arange(prompt - 1, t - 1).expand(len(waves), -1)
    targets = ids[:, prompt:]
    weights = mask[:, prompt:].float()
    return Task("speech", clean, corrupt, TokenLogProb(pos, targets, weights, reduce="sum"),
                f"log p(greedy clean transcript), summed over tokens; corrupt = white noise at {snr_db:g} dB SNR",
                {"paths": paths, "snr_db": snr_db if noised else None, "seed": seed,
                 "transcripts": [it.get("text", "") for it in clean.items]})
