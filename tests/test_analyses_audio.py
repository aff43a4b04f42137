"""Whisper alignment heads against speech with known word times; encoder head types."""
from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from workbench.analyses import Context, alignment, encoder_heads
from workbench.analyses._speech import synth_words, words_of


@pytest.fixture(scope="module")
def tiny():
    return wb.load("whisper-tiny.en")


def test_synth_words_gives_known_intervals():
    wave, iv = synth_words(["seven", "green", "lanterns"], gap_s=0.2)
    assert wave.dtype == np.float32 and len(iv) == 3
    assert iv[0][0] == pytest.approx(0.3)
    for (s0, e0), (s1, _) in zip(iv, iv[1:]):
        assert s1 - e0 == pytest.approx(0.2, abs=1e-4) and e0 > s0
    assert abs(wave[int(iv[0][0] * 16000) - 100]) == 0                # silence before the word
    assert words_of("Stella's store, please.") == ["Stella's", "store", "please"]


def test_dtw_is_monotone_and_covers_everything():
    rng = np.random.default_rng(0)
    cost = rng.random((5, 20))
    ti, fi = alignment.dtw(cost)
    assert ti[0] == 0 and fi[0] == 0 and ti[-1] == 4 and fi[-1] == 19
    assert (np.diff(ti) >= 0).all() and (np.diff(fi) >= 0).all()
    diag = np.full((4, 8), 1.0)
    for i in range(4):
        diag[i, 2 * i: 2 * i + 2] = 0.0
    seg = alignment.token_segments(-diag)
    assert seg[:, 0].tolist() == [0, 2, 4, 6]


def test_alignment_heads_whisper_tiny(tiny):
    res = alignment.ANALYSIS.run(Context(tiny, None, {"sentences": alignment.SENTENCES[:2], "n_heads": 4}))
    t = res.table.sort_values("alignment.rank")
    assert len(t) == 24 and t["alignment.rank"].tolist() == list(range(1, 25))
    assert t["alignment.score"].iloc[0] > 0.8                        # some head tracks word timing
    assert t["alignment.score"].iloc[-1] < 0.5                       # and many do not
    assert (t.head(4)["layer"] >= 1).all()                           # alignment heads live in later layers
    assert all(e["mean_abs_error_s"] < 0.3 for e in res.summary["timing_error_s"])


def test_alignment_bad_input(tiny):
    with pytest.raises(ValueError, match="30 s"):
        alignment.cross_attention(tiny, np.zeros(16000 * 31, np.float32), [400])
    with pytest.raises(ValueError, match="cross-attention"):
        alignment.ANALYSIS.run(Context(wb.load("minilm-l6"), None, {}))


def test_word_times_for_a_clip(tiny):
    from workbench.inputs import builtin_clip_info, builtin_clips, load_audio

    clip = builtin_clips()[0]
    n_words = len(words_of(builtin_clip_info()[clip.name]["text"]))
    batch = tiny.prepare_audio([load_audio(clip)], paths=[str(clip)])
    res = alignment.ANALYSIS.run(Context(tiny, batch, {"sentences": alignment.SENTENCES[:1], "n_heads": 4}))
    wt = res.tables["word_times"]
    assert abs(len(wt) - n_words) <= 2 and (wt["end_s"] >= wt["start_s"]).all()
    assert (np.diff(wt["start_s"]) >= 0).all() and wt["end_s"].max() <= batch.items[0]["duration_s"] + 0.05


def test_encoder_head_types(tiny):
    from workbench.inputs import builtin_clips, load_audio

    clip = builtin_clips()[2]
    batch = tiny.prepare_audio([load_audio(clip)], transcripts=[[]])
    res = encoder_heads.ANALYSIS.run(Context(tiny, batch, {}))
    t = res.table
    assert len(t) == 24 and set(t["encoder_heads.type"]) <= {"local", "vertical", "global", "other"}
    assert (t["encoder_heads.type"] == "local").sum() >= 2
    local = t[t["encoder_heads.type"] == "local"]
    assert (local["encoder_heads.peak_offset"].abs() <= 2).all()
    assert res.tensors["encoder_heads"]["offset_profile/encoder/0"].shape == (6, 101)
    assert encoder_heads.applies(wb.load("smollm2-135m")) is not None


def test_alignment_heads_recover_openai_heads(tiny):
    """Scoring against known word times finds most of the heads OpenAI published for tiny.en."""
    res = alignment.ANALYSIS.run(Context(tiny, None, {}))
    ours = set(res.summary["top_heads"])
    openai = {f"cross/{l}/{h}" for l, h in alignment.OPENAI_HEADS["tiny.en"]}
    assert len(ours & openai) >= 4                                   # chance: 8 * 8 / 24 = 2.7


def _hide_espeak(monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "espeak-ng" else real(name, *a, **k))


def test_alignment_without_espeak_uses_published_heads_and_times_words_within_the_speech(tiny, tmp_path,
                                                                                        monkeypatch):
    """A user's clip with 1.5 s of silence on both sides, on a machine without espeak-ng:
    the analysis falls back to OpenAI's published heads, says so, and the words start after
    the leading silence and end before the trailing one (before: 0 s and the clip's end)."""
    import soundfile

    from workbench.inputs import builtin_clips, load_audio

    clip = [c for c in builtin_clips() if c.name == "speech_hello.wav"][0]   # "Hello, my name is John ..."
    wave = load_audio(clip)
    pad = np.zeros(int(1.5 * 16000), np.float32)
    path = tmp_path / "padded.wav"
    soundfile.write(path, np.concatenate([pad, wave, pad]), 16000)
    batch = tiny.prepare_audio([load_audio(path)], paths=[str(path)])
    _hide_espeak(monkeypatch)
    res = alignment.ANALYSIS(tiny, batch)
    published = [f"cross/{l}/{h}" for l, h in alignment.OPENAI_HEADS["tiny.en"]]
    assert res.summary["heads_used"] == published
    assert "published" in res.summary["heads_source"] and "espeak-ng is not installed" in res.summary["heads_source"]
    t = res.table
    assert t["alignment.published"].sum() == 8 and t["alignment.score"].isna().all()
    wt = res.tables["word_times"]
    assert [w.strip(",.").lower() for w in wt["word"]][:4] == ["hello", "my", "name", "is"]
    duration = batch.items[0]["duration_s"]
    assert wt["start_s"].min() >= 1.5 - 0.1                        # not 0 s
    assert wt["end_s"].max() <= 1.5 + len(wave) / 16000 + 0.1       # not the clip's end
    assert wt["end_s"].max() < duration - 1.2
    assert (np.diff(wt["start_s"]) >= 0).all() and (wt["end_s"] >= wt["start_s"]).all()


def test_alignment_head_choice_errors_before_compute(tiny, monkeypatch):
    from tiny import tiny_hf

    from workbench.errors import UserError

    with pytest.raises(UserError, match="no parameter 'voices'"):
        alignment.ANALYSIS(tiny, None, voices="en")
    with pytest.raises(UserError, match="voice 'xx-no-such-voice'"):
        alignment.ANALYSIS(tiny, None, voice="xx-no-such-voice", sentences=("hello",))
    _hide_espeak(monkeypatch)
    with pytest.raises(UserError, match="needs espeak-ng.*heads='published'"):
        alignment.ANALYSIS(tiny, None, heads="scored")
    random_whisper = wb.wrap(tiny_hf("whisper"))
    with pytest.raises(UserError, match="espeak-ng is not installed and OpenAI published no alignment heads"):
        alignment.ANALYSIS(random_whisper, None)
