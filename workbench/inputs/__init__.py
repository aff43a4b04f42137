"""Inputs for attention analyses: prompt sets (natural text, random and repeated tokens,
at an exact length after Gu et al. 2024), prompt files, audio loading at 16 kHz and
bundled speech clips."""
from __future__ import annotations

from .audio import (
    DATA_DIR,
    SAMPLE_RATE,
    TruncatedAudioWarning,
    audio_source,
    builtin_clip_info,
    builtin_clips,
    load_audio,
)
from .prompts import (
    PROMPT_SETS,
    natural_passages,
    random_token_ids,
    read_prompt_file,
    repeated_token_ids,
)
from .sets import PromptSet, natural_texts, prompt_set

__all__ = [
    "PROMPT_SETS",
    "natural_passages",
    "random_token_ids",
    "repeated_token_ids",
    "read_prompt_file",
    "PromptSet",
    "prompt_set",
    "natural_texts",
    "SAMPLE_RATE",
    "DATA_DIR",
    "load_audio",
    "audio_source",
    "TruncatedAudioWarning",
    "builtin_clips",
    "builtin_clip_info",
]
