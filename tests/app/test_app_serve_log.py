"""``workbench serve`` logs requests only with --access-log (errors are always logged)."""
from __future__ import annotations

import http.client
import subprocess
import sys
from urllib.parse import urlsplit

import pytest


@pytest.mark.parametrize("flag", [False, True])
def test_access_log_only_on_request(runs_dir, flag):
    cmd = [sys.executable, "-m", "workbench.cli", "serve", str(runs_dir), "--port", "0"]
    proc = subprocess.Popen(cmd + (["--access-log"] if flag else []), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "workbench dashboard on http://127.0.0.1:" in line, line + proc.stderr.read()
        url = urlsplit(line.split(" on ", 1)[1].split()[0])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:                                   # closed explicitly: no socket left to the GC
            conn.request("GET", "/grid?run=smol")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
        finally:
            conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert ('"GET /grid?run=smol HTTP/1.1" 200' in err) is flag, err
