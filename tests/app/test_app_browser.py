"""End to end in headless Chromium on synthetic runs: every page, clicks, URL state,
downloads, messages for broken runs. Screenshots land in test-artifacts/app/."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from _browser import click_cell, console_errors, errors_on_page, open_page, shot, text_of, wait
from selenium.webdriver.common.by import By      # the 'dev' extra; missing = failure, not a skip

PAGES = [
    ("runs", "/", ()),
    ("grid-smol", "/grid?run=smol&stream=self&layer=3&head=4", ("#grid-heatmap",)),
    ("grid-whisper-class", "/grid?run=whisper&metric=taxonomy.class", ("#grid-heatmap",)),
    ("grid-compare", "/grid?run=smol&compare=smol-b&metric=sinks.alpha1", ("#grid-heatmap",)),
    ("detail-smol", "/detail?run=smol&layer=5&head=1&input=1", ("#detail-graph",)),
    ("detail-whisper-cross", "/detail?run=whisper&stream=cross&layer=3&head=0",
     ("#detail-graph",)),
    ("flow-smol", "/flow?run=smol&input=1", ("#flow-token-graph",)),
    ("flow-whisper", "/flow?run=whisper", ("#flow-align-graph",)),
    ("patching-smol", "/patching?run=smol", ("#patching-scatter", "#patching-prune")),
    ("export-smol", "/export?run=smol", ()),
]


def _query(drv) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(drv.current_url).query).items()}


@pytest.mark.parametrize("name, path, graphs", PAGES, ids=[p[0] for p in PAGES])
def test_every_page_renders(browser, live_server, name, path, graphs):
    console_errors(browser)                                  # start from an empty console log
    open_page(browser, live_server + path, *graphs)          # load time: benchmarks/dashboard_load.py
    assert errors_on_page(browser) == []
    assert console_errors(browser) == []     # e.g. no script refused by the security policy
    shot(browser, name)


def test_whisper_1500_frame_encoder_stays_responsive(browser, live_server):
    open_page(browser, live_server + "/detail?run=whisper-long&stream=encoder&layer=2&head=1", "#detail-graph")
    assert errors_on_page(browser) == []
    assert "max-pooled ×5" in text_of(browser, "#detail-graph")
    shot(browser, "detail-whisper-1500-frames")
    audio = browser.find_element(By.ID, "detail-audio")
    assert audio.get_attribute("src").endswith("/media/whisper-long/audio/0.wav")
    duration = wait(browser, lambda d: d.execute_script(
        "const a = document.getElementById('detail-audio'); "
        "return a.readyState >= 1 ? a.duration : null;"), 15, "audio metadata")
    assert duration == pytest.approx(30.0, abs=0.01)


def test_click_a_head_updates_detail_and_url(browser, live_server):
    open_page(browser, live_server + "/grid?run=whisper", "#grid-heatmap")
    assert "Click a head" in text_of(browser, "#grid-selected")
    click_cell(browser, "#grid-heatmap", 5, 2, "xaxis3", "yaxis3")  # cross, layer 2, head 5
    wait(browser, lambda d: "cross · layer 2 · head 5" in text_of(d, "#grid-selected-title"),
         15, "the selected head panel")
    wait(browser, lambda d: d.execute_script(
        "const g = document.querySelector('#grid-preview .js-plotly-plot');"
        "return !!(g && g.data && g.data.length);"), 15, "the pattern preview")
    wait(browser, lambda d: _query(d).get("head") == "5", 10, "the URL to follow the click")
    assert _query(browser) == {"run": "whisper", "metric": "entropy.mean_nats",
                               "stream": "cross", "layer": "2", "head": "5"}
    shot(browser, "grid-whisper-clicked")
    click_cell(browser, "#grid-heatmap", 1, 3, "xaxis", "yaxis")  # encoder, layer 3, head 1
    wait(browser, lambda d: "encoder · layer 3 · head 1" in text_of(d, "#grid-selected-title"),
         15, "the second selection")
    browser.find_element(By.ID, "shell-nav-2").click()  # "Head detail" keeps the view
    wait(browser, lambda d: "encoder L3 H1" in text_of(d, "#detail-graph"), 20, "detail page")
    assert errors_on_page(browser) == []
    assert console_errors(browser) == []
    assert _query(browser)["head"] == "1"
    shot(browser, "detail-from-grid-click")


def test_shared_url_restores_the_view(browser, live_server):
    url = live_server + "/detail?run=whisper&stream=decoder&layer=1&head=4&input=1"
    open_page(browser, url, "#detail-graph")
    assert "decoder L1 H4 · 1" in text_of(browser, "#detail-graph")
    assert _query(browser) == {"run": "whisper", "stream": "decoder", "layer": "1",
                               "head": "4", "input": "1"}


def test_download_head_table_csv(browser, live_server, runs_dir):
    open_page(browser, live_server + "/export?run=smol")
    target = browser.download_dir / "smol-heads.csv"
    target.unlink(missing_ok=True)
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(browser.download_dir)})
    browser.find_element(By.ID, "export-heads-csv").click()
    wait(browser, lambda d: target.exists() and target.stat().st_size > 0, 20, "the download")
    time.sleep(0.2)
    got = pd.read_csv(target)
    expected = pd.read_parquet(runs_dir / "smol" / "heads.parquet")
    assert len(got) == 270 and list(got.columns) == list(expected.columns)
    assert got[["stream", "layer", "head"]].values.tolist() == \
        expected[["stream", "layer", "head"]].values.tolist()


@pytest.mark.parametrize("path", ["/detail?run=badtensors", "/grid?run=../../etc",
                                  "/flow?run=badjson", "/export?run=partial"])
def test_broken_runs_show_messages_in_the_browser(browser, live_server, path):
    console_errors(browser)
    open_page(browser, live_server + path)
    assert console_errors(browser) == []
    msgs = errors_on_page(browser)
    assert msgs and all("Traceback" not in m for m in msgs)
    if "badtensors" in path:
        shot(browser, "detail-corrupt-run")
