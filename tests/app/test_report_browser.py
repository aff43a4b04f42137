"""The HTML report of ``workbench report`` in headless Chromium, opened from a file with no
server: every figure is drawn by the inlined plotly.js, no console errors, no network fetch."""
from __future__ import annotations

import pytest

from _browser import console_errors, shot, wait
from workbench.cli import main

_DRAWN = """
const divs = Array.from(document.querySelectorAll('div.figure'));
return divs.map(d => { const gd = d.querySelector('.js-plotly-plot');
                       return !!(gd && gd._fullLayout && gd.data && gd.data.length); });
"""
_FETCHED = "return performance.getEntriesByType('resource').map(e => e.name);"


@pytest.mark.parametrize("run,compare", [("smol", None), ("smol", "smol-b"), ("whisper", None)],
                         ids=["single", "compare", "whisper"])
def test_html_report_renders_offline(runs_dir, browser, tmp_path, run, compare):
    out = tmp_path / "report.html"
    extra = ["--compare", str(runs_dir / compare)] if compare else []
    assert main(["report", str(runs_dir / run), "--out", str(out), *extra]) == 0
    console_errors(browser)                                  # empty the log of earlier pages
    browser.get(out.as_uri())
    wait(browser, lambda d: d.execute_script(_DRAWN) and all(d.execute_script(_DRAWN)), 30, "figures drawn")
    drawn = browser.execute_script(_DRAWN)
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('div.figure')).map(d => d.dataset.title);")
    rows = browser.execute_script("return document.querySelectorAll('#ranked-heads tbody tr').length;")
    if compare:
        assert titles == ["difference retrieval.score: smol - smol-b"]   # smol-b has no patch.effect
    elif run == "smol":
        assert len(drawn) >= 4 and "pruning curve" in titles and titles[0] == "patching heatmap: patch.effect"
    else:       # Whisper: the word alignment of the first clip from its best cross heads, on a time axis
        assert [t for t in titles if t.startswith("word alignment, input 0: cross heads")], titles
        traces = browser.execute_script(
            "const d = Array.from(document.querySelectorAll('div.figure')).find(d => "
            "d.dataset.title.startsWith('word alignment')).querySelector('.js-plotly-plot');"
            "return [d.data.map(t => t.type + ':' + (t.name || '')), d._fullLayout.xaxis.title.text];")
        assert "scatter:DTW path" in traces[0] and "scatter:words" in traces[0] and traces[1] == "time (s)"
    assert rows == (30 * 9 if run == "smol" else 3 * 4 * 6)
    assert console_errors(browser) == []
    assert [u for u in browser.execute_script(_FETCHED) if not u.startswith("file:")] == []
    shot(browser, f"report-{'compare' if compare else 'single' if run == 'smol' else run}")


def test_export_page_serves_the_html_report_through_the_store(client, runs_dir, tmp_path):
    r = client.get("/download/smol/report.html")
    assert r.status_code == 200 and r.mimetype == "text/html"
    body = r.data.decode()
    assert "<meta name='generator' content='workbench report'>" in body and "pruning curve" in body
    assert client.get("/download/nope/report.html").status_code == 404
    assert client.get("/download/future/report.html").status_code == 404      # newer schema_version: refused


def test_taxonomy_type_of_real_runs_is_shown_like_taxonomy_class():
    import pandas as pd

    from workbench.app.metrics import metric_options
    from workbench.app.report import importance_report
    from workbench.app.run import Run

    heads = pd.DataFrame({"stream": ["self"] * 3, "layer": [0, 0, 1], "head": [0, 1, 0],
                          "sinks.alpha1": [0.9, 0.1, 0.5], "taxonomy.type": ["sink", "other", "sink"]})
    run = Run("r", {"model": {"name": "m"}, "inputs": {"kind": "text", "items": []}, "analyses": {}}, heads)
    text = importance_report(run)
    assert "## Taxonomy classes per stream" in text and "| self | 1 | 2 |" in text
    assert "taxonomy: type" in text.split("## Top")[1]
    assert [o["value"] for o in metric_options(heads)][:2] == ["sinks.alpha1", "taxonomy.type"]


def test_a_metric_that_does_not_apply_reads_n_a_not_nan():
    import numpy as np
    import pandas as pd

    from workbench.app.fig_grid import head_grid_figure
    from workbench.app.metrics import format_value

    assert format_value(float("nan")) == "n/a" and format_value(np.float32("nan")) == "n/a"
    heads = pd.DataFrame({"stream": ["cross", "cross"], "layer": [0, 0], "head": [0, 1],
                          "retrieval.score": [np.nan, 0.5], "sinks.alpha1": [0.2, 0.3]})
    hover = head_grid_figure(heads, "retrieval.score").data[0].text
    assert "n/a" in str(hover) and "nan" not in str(hover).lower().replace("n/a", "")


def test_metric_menu_options_carry_a_definition_with_its_source():
    import pandas as pd

    from workbench.app.metrics import metric_options

    heads = pd.DataFrame({"stream": ["self"], "layer": [0], "head": [0], "entropy.mean_nats": [1.0],
                          "patch.effect": [0.1], "custom.x": [2.0]})
    titles = {o["value"]: o["title"] for o in metric_options(heads)}
    assert "nats" in titles["entropy.mean_nats"] and "Zhai et al. 2023" in titles["entropy.mean_nats"]
    assert "Nanda 2023" in titles["patch.effect"] and titles["custom.x"] == "custom.x"


@pytest.mark.timeout(1200)
def test_html_reports_of_real_runs_render_offline(real_runs_dir, browser, tmp_path):
    """Reports of real workbench run / patch folders (smollm2-135m, whisper-tiny.en, an IOI patch
    run): every figure drawn by the inlined plotly.js, a row per head, no console error."""
    from workbench.run_folder import open_run

    for name in ("smollm2", "whisper", "smollm2-ioi"):
        out = tmp_path / f"{name}.html"
        assert main(["report", str(real_runs_dir / name), "--out", str(out)]) == 0
        console_errors(browser)
        browser.get(out.as_uri())
        wait(browser, lambda d: d.execute_script(_DRAWN) and all(d.execute_script(_DRAWN)), 60, f"{name} figures")
        titles = browser.execute_script(
            "return Array.from(document.querySelectorAll('div.figure')).map(d => d.dataset.title);")
        rows = browser.execute_script("return document.querySelectorAll('#ranked-heads tbody tr').length;")
        assert rows == len(open_run(real_runs_dir / name).heads)
        assert len(titles) >= 2, titles
        if name == "whisper":
            assert any(t.startswith("word alignment, input 0") for t in titles), titles
        if name == "smollm2-ioi":
            assert titles[0].startswith("patching heatmap"), titles
        assert console_errors(browser) == []
        assert [u for u in browser.execute_script(_FETCHED) if not u.startswith("file:")] == []
        shot(browser, f"report-real-{name}")


def test_report_alignment_uses_the_alignment_analysis_ranking(runs_dir, tmp_path):
    """With ``alignment.score`` in the head table, the word alignment averages its 3 best cross
    heads (not the peak x monotonicity fallback)."""
    import shutil

    import numpy as np
    import pandas as pd

    from workbench._report_render import alignment
    from workbench.run_folder import open_run

    run = shutil.copytree(runs_dir / "whisper", tmp_path / "whisper")
    heads = pd.read_parquet(run / "heads.parquet")
    score = np.where(heads["stream"] == "cross", 0.1, np.nan)
    for rank, (layer, head) in enumerate([(1, 2), (3, 0), (0, 5)]):
        score[((heads["stream"] == "cross") & (heads["layer"] == layer) & (heads["head"] == head)).to_numpy()] = 0.9 - rank / 10
    heads.assign(**{"alignment.score": score}).to_parquet(run / "heads.parquet", index=False)
    title, fig = alignment(open_run(run))
    assert title == "word alignment, input 0: cross heads L1H2, L3H0, L0H5 (best by alignment.score)"
    assert fig.layout.title.text == title


def test_report_draws_the_rollout_table_when_the_run_has_no_flow_table(runs_dir, tmp_path):
    """A Whisper run of the demo writes rollout.parquet (rollout analysis), no flow.parquet."""
    import shutil

    import numpy as np
    import pandas as pd

    from workbench._report_content import build
    from workbench._report_render import figures
    from workbench.run_folder import open_run

    run = shutil.copytree(runs_dir / "whisper", tmp_path / "whisper")
    rng = np.random.default_rng(0)
    rows = [{"input": 0, "stream": "encoder", "layer": layer, "position": p, "token": f"frame {p}",
             "raw": 0.0, "rollout": float(rng.uniform())} for layer in range(4) for p in range(7)]
    pd.DataFrame(rows).to_parquet(run / "rollout.parquet", index=False)
    figs = dict(figures(build(open_run(run))))
    z = np.asarray(figs["rollout per layer, input 0"].data[0].z, dtype=float)
    want = pd.DataFrame(rows).pivot(index="layer", columns="position", values="rollout").to_numpy()
    np.testing.assert_allclose(z, want)
