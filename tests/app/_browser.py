"""Selenium helpers for the headless-Chromium tests: waits, screenshots, clicks on heatmaps."""
from __future__ import annotations

import time
from pathlib import Path

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "app"

_GRAPH_READY = """
const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');
return !!(gd && gd._fullLayout && gd.data && gd.data.length);
"""

_CELL_XY = """
const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');
const fl = gd._fullLayout, xa = fl[arguments[1]], ya = fl[arguments[2]];
const r = gd.getBoundingClientRect();
return [r.left + xa._offset + xa.l2p(arguments[3]), r.top + ya._offset + ya.l2p(arguments[4])];
"""


def wait(drv, cond, timeout: float = 20, what: str = "condition"):
    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(
        lambda d: cond(d), message=f"timed out waiting for {what}")


def dash_idle(drv) -> bool:
    """No Dash callback in flight (the renderer marks loading components)."""
    return not drv.find_elements(By.CSS_SELECTOR, "[data-dash-is-loading='true']")


def open_page(drv, url: str, *graphs: str, timeout: float = 30) -> float:
    """Load ``url`` and wait until the Dash app and the given graphs (``#id``) are drawn.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    drv.get(url)
    wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, ".page-title"), timeout, "page title")
    for g in graphs:
        wait(drv, lambda d: d.execute_script(_GRAPH_READY, g), timeout, f"graph {g}")
    wait(drv, dash_idle, timeout, "dash to settle")
    return time.perf_counter() - t0


_TEXTS = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText);"


def _texts(drv, css: str) -> list[str]:
    """Visible texts of the elements matching ``css``, read in one script: Dash may replace an
    element between a find and a read (StaleElementReferenceException)."""
    return drv.execute_script(_TEXTS, css)


def errors_on_page(drv) -> list[str]:
    return _texts(drv, ".msg-error")


def console_errors(drv) -> list[str]:
    """Console errors (SEVERE: failed scripts, Content-Security-Policy refusals, JS
    exceptions) logged since the last call; reading the log empties it."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def shot(drv, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = drv.execute_script("return Math.min(document.body.scrollHeight, 4000)")
    drv.set_window_size(1400, max(900, int(height) + 40))
    drv.save_screenshot(str(path))
    drv.set_window_size(1400, 1000)
    return path


def click_cell(drv, graph: str, x: float, y: float, xaxis: str = "xaxis",
               yaxis: str = "yaxis") -> None:
    """Click the heatmap cell at data coordinates (x, y) of graph ``#id``."""
    drv.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", graph)
    time.sleep(0.2)
    px, py = drv.execute_script(_CELL_XY, graph, xaxis, yaxis, x, y)
    actions = ActionChains(drv)
    builder = ActionBuilder(drv)
    builder.pointer_action.move_to_location(int(px), int(py))
    builder.pointer_action.click()
    builder.perform()
    actions.reset_actions()


def text_of(drv, css: str) -> str:
    found = _texts(drv, css)
    return found[0] if found else ""
