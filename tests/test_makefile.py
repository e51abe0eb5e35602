"""The Makefile's installs, run for real by make with a stand-in Python that records what it is asked
(no pip, no network): `make dev` installs only what runs, says what it installs, lets pip show its
progress, and its install and `make test`'s never redo each other's work."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Records its arguments; `-m venv DIR` makes DIR/bin/python another such stand-in.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is missing")


@pytest.fixture
def make(tmp_path):
    """`make TARGET...` on this Makefile with the venvs in tmp_path; returns (stdout, the Python calls)."""
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls"
    settings = [f"PYTHON={python}", f"VENV={tmp_path / 'venv'}", f"OTREE_VENV={tmp_path / 'venv-otree'}"]

    def run(*targets: str) -> tuple[str, list[str]]:
        calls.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))} | {"CALLS": str(calls)}
        out = subprocess.run(["make", "--no-print-directory", *settings, *targets], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout, calls.read_text().splitlines()

    return run


def installs(calls: list[str]) -> list[str]:
    return [c for c in calls if "pip install" in c]


def test_make_dev_installs_the_runtime_extras_with_progress_and_passes_its_ports(make):
    out, calls = make("dev", "PORT=9787", "OTREE_PORT=9000")
    assert installs(calls) == [
        "-m pip install --upgrade pip", "-m pip install -e .[local,ops]",  # the service's venv
        "-m pip install --upgrade pip", "-m pip install -r otree_app/requirements.txt",  # oTree's
    ]
    assert "==> Installing the service and the local stack" in out and "==> Installing oTree" in out
    assert calls[-1] == "otree_app/run_dev.py --port 9787 --otree-port 9000"
    assert "--quiet" not in "\n".join(calls)  # pip's own progress shows


def test_the_dev_extra_after_make_dev_installs_only_itself_and_make_dev_then_installs_nothing(make):
    make("dev")
    _, calls = make("venv")
    assert installs(calls) == ["-m pip install -e .[dev]"]
    _, calls = make("dev")
    assert installs(calls) == []


def test_make_dev_after_the_dev_extra_installs_nothing(make):
    _, calls = make("venv")
    assert installs(calls) == ["-m pip install --upgrade pip", "-m pip install -e .[dev]"]
    _, calls = make("dev")
    assert installs(calls) == ["-m pip install --upgrade pip", "-m pip install -r otree_app/requirements.txt"]  # oTree's only
