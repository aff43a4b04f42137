"""The README's first command (`make demo`) must work on a fresh Debian machine: every
Debian package the demo needs is installed by a target the demo depends on.

Checked with fake ``dpkg`` (says nothing is installed) and ``apt-get`` (logs what it was
asked to install) first on PATH, so nothing is really installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# programs the demo's steps run, and the Debian package that provides each
DEMO_PROGRAMS = {"espeak-ng": "espeak-ng", "sox": "sox"}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _fake_bin(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def _make(args: list[str], bin_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_demo_installs_the_debian_packages_it_needs(tmp_path):
    bin_dir, log = _fake_bin(tmp_path)
    # the demo target depends on the target that installs them ...
    dry = _make(["-n", "demo"], bin_dir)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    first_run = next(i for i, line in enumerate(lines) if "workbench run" in line)
    before = "\n".join(lines[:first_run])
    for pkg in DEMO_PROGRAMS.values():
        assert pkg in before, f"make demo does not install {pkg} before its first step"
    # ... and that target really asks apt-get for them on a machine that lacks them
    done = _make(["system-demo"], bin_dir)
    assert done.returncode == 0, done.stderr
    installs = [line.split() for line in log.read_text().splitlines() if line.startswith("install")]
    assert installs, "apt-get install was never called"
    asked = {w for line in installs for w in line[1:] if not w.startswith("-")}
    assert set(DEMO_PROGRAMS.values()) <= asked


def test_test_target_installs_the_demo_packages_and_a_browser(tmp_path):
    bin_dir, log = _fake_bin(tmp_path)
    done = _make(["system"], bin_dir)
    assert done.returncode == 0, done.stderr
    asked = {w for line in log.read_text().splitlines() if line.startswith("install")
             for w in line.split()[1:] if not w.startswith("-")}
    assert set(DEMO_PROGRAMS.values()) | {"chromium", "chromium-driver"} <= asked
