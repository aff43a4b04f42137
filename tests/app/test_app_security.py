"""Binding, tokens (401), traversal attempts on every route, and no torch in the app."""
from __future__ import annotations

import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from workbench.app.server import check_bind, create_app, is_loopback, make_app_server, serve

TRAVERSAL_URLS = [
    "/download/../../etc/passwd", "/download/..%2F..%2Fetc/passwd.csv",
    "/download/%2e%2e/heads.csv", "/download/smol/..%2F..%2Fetc%2Fpasswd.csv",
    "/download/smol/../../../etc/passwd.csv", "/download/..%2fsmol/heads.csv",
    "/download/%2Fetc/heads.csv", "/download/smol/%2e%2e%2fmeta.csv",
    "/media/..%2F..%2Fetc/audio/0.wav", "/media/%2e%2e/audio/0.wav",
    "/download/smol/..%5c..%5cmeta.csv", "/download/.hidden/heads.csv",
    "/download/smol/meta.json.csv", "/download/smol/heads.txt",
]


def test_loopback_detection():
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(host)


def test_public_bind_requires_a_token(runs_dir):
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(ValueError, match="requires --token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="requires --token"):
        serve(runs_dir, host="0.0.0.0", port=0, token=None)
    with pytest.raises(ValueError, match="requires --token"):
        make_app_server(runs_dir, "::", 0, "")


def test_serve_refuses_missing_runs_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serve(tmp_path / "nope", port=0)


@pytest.fixture(scope="module")
def token_client(runs_dir):
    return create_app(runs_dir, token="s3cret-token").server.test_client()


@pytest.mark.parametrize("path", ["/", "/grid?run=smol", "/_dash-layout", "/_dash-dependencies",
                                  "/download/smol/heads.csv", "/media/whisper/audio/0.wav",
                                  "/_dash-component-suites/dash/deps/polyfill@7.v4_4_1m1.js"])
def test_token_required_everywhere(token_client, path):
    r = token_client.get(path)
    assert r.status_code == 401 and b"--token" in r.data
    assert token_client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert token_client.get(path + ("&" if "?" in path else "?") + "token=wrong").status_code \
        == 401


def test_token_accepted_by_header_query_and_cookie(runs_dir):
    client = create_app(runs_dir, token="s3cret-token").server.test_client()
    assert client.get("/download/smol/heads.csv",
                      headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/_dash-layout",
                      headers={"X-Workbench-Token": "s3cret-token"}).status_code == 200
    r = client.get("/?token=s3cret-token")
    assert r.status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("workbench_token=") and "HttpOnly" in cookie
    assert "s3cret-token" not in cookie        # the cookie holds an HMAC of the token
    assert "SameSite=Strict" in cookie
    assert client.get("/_dash-layout").status_code == 200  # the cookie now authorises


def test_token_server_on_all_interfaces_answers_401_over_tcp(runs_dir):
    server = make_app_server(runs_dir, "0.0.0.0", 0, "tok")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/download/smol/heads.csv"
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        err.value.close()              # an HTTPError holds the response's socket: close it, not the GC
        assert err.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": "Bearer tok"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and r.read().startswith(b"stream,layer,head")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", TRAVERSAL_URLS)
def test_traversal_urls_never_leave_runs_dir(client, path):
    r = client.get(path)
    assert b"root:" not in r.data and b"schema_version" not in r.data
    if r.status_code == 200:  # a normalised path ("/etc/passwd") is just a page URL
        assert b"_dash-config" in r.data, path
    else:
        assert r.status_code in (400, 404), (path, r.status_code)


def test_no_torch_in_the_dashboard_process(runs_dir):
    """Importing the app, building it and serving every page must not import torch (and
    the page modules import before any Dash app exists)."""
    code = f"""
import sys
import workbench.app.pages
from workbench.app import create_app
from _dash_client import render
c = create_app({str(runs_dir)!r}).server.test_client()
for path, run in [("/", "smol"), ("/grid", "smol"), ("/detail", "whisper"), ("/flow", "whisper"),
                  ("/flow", "smol-b"), ("/patching", "smol"), ("/export", "smol")]:
    render(c, path, "?run=" + run)
assert c.get("/download/smol/heads.parquet").status_code == 200
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH" if bad else "NO-TORCH", bad[:3])
"""
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "NO-TORCH" in out.stdout, (
        "the dashboard imported torch; if the import comes from workbench/__init__.py, make "
        "its imports lazy (PEP 562 __getattr__) so `import workbench.app` stays torch-free: "
        + out.stdout)
