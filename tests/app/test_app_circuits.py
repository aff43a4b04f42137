"""The Circuits page renders through the Dash test client: runs without a circuit analysis say
which command adds one; broken or hostile run names give a message, never a traceback.
(Its figures are tested on real ``workbench circuit`` run folders in tests/test_circuits_cli.py.)"""
from __future__ import annotations

import pytest
from _dash_client import classes, render, texts


@pytest.mark.parametrize("run", ["smol", "whisper"])
def test_circuits_page_names_the_command_for_runs_without_circuits(client, run):
    page = render(client, "/circuits", f"?run={run}")
    assert "msg msg-error" not in classes(page), texts(page)[:400]
    assert "workbench circuit" in texts(page)


@pytest.mark.parametrize("run", ["badjson", "nope", "../etc", "/etc/passwd"])
def test_circuits_page_broken_or_hostile_runs_show_a_message(client, run):
    page = render(client, "/circuits", f"?run={run}")
    assert "msg msg-error" in classes(page)
    assert "Traceback" not in texts(page) and "root:" not in texts(page)
