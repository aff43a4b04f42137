"""Audio inputs: load any common audio file as 16 kHz mono float32, and bundled speech clips.

Speech models here (Whisper, wav2vec2, HuBERT) take 16 kHz mono waveforms. Files are read
with ``soundfile`` (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, and MP3 from libsndfile 1.1 on),
downmixed by averaging the channels and resampled with ``soxr`` (quality "HQ"). A file
that decodes to fewer samples than its header states (a truncated copy) loads with a
``TruncatedAudioWarning``; ``audio_source`` gives the file's own rate, channels and length.

The bundled clips (``data/speech_*.wav``) are English sentences synthesised with
``espeak-ng`` and converted with ``sox`` to 16 kHz mono 16-bit PCM by
``scripts/make_speech_fixtures.sh``; ``data/speech.json`` records per file the text spoken,
the duration in seconds, the sample rate in Hz and the number of samples.
"""
from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import soundfile
import soxr

__all__ = ["SAMPLE_RATE", "DATA_DIR", "TruncatedAudioWarning", "audio_source", "load_audio", "builtin_clips",
           "builtin_clip_info"]

from ..schema import SAMPLE_RATE  # Hz: every waveform ``load_audio`` returns

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Folder holding the bundled speech clips and ``speech.json``."""

_READABLE = "WAV, FLAC, OGG, MP3"


class TruncatedAudioWarning(UserWarning):
    """An audio file decodes to a different number of samples than its header states (a
    truncated or damaged file); the decoded samples are what gets analysed."""


def _riff_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header declares (data chunk bytes // block align); None when the
    file is not RIFF/WAVE or declares no length (streamed WAV, RF64)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while chunk := f.read(8):
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size + (size & 1))
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif cid == b"data":
                if not block_align or size == 0xFFFFFFFF:
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), 1)
    return None


def _read(path: Path) -> tuple[np.ndarray, int, dict]:
    """Decode ``path``: samples [frames, channels] float32, the file's rate (Hz) and the
    facts ``audio_source`` returns. Raises FileNotFoundError / ValueError as ``load_audio``."""
    if not path.exists():
        raise FileNotFoundError(f"audio file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an audio file")
    try:
        info = soundfile.info(str(path))
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as err:
        hint = ""
        if path.suffix.lower() == ".mp3" and "MP3" not in soundfile.available_formats():
            hint = (f" (this libsndfile {soundfile.__libsndfile_version__} cannot decode MP3; "
                    f"libsndfile >= 1.1 can, or convert the file to WAV/FLAC)")
        raise ValueError(
            f"{path} is not an audio file soundfile can read ({_READABLE}): {err}{hint}"
        ) from None
    header = _riff_frames(path) if info.format in ("WAV", "WAVEX") else int(info.frames)
    frames = int(data.shape[0])
    source = {
        "sample_rate": int(rate), "channels": int(data.shape[1]), "frames": frames,
        "duration_s": frames / rate if rate else 0.0, "header_frames": header,
        "format": info.format, "subtype": info.subtype,
        "truncated": header is not None and frames < header,
    }
    return data, int(rate), source


def audio_source(path: str | Path) -> dict:
    """What an audio file holds before ``load_audio`` converts it (recorded in run folders).

    Returns:
        ``sample_rate`` (Hz, the file's own), ``channels``, ``frames`` (samples per channel
        decoded), ``duration_s`` (``frames / sample_rate``), ``header_frames`` (samples per
        channel the header states: the WAV data chunk's length, else libsndfile's header
        count; None when the header states none), ``format`` and ``subtype`` (libsndfile's
        names, e.g. ``WAV``/``PCM_16``) and ``truncated`` (fewer decoded than stated).

    Raises:
        FileNotFoundError / ValueError: as ``load_audio``.
    """
    return _read(Path(path))[2]


def load_audio(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load an audio file as a mono float32 waveform at ``sample_rate`` Hz (default 16 kHz).

    Multi-channel audio is downmixed by averaging the channels; other rates are resampled
    with ``soxr`` (HQ). Values are in [-1, 1] for integer PCM sources. The duration in
    seconds is ``len(result) / sample_rate``; resampling preserves it to within one sample.
    The file's own rate, channels and header length are given by ``audio_source``.

    Args:
        path: a file in a format libsndfile reads (WAV, FLAC, OGG, MP3, AIFF, ...).
        sample_rate: target rate in Hz (samples per second).

    Returns:
        1-D ``numpy.float32`` array of samples, C-contiguous.

    Warns:
        TruncatedAudioWarning: if the file decodes to a different number of samples than
            its header states (a truncated download or copy); the decoded samples are used.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``path`` is a directory or not an audio file soundfile can read
            (the message names the file and gives libsndfile's reason), if it holds no
            samples, or if ``sample_rate`` is not positive.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    data, rate, source = _read(path)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"audio file {path} is empty (0 samples); give a file with sound in it")
    header = source["header_frames"]
    if header is not None and header != source["frames"]:
        warnings.warn(
            f"audio file {path} decodes to {source['frames']} samples ({source['frames'] / rate:.3f} s) but its "
            f"header states {header} ({header / rate:.3f} s): the file looks truncated or damaged; "
            f"using the decoded samples", TruncatedAudioWarning, stacklevel=2)
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def builtin_clips() -> list[Path]:
    """Return the paths of the bundled speech clips (``data/speech_*.wav``), sorted.

    Each clip is 2-5 seconds of synthetic English speech (espeak-ng, en-us, 160 words per
    minute), 16 kHz mono 16-bit PCM; its text and duration are in ``builtin_clip_info()``.
    whisper-tiny.en and whisper-base both transcribe every clip word for word (greedy).

    Raises:
        FileNotFoundError: if the package was installed without its data files.
    """
    clips = sorted(DATA_DIR.glob("speech_*.wav"))
    if not clips:
        raise FileNotFoundError(
            f"no speech clips in {DATA_DIR}; reinstall workbench with its package data or run "
            f"scripts/make_speech_fixtures.sh"
        )
    return clips


def builtin_clip_info() -> dict[str, dict]:
    """Return ``data/speech.json``: per clip file name, the spoken ``text``, ``duration_s``
    (seconds), ``sample_rate`` (Hz) and ``num_samples`` (samples).

    Raises:
        FileNotFoundError: if the package was installed without its data files.
    """
    meta = DATA_DIR / "speech.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing; run scripts/make_speech_fixtures.sh")
    return json.loads(meta.read_text(encoding="utf-8"))
