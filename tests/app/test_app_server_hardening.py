"""Issue 9 section 4: files linked from outside RUNS_DIR, Host check (DNS rebinding),
security headers, no server paths in pages, the token kept out of pages, logs and stdout,
and tokens of any characters."""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from _dash_client import render, texts
from _synth_runs import make_audio_run, make_broken_runs, make_text_run

from workbench.app.server import create_app, make_app_server

SECRET = "TOP-SECRET-OUTSIDE-RUNS-DIR"


@pytest.fixture(scope="module")
def linked(tmp_path_factory) -> Path:
    """RUNS_DIR whose runs hold files that are symlinks to files outside RUNS_DIR."""
    base = tmp_path_factory.mktemp("linked")
    outside, root = base / "outside", base / "runs"
    src = make_text_run(outside, "src", n_layers=3)
    import pandas as pd

    heads = pd.read_parquet(src / "heads.parquet")
    heads["taxonomy.class"] = SECRET
    heads.to_parquet(src / "heads.parquet", index=False)
    pd.DataFrame({"stream": ["self"], "layer": [0], "input": [0], "position": [0],
                  "token": [SECRET], "rollout": [1.0]}).to_parquet(src / "flow.parquet")
    root.mkdir()
    for name, linked_file in [("heads-link", "heads.parquet"), ("patterns-link", "patterns.safetensors"),
                              ("table-link", "flow.parquet"), ("meta-link", "meta.json")]:
        run = make_text_run(root, name, n_layers=3, extras=False)
        (run / linked_file).unlink(missing_ok=True)
        os.symlink(src / linked_file, run / linked_file)
    return root


def test_files_linked_from_outside_runs_dir_are_never_read(linked):
    client = create_app(linked).server.test_client()
    for path in ["/download/heads-link/heads.csv", "/download/table-link/flow.csv",
                 "/download/meta-link/heads.csv", "/download/heads-link/report.md"]:
        r = client.get(path)
        assert r.status_code == 404 and SECRET.encode() not in r.data, path
        assert b"outside RUNS_DIR" in r.data, (path, r.data)
    page = render(client, "/detail", "?run=patterns-link")
    assert "patterns.safetensors links outside RUNS_DIR" in texts(page)
    assert "detail-metrics-table" in str(page)           # the rest of the page still shows
    rows = _runs_status(client)
    assert "links outside RUNS_DIR" in rows["patterns-link"]
    assert "links outside RUNS_DIR" in rows["table-link"]
    for run in ("heads-link", "meta-link"):
        assert "outside RUNS_DIR" in rows[run]
    for path in ("/grid", "/flow", "/export", "/patching"):
        for run in ("heads-link", "table-link", "meta-link", "patterns-link"):
            assert SECRET not in str(render(client, path, f"?run={run}")), (path, run)


def _runs_status(client) -> dict:
    from _dash_client import find

    return {r["name"]: r["status"] for r in find(render(client, "/"), "runs-table")["props"]["data"]}


# ---- Host check ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loopback(runs_dir):
    server = make_app_server(runs_dir, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def _get(port: int, path: str, host: str | None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_loopback_without_token_answers_only_its_own_names(loopback):
    port = loopback
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert _get(port, "/download/smol/heads.csv", host)[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}",
                 f"127.0.0.1.nip.io:{port}", f"localhost:{port + 1}", "localhost", "",
                 f"localhost:{port}@evil.example", "[::1", None):
        status, _, body = _get(port, "/download/smol/heads.csv", host)
        assert status == 400 and b"stream,layer" not in body, (host, status)


def test_host_check_in_the_app_itself(runs_dir):
    client = create_app(runs_dir).server.test_client()
    assert client.get("/_dash-layout").status_code == 200          # Host: localhost
    r = client.get("/_dash-layout", base_url="http://attacker.example/")
    assert r.status_code == 400 and b"Host" in r.data
    extra = create_app(runs_dir, allowed_hosts=("dash.lab",)).server.test_client()
    assert extra.get("/_dash-layout", base_url="http://dash.lab/").status_code == 200
    token = create_app(runs_dir, token="tok").server.test_client()   # a token: any name
    assert token.get("/_dash-layout", base_url="http://dash.lab/",
                     headers={"Authorization": "Bearer tok"}).status_code == 200


# ---- security headers ---------------------------------------------------------------------
HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer"}


@pytest.mark.parametrize("path", ["/", "/grid?run=smol", "/_dash-layout", "/_dash-dependencies",
                                  "/download/smol/heads.csv", "/media/whisper/audio/0.wav",
                                  "/download/nope/heads.csv", "/_dash-component-suites/x/y.js"])
def test_security_headers_on_every_response(client, path):
    r = client.get(path)
    for k, v in HEADERS.items():
        assert r.headers.get(k) == v, (path, k)
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    script = next(d for d in csp.split("; ") if d.startswith("script-src"))
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script
    assert "'sha256-" in script                        # Dash's inline scripts, by hash


def test_security_headers_on_401_and_400(runs_dir):
    r = create_app(runs_dir, token="tok").server.test_client().get("/")
    assert r.status_code == 401 and r.headers["X-Frame-Options"] == "DENY"
    r = create_app(runs_dir).server.test_client().get("/", base_url="http://evil.example/")
    assert r.status_code == 400 and r.headers["X-Content-Type-Options"] == "nosniff"


# ---- no server paths in pages ----------------------------------------------------------------
@pytest.fixture(scope="module")
def abs_paths(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("abspaths")
    make_text_run(root, "smol", n_layers=3)
    run = make_audio_run(root, "whisper", durations=(1.0,))
    import json

    meta = json.loads((run / "meta.json").read_text())
    meta["inputs"]["items"][0]["path"] = str(root / "clips" / "speech.wav")   # a user's absolute path
    (run / "meta.json").write_text(json.dumps(meta))
    make_broken_runs(root, root / "smol")
    (root / "badtensors" / "inputs.safetensors").write_bytes(b"\x00" * 9)
    return root


def test_no_runs_dir_path_in_any_page_or_json(abs_paths, tmp_path):
    client = create_app(abs_paths).server.test_client()
    needles = {str(abs_paths).encode(), str(abs_paths.resolve()).encode()}
    bodies = [client.get(p).data for p in ("/", "/grid", "/_dash-layout", "/_dash-dependencies")]
    runs = sorted(p.name for p in abs_paths.iterdir()) + ["nope", "../x"]
    for page in ("/", "/grid", "/detail", "/flow", "/patching", "/export"):
        for run in runs:
            bodies.append(str(render(client, page, f"?run={quote(run)}")).encode())
    for run in runs:
        for path in (f"/download/{run}/heads.csv", f"/download/{run}/flow.csv",
                     f"/download/{run}/report.md", f"/media/{run}/audio/0.wav"):
            r = client.get(path)
            bodies.append(r.data if r.mimetype.startswith("text") else b"")
    assert bodies and all(n not in b for b in bodies for n in needles)
    assert "0: speech.wav" in str(render(client, "/detail", "?run=whisper"))  # by its name
    empty = tmp_path / "empty"
    empty.mkdir()
    page = render(create_app(empty).server.test_client(), "/")
    assert str(empty) not in str(page) and "RUNS_DIR" in texts(page)


# ---- the token -------------------------------------------------------------------------------
ODD_TOKENS = ["a;b=c", 'q"uo\'te', "sp ace", "ünïcødé-τοκεν", "comma,semi;colon", "%41%42",
              "back\\slash", "plus+sign", "x" * 300, "=", "é"]


@pytest.mark.parametrize("token", ODD_TOKENS)
def test_any_token_string_works_in_the_cookie(runs_dir, token):
    client = create_app(runs_dir, token=token).server.test_client()
    assert client.get("/_dash-layout").status_code == 401
    r = client.get("/?token=" + quote(token, safe=""))
    assert r.status_code == 200, token
    for form in (token, quote(token, safe=""), quote(token)) if len(token) > 5 else ():
        assert form.encode() not in r.data                 # not echoed into the page
    assert client.get("/_dash-layout").status_code == 200  # the cookie it set authorises
    assert client.get("/download/smol/heads.csv").status_code == 200
    fresh = create_app(runs_dir, token=token).server.test_client()
    fresh.set_cookie("workbench_token", quote(token, safe=""))   # a script's own cookie
    assert fresh.get("/_dash-layout").status_code == 200
    raw = token.encode().decode("latin-1")                  # a header carries the raw bytes
    assert fresh.get("/_dash-layout", headers={"X-Workbench-Token": raw},
                     environ_base={"HTTP_COOKIE": ""}).status_code == 200
    other = create_app(runs_dir, token=token + "x").server.test_client()
    other.set_cookie("workbench_token", quote(token, safe=""))
    assert other.get("/_dash-layout").status_code == 401


def test_token_never_in_page_html_or_callback_json(runs_dir):
    token = "tok-9f8e7d6c5b4a"
    client = create_app(runs_dir, token=token).server.test_client()
    r = client.get(f"/grid?run=smol&token={token}")
    assert r.status_code == 200 and token.encode() not in r.data
    for page in ("/", "/grid", "/detail", "/export"):
        assert token not in str(render(client, page, f"?run=smol&token={token}"))


def test_token_never_in_stdout_or_logs(runs_dir):
    token = "tok-5ecr3t-" + "z" * 8
    env = {**os.environ, "WORKBENCH_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", str(runs_dir),
                             "--port", "0", "--access-log"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "workbench dashboard on http://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        host = f"127.0.0.1:{port}"
        assert _get(port, f"/?token={token}", host)[0] == 200
        assert _get(port, f"/grid?run=smol&token={token}&x=1", host)[0] == 200
        assert _get(port, f"/?%74oken={token}", host)[0] == 200
        assert _get(port, "/?token=wrong-guess", host)[0] == 401
        assert _get(port, "/download/smol/heads.csv", host,
                    {"Authorization": f"Bearer {token}"})[0] == 200
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # bad syntax:
            sock.sendall(f"GET /?token={token} extra HTTP/1.1\r\n\r\n".encode())  # logged
            reply = b"".join(iter(lambda: sock.recv(4096), b""))
            assert b"Error code: 400" in reply
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert token not in line + out and token not in err, (line, err[-2000:])
    assert "token=***" in err and "?token=<your token>" in line
    assert "Bad request" in err                  # the bad request line was logged, redacted


def test_serve_prints_no_token_in_the_url(runs_dir, capsys, monkeypatch):
    import workbench.app.server as srv

    class Once:
        server_port = 1234

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr(srv, "make_app_server", lambda *a, **k: Once())
    srv.serve(runs_dir, host="0.0.0.0", port=0, token="tok-printed?")
    out = capsys.readouterr()
    assert "tok-printed" not in out.out + out.err and "http://0.0.0.0:1234/" in out.out


def test_redact_hides_every_token_parameter():
    from workbench.app.server import redact

    assert redact("/grid?run=a&token=s3c&x=1") == "/grid?run=a&token=***&x=1"
    assert redact("/?%74oken=s3c") == "/?%74oken=***"
    assert redact("/?TOKEN=s3c&token=t2") == "/?TOKEN=***&token=***"
    assert redact("/plain") == "/plain" and redact("/?tokens=1") == "/?tokens=1"
