"""numpy helpers behind the pages: alignment/DTW, rollout, WAV, report, metrics, URL view."""
from __future__ import annotations

import io
import wave

import numpy as np
import pandas as pd
import pytest

from workbench.app import alignment, metrics
from workbench.app.fig_flow import alignment_figure, flow_matrix, token_layer_figure
from workbench.app.report import importance_report
from workbench._rollout import rollout_from_patterns as rollout
from workbench.app.store import RunStore
from workbench.app.view import as_int, href, one, unchanged
from workbench.app.wav import wav_bytes


@pytest.fixture(scope="module")
def store(runs_dir):
    return RunStore(runs_dir)


def _diagonal(n_tok: int, n_frames: int, width: float = 5.0) -> np.ndarray:
    centers = (np.arange(n_tok) + 0.5) / n_tok * n_frames
    f = np.arange(n_frames)
    return np.exp(-((f[None, :] - centers[:, None]) ** 2) / (2 * width**2))


def test_dtw_path_is_monotone_and_complete():
    ti, fj = alignment.dtw(-_diagonal(7, 63))
    assert ti[0] == 0 and fj[0] == 0 and ti[-1] == 6 and fj[-1] == 62
    assert np.all(np.diff(ti) >= 0) and np.all(np.diff(fj) >= 0)
    assert np.all(np.diff(ti) + np.diff(fj) >= 1)


def test_word_timings_follow_the_diagonal():
    toks = ["<|startoftranscript|>", " The", " qu", "ick", " fox", ".", ""]
    m = _diagonal(len(toks), 350)  # 7 s at 50 frames/s, 1 s per token
    words = alignment.word_timings(toks, m)
    assert [w.text for w in words] == ["The", "quick", "fox."]
    assert words[0].start_s == pytest.approx(1.0, abs=0.3)
    assert words[1].start_s == pytest.approx(2.0, abs=0.3)
    assert words[1].end_s == pytest.approx(4.0, abs=0.3)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(words, words[1:]))
    assert alignment.word_timings(["", "<|endoftext|>"], m[:2]) == []


def test_alignment_score_prefers_monotone_peaked_heads():
    toks = ["", " a", " b", " c", " d"]
    good = _diagonal(5, 100)
    flat = np.ones((5, 100))
    backwards = good[::-1].copy()
    s = {(0, 0): alignment.alignment_score(flat, toks),
         (1, 0): alignment.alignment_score(good, toks),
         (2, 0): alignment.alignment_score(backwards, toks)}
    assert alignment.best_heads(s, k=1) == [(1, 0)]
    assert s[(2, 0)] == 0.0
    with pytest.raises(ValueError, match="at least one head"):
        alignment.average_heads([])


def test_rollout_rows_sum_to_one_and_identity_attention_is_fixed_point():
    rng = np.random.default_rng(0)
    p = rng.random((4, 3, 6, 6))
    p = np.tril(p)
    p /= p.sum(-1, keepdims=True)
    r = rollout(list(p))
    assert r.shape == (4, 6, 6)
    np.testing.assert_allclose(r.sum(-1), 1.0)
    eye = np.broadcast_to(np.eye(5), (2, 5, 5))
    np.testing.assert_allclose(rollout([eye, eye])[-1], np.eye(5))
    with pytest.raises(ValueError, match="at least one"):
        rollout([])
    with pytest.raises(ValueError, match="square"):
        rollout([np.ones((1, 2, 3))])


def test_wav_bytes_roundtrip():
    x = np.sin(np.linspace(0, 20, 1600)).astype(np.float32) * 0.5
    data = wav_bytes(np.concatenate([x, [3.0, -3.0]]))
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == \
            (1, 2, 16000, 1602)
        pcm = np.frombuffer(w.readframes(1602), "<i2")
    np.testing.assert_allclose(pcm[:1600] / 32767, x, atol=1e-4)
    assert pcm[-2] == 32767 and pcm[-1] == -32767
    with pytest.raises(ValueError, match="mono"):
        wav_bytes(np.zeros((2, 10)))


def test_report_ranks_by_absolute_effect(store):
    run = store.run("smol")
    text = importance_report(run, top=5)
    heads = run.heads
    top = heads.loc[heads["patch.effect"].abs().idxmax()]
    assert "# Head-importance report: smol" in text
    assert f"| 1 | self/{top['layer']}/{top['head']} |" in text
    assert "## Top 5 heads by patch: effect" in text and "Taxonomy classes" in text
    plain = importance_report(store.run("whisper"))
    assert "No importance or patching columns" in plain and "sinks: alpha1" in plain


def test_metric_helpers(store):
    heads = store.run("smol").heads
    assert metrics.default_metric(heads) == "entropy.mean_nats"
    assert metrics.exact_and_atp(heads) == ("patch.effect", "patch.atp")
    assert "taxonomy.class" not in metrics.numeric_columns(heads)
    assert metrics.label("entropy.mean_nats") == "entropy: mean nats"
    assert metrics.format_value(np.float32(0.123456)) == "0.1235"
    assert metrics.format_value(np.bool_(True)) == "True"
    opts = [o["value"] for o in metrics.metric_options(heads)]
    assert opts[0] == "entropy.mean_nats" and set(opts) == set(metrics.metric_columns(heads))


def test_flow_figures(store):
    table = store.table("smol", "flow")
    values, tokens, layers = flow_matrix(table, "self", 1, "rollout")
    assert values.shape == (30, 14) and tokens[1] == " Mary" and layers == list(range(30))
    fig = token_layer_figure(values, tokens, layers=layers)
    assert fig.layout.xaxis.ticktext[1] == "␣Mary"
    with pytest.raises(ValueError, match="no rows"):
        flow_matrix(table, "self", 9, "rollout")
    with pytest.raises(ValueError, match="lacks columns"):
        flow_matrix(table.drop(columns=["flow"]), "self", 0, "flow")
    toks = ["", " a", " b", ""]
    m = _diagonal(4, 200)
    words = alignment.word_timings(toks, m)
    af = alignment_figure(m, toks, words, np.zeros((80, 400)))
    assert len([a for a in af.layout.annotations if a.text in ("a", "b")]) == 2
    assert alignment_figure(m, toks, words, None).data[0].type == "heatmap"


def test_url_view_helpers():
    assert one(["a", "b"]) == "a" and one("") is None and one(None) is None
    assert as_int("3") == 3 and as_int("x", 7) == 7 and as_int(["4", "5"]) == 4
    assert href("/grid", run="smol", head=3, layer=None) == "/grid?run=smol&head=3"
    assert href("/detail") == "/detail"
    assert unchanged({"run": "a", "head": [1, 2, 3]}, run="a", head=[1, 2, 3])
    assert not unchanged(None, run="a") and not unchanged({"run": "a"}, run="b")


def test_dataframe_input_edge_cases():
    empty = pd.DataFrame(columns=["stream", "layer", "input", "position", "rollout"])
    with pytest.raises(ValueError):
        flow_matrix(empty, "self", 0, "rollout")


def test_flow_page_prefers_the_alignment_analysis_ranking(store):
    """With ``alignment.score`` in heads.parquet the default alignment heads are the
    analysis's best; without it, the per-input peak x monotonicity score picks them."""
    import dataclasses

    from workbench.app.pages import flow

    run = store.run("whisper")
    scores, analysed = flow._cross_scores(store, run, 0)
    assert not analysed and len(scores) == 4 * 6
    heads = run.heads.copy()
    score = np.zeros(len(heads))
    cross = (heads["stream"] == "cross").to_numpy()
    want = [(2, 4), (0, 1), (3, 3)]
    for rank, (layer, head) in enumerate(want):
        score[cross & (heads["layer"] == layer).to_numpy() & (heads["head"] == head).to_numpy()] = 1.0 - rank / 10
    heads["alignment.score"] = np.where(cross, score, np.nan)
    ranked = dataclasses.replace(run, heads=heads)
    scores, analysed = flow._cross_scores(store, ranked, 0)
    assert analysed
    assert alignment.best_heads(scores, k=3) == want
    children, best = flow._alignment_card(store, ranked, 0, {0})
    assert best == [f"{layer}/{head}" for layer, head in want]


def test_average_heads_uses_whisper_normalisation():
    """z-score along tokens and a width-7 median filter along frames, as Whisper's timing.py."""
    from scipy.ndimage import median_filter

    rng = np.random.default_rng(0)
    a, b = rng.random((5, 40)), rng.random((5, 40))
    z = lambda m: (m - m.mean(0)) / m.std(0)  # noqa: E731
    want = (median_filter(z(a), size=(1, 7), mode="nearest") + median_filter(z(b), size=(1, 7), mode="nearest")) / 2
    np.testing.assert_allclose(alignment.average_heads([a, b]), want, rtol=1e-12, atol=1e-12)
