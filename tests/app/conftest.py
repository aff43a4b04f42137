"""Fixtures for the dashboard tests: synthetic run folders, the app, a live server, Chromium.

Synthetic runs (``_synth_runs``) are written with numpy/pandas/safetensors only, so these
tests do not depend on the producer or torch. Browser tests use Debian's ``chromium`` and
``chromium-driver`` through selenium and skip, saying why, when either is missing.
Screenshots go to ``test-artifacts/app/`` at the repository root.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _synth_runs import LONG_WORDS, make_audio_run, make_broken_runs, make_text_run  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "app"


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    """smol (30x9, patching + extra tables), smol-b (same model, other seed), whisper
    (4x6 x 3 streams, 3 s and 4.5 s clips), whisper-long (one 30 s clip: 1500 frames, 67 words),
    and broken runs: partial, badjson, badparquet, badtensors, future, notarun."""
    root = tmp_path_factory.mktemp("runs")
    make_text_run(root, "smol")
    make_text_run(root, "smol-b", seed=5, extras=False)
    make_audio_run(root, "whisper")
    make_audio_run(root, "whisper-long", durations=(30.0,), seed=3, words=LONG_WORDS)
    make_broken_runs(root, root / "smol")
    return root


@pytest.fixture(scope="session")
def kv_runs_dir(tmp_path_factory) -> Path:
    """CLI-written ``workbench patch --node k`` runs of a tiny GQA Llama (``_kv_runs``)."""
    from _kv_runs import write_kv_runs

    return write_kv_runs(tmp_path_factory.mktemp("kv-runs"))


@pytest.fixture(scope="session")
def app(runs_dir):
    from workbench.app import create_app

    return create_app(runs_dir)


@pytest.fixture()
def client(app):
    return app.server.test_client()


def _serve(folder):
    """Serve the app over ``folder`` on a threaded werkzeug server on a free loopback port;
    yields its base URL."""
    from workbench.app.server import make_app_server

    server = make_app_server(folder, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def live_server(runs_dir):
    """Base URL of the app served by a threaded werkzeug server on a free loopback port."""
    yield from _serve(runs_dir)


def _chromium() -> tuple[str | None, str | None, str]:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, "selenium is not installed (pip install selenium)"
    if not browser or not driver:
        return None, None, ("headless Chromium not available: install Debian packages "
                            "'chromium' and 'chromium-driver'")
    return browser, driver, ""


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Chromium driven by selenium; downloads land in ``browser.download_dir``."""
    binary, driver_path, why = _chromium()
    if not binary:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1400,1000",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console: CSP violations
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(30)
    drv.download_dir = downloads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


REAL_RUNS = {  # run name -> `workbench` arguments (kept small: CPU-only CI)
    "smollm2": ["run", "smollm2-135m", "--max-prompts", "2", "--max-tokens", "24"],
    "whisper": ["run", "whisper-tiny.en", "--max-prompts", "2"],
    # a patch run (AtP: one forward and backward per pair) with its prompts' patterns
    "smollm2-ioi": ["patch", "smollm2-135m", "--task", "ioi", "--n", "2", "--method", "atp"],
}
_REAL: dict = {}


def _real_run_cli() -> str | None:
    exe = shutil.which("workbench") or str(Path(sys.executable).with_name("workbench"))
    return exe if os.path.exists(exe) else None


def pytest_collection_modifyitems(session, config, items):
    """Tests on real runs go last, and the runs start now in a background thread, one after
    the other on one CPU thread each, so making them (model loading, tracing: a minute or so
    on CPU) overlaps the other tests without starving them."""
    real = [it for it in items if "real_runs_dir" in getattr(it, "fixturenames", ())]
    if not real or _REAL:
        return
    items[:] = [it for it in items if it not in real] + real
    exe = _real_run_cli()
    if exe is None:
        _REAL["skip"] = "the `workbench` CLI is not installed (pip install -e .)"
        return
    import subprocess
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="workbench-app-real-runs-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs: dict = {}
    stop = threading.Event()

    def make_all():
        for name, args in REAL_RUNS.items():
            if stop.is_set():
                return
            with open(root / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen(
                    [exe, *args, "--out", str(root / name), "--quiet"],
                    stdout=log, stderr=subprocess.STDOUT, env=env)
                procs[name].wait()

    worker = threading.Thread(target=make_all, daemon=True)
    worker.start()
    _REAL.update(root=root, worker=worker, procs=procs)

    def cleanup():
        stop.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        worker.join(30)
        shutil.rmtree(root, ignore_errors=True)

    config.add_cleanup(cleanup)


@pytest.fixture(scope="session")
def real_runs_dir() -> Path:
    """Real runs of smollm2-135m and whisper-tiny.en made once per session by
    ``workbench run``, and an IOI ``workbench patch`` run of smollm2-135m (started in the
    background at collection time)."""
    if "skip" in _REAL:
        pytest.skip(_REAL["skip"])
    if not _REAL:
        pytest.skip("real runs were not started (collection hook did not run)")
    _REAL["worker"].join(900)
    for name, args in REAL_RUNS.items():
        out = (_REAL["root"] / f"{name}.log").read_text(errors="replace")
        proc = _REAL["procs"].get(name)
        if proc is None or proc.returncode != 0:
            missing = ("not installed", "No module named", "pip install")
            if any(m in out for m in missing):
                pytest.skip(f"`workbench {' '.join(args[:2])}` cannot run here: "
                            f"{out.strip().splitlines()[-1][:300]}")
            pytest.fail(f"`workbench {' '.join(args)}` failed:\n{out[-3000:]}")
    return _REAL["root"]


@pytest.fixture(scope="session")
def real_live_server(real_runs_dir):
    """Base URL of the app served over the real runs (``real_runs_dir``)."""
    yield from _serve(real_runs_dir)
