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


@pytest.mark.parametrize("compare", [None, "smol-b"], ids=["single", "compare"])
def test_html_report_renders_offline(runs_dir, browser, tmp_path, compare):
    out = tmp_path / "report.html"
    extra = ["--compare", str(runs_dir / compare)] if compare else []
    assert main(["report", str(runs_dir / "smol"), "--out", str(out), *extra]) == 0
    console_errors(browser)                                  # empty the log of earlier pages
    browser.get(out.as_uri())
    wait(browser, lambda d: d.execute_script(_DRAWN) and all(d.execute_script(_DRAWN)), 30, "figures drawn")
    drawn = browser.execute_script(_DRAWN)
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('div.figure')).map(d => d.dataset.title);")
    if compare:
        assert titles == ["difference retrieval.score: smol - smol-b"]   # smol-b has no patch.effect
    else:
        assert len(drawn) >= 4 and "pruning curve" in titles and titles[0] == "patching heatmap: patch.effect"
    rows = browser.execute_script("return document.querySelectorAll('#ranked-heads tbody tr').length;")
    assert rows == 30 * 9
    assert console_errors(browser) == []
    assert [u for u in browser.execute_script(_FETCHED) if not u.startswith("file:")] == []
    shot(browser, f"report-{'compare' if compare else 'single'}")
