"""``workbench report`` on real run folders: every format, rankings and per-layer summaries
recomputed from heads.parquet by hand, --compare differences, one-line refusals. The HTML report
in headless Chromium is tests/app/test_report_browser.py."""
from __future__ import annotations

import json
import re
import struct

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from clirun import cli, one_line_error
from real_runs import real_runs
from workbench.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return real_runs(tmp_path_factory)


def _report(run, out, *extra):
    assert main(["report", str(run), "--out", str(out), *map(str, extra)]) == 0


def test_csv_parquet_json_rank_every_head_and_follow_the_schema(runs, tmp_path):
    heads = pd.read_parquet(runs["run"] / "heads.parquet")
    for fmt in ("csv", "parquet", "json"):
        _report(runs["run"], tmp_path / f"r.{fmt}")
    csv = pd.read_csv(tmp_path / "r.csv")
    par = pd.read_parquet(tmp_path / "r.parquet")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert list(csv.columns) == ["rank", *heads.columns, "schema_version"] == list(par.columns)
    assert (csv["schema_version"] == 1).all() and doc["schema_version"] == 1 and len(doc["heads"]) == len(heads) == len(csv)
    meta = json.loads(pq.read_schema(tmp_path / "r.parquet").metadata[b"workbench"])
    assert meta["schema_version"] == 1 and meta["provenance"]["model"]["name"] == "minilm-l6"
    # ranked by sinks.alpha1, largest first (hand sort of the run's own table)
    want = heads.sort_values("sinks.alpha1", ascending=False, kind="stable")
    assert doc["ranked_by"] == "sinks.alpha1"
    np.testing.assert_allclose(par["sinks.alpha1"], want["sinks.alpha1"])
    np.testing.assert_allclose(csv["sinks.alpha1"], want["sinks.alpha1"], rtol=1e-12)
    assert list(par["rank"]) == list(range(1, len(heads) + 1))
    assert set(par["taxonomy.type"]) == set(heads["taxonomy.type"])
    # per-layer means and class counts by hand
    for row in doc["layers"]:
        rows = heads[(heads.stream == row["stream"]) & (heads.layer == row["layer"])]
        assert row["heads"] == len(rows)
        assert row["mean entropy.mean_nats"] == pytest.approx(sum(rows["entropy.mean_nats"]) / len(rows))
        for cls in set(heads["taxonomy.type"]):
            assert row[f"n {cls}"] == int((rows["taxonomy.type"] == cls).sum())
    assert {m["analysis"] for m in doc["methods"]} == {"entropy", "sinks", "taxonomy"}
    assert all(re.search(r"\d{4}", m["cite"]) for m in doc["methods"])
    assert doc["provenance"]["command"] == "test run" and doc["provenance"]["inputs"]["n_items"] == 2


def test_patch_report_ranks_by_absolute_effect_and_prune_report_draws_the_curve(runs, tmp_path):
    _report(runs["patch"], tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    effects = pd.read_parquet(runs["patch"] / "heads.parquet")["patch.effect"]
    assert doc["ranked_by"] == "patch.effect"
    assert [h["patch.effect"] for h in doc["heads"]] == pytest.approx(
        sorted(effects, key=lambda v: -abs(v)))
    _report(runs["prune"], tmp_path / "pr.md")
    text = (tmp_path / "pr.md").read_text()
    links = re.findall(r"\]\((pr_files/[^)]+\.html)\)", text)
    assert any("pruning-curve" in l for l in links) and any("importance-michel" in l for l in links)
    for link in links:
        fig = (tmp_path / link).read_text()
        assert 'src="plotly.min.js"' in fig and "cdn.plot.ly" not in fig and "https://" not in fig
    assert (tmp_path / "pr_files" / "plotly.min.js").stat().st_size > 1_000_000
    # a static image beside every interactive figure, shown inline (GitHub renders these)
    images = re.findall(r"!\[[^]]+\]\((pr_files/[^)]+\.png)\)", text)
    assert [i.removesuffix(".png") for i in images] == [l.removesuffix(".html") for l in links]
    for image in images:
        data = (tmp_path / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])                # IHDR
        assert width >= 400 and height >= 300 and len(data) > 5_000     # drawn, not an empty canvas
    assert "Michel et al. 2019" in text and "| rank | stream | layer | head |" in text
    _report(runs["patch"], tmp_path / "p.html")
    html = (tmp_path / "p.html").read_text()
    assert "patching heatmap: patch.effect" in html
    assert not re.search(r"<script[^>]*\bsrc=", html) and "<link" not in html     # plotly.js inlined, no CDN


def test_compare_reports_per_head_differences(runs, tmp_path):
    _report(runs["run"], tmp_path / "c.csv", "--compare", runs["run2"])
    c = pd.read_csv(tmp_path / "c.csv")
    a = pd.read_parquet(runs["run"] / "heads.parquet").set_index(["stream", "layer", "head"])
    b = pd.read_parquet(runs["run2"] / "heads.parquet").set_index(["stream", "layer", "head"])
    want = (a["sinks.alpha1"] - b["sinks.alpha1"])
    got = c.set_index(["stream", "layer", "head"])["diff.sinks.alpha1"]
    np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-9, atol=1e-12)
    assert list(c["diff.sinks.alpha1"].abs()) == sorted(c["diff.sinks.alpha1"].abs(), reverse=True)
    assert {"a.taxonomy.type", "b.taxonomy.type", "diff.entropy.mean_nats"} <= set(c.columns)


def test_bad_input_is_one_line_and_nothing_is_replaced(runs, tmp_path, capsys):
    mine = tmp_path / "mine.html"
    mine.write_text("not the workbench's")
    (tmp_path / "m_files").mkdir()
    cases = [(["report", tmp_path, "--out", tmp_path / "a.html"], "is not a run folder"),
             (["report", runs["run"], "--compare", runs["patch"], "--out", tmp_path / "b.html"], "different models"),
             (["report", runs["run"], "--format", "docx", "--out", tmp_path / "c.docx"], "unknown report format"),
             (["report", runs["run"], "--out", tmp_path / "d.txt"], "unknown report format"),
             (["report", runs["run"], "--out", mine], "never replaces a file"),
             (["report", runs["run"], "--out", tmp_path / "m.md"], "figure folder"),
             (["report", runs["run"], "--out", tmp_path / "no" / "e.html"], "is not a folder")]
    for args, needle in cases:
        one_line_error(*cli(capsys, *args), needle)
    assert mine.read_text() == "not the workbench's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_files", "mine.html"]


def test_markdown_without_a_browser_for_kaleido_links_the_interactive_figures(runs, tmp_path, monkeypatch):
    import plotly.io as pio

    def no_chrome(*_a, **_k):
        raise RuntimeError("\n\nKaleido requires Google Chrome to be installed.\n")

    monkeypatch.setattr(pio, "write_images", no_chrome)
    _report(runs["prune"], tmp_path / "n.md")
    text = (tmp_path / "n.md").read_text()
    assert "No static images: kaleido found no Chrome or Chromium" in text and "![" not in text
    assert re.findall(r"\]\((n_files/[^)]+\.html)\)", text) and not list((tmp_path / "n_files").glob("*.png"))

    def broken(*_a, **_k):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(pio, "write_images", broken)      # any other failure is a bug: raised, nothing left
    with pytest.raises(RuntimeError, match="something else"):
        main(["report", str(runs["prune"]), "--out", str(tmp_path / "b.md")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.md", "n_files"]


def test_markdown_images_survive_a_kaleido_page_that_was_not_ready(runs, tmp_path, monkeypatch):
    import plotly.io as pio

    class JavascriptError(RuntimeError):          # kaleido's, seen on a loaded machine
        pass

    calls = []

    def flaky(figs, paths, **_k):              # the second browser session draws them (here: empty files)
        calls.append(len(figs))
        if len(calls) == 1:
            raise JavascriptError("ReferenceError: kaleido_scopes is not defined")
        for p in paths:
            p.write_bytes(b"")

    monkeypatch.setattr(pio, "write_images", flaky)
    _report(runs["prune"], tmp_path / "k.md")
    text = (tmp_path / "k.md").read_text()
    assert len(calls) == 2 and calls[0] == calls[1] == text.count("![") > 0
    assert len(list((tmp_path / "k_files").glob("*.png"))) == calls[0]


def test_every_analysis_of_workbench_run_has_a_method_note_with_a_citation():
    from workbench._report_content import NOTES
    from workbench.analyses import registry

    missing = sorted(set(registry()) - set(NOTES))
    assert not missing, f"analyses without a method note in the report: {missing}"
    for name in registry():
        what, cite = NOTES[name]
        assert what and re.search(r"(19|20)\d\d", cite), name


def test_html_report_titles_each_figure_once(runs, tmp_path):
    """Each figure is headed by its h3 only: the plotly figure's own title (e.g. "sinks: alpha1"
    under "head grid: sinks.alpha1") was drawn again inside the figure."""
    from workbench._report_content import build
    from workbench._report_render import figures
    from workbench.run_folder import open_run

    out = tmp_path / "r.html"
    _report(runs["run"], out)
    text = out.read_text()
    figs = figures(build(open_run(runs["run"])))
    own = [f.layout.title.text for _, f in figs if f.layout.title.text]
    assert own, "the figures have titles of their own (else this test checks nothing)"
    for title, _ in figs:
        assert text.count(f"<h3>{title}</h3>") == 1
    for t in own:
        assert json.dumps({"text": t})[1:-1] not in text, t
