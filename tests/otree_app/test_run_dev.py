"""`make dev`'s runner (otree_app/run_dev.py) on a busy port: a message naming what to change, no
traceback, and nothing started (its ports are checked before the stack or oTree starts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def busy() -> Iterator[int]:
    """A loopback port something listens on, for the test's duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def run_dev(*args: str, by_make: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKELEVEL"} | ({"MAKELEVEL": "1"} if by_make else {})
    return subprocess.run([sys.executable, "otree_app/run_dev.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("by_make, setting", [(True, "make dev OTREE_PORT=<port>"), (False, "--otree-port <port>")])
def test_a_busy_otree_port_names_the_setting_that_moves_it(busy, by_make, setting):
    out = run_dev("--port", str(free_port()), "--otree-port", str(busy), by_make=by_make)
    assert out.returncode == 1, out
    assert f"Port {busy} is already in use" in out.stderr and "so oTree cannot listen" in out.stderr, out.stderr
    assert f"choose another port with {setting}." in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "Starting" not in out.stdout


def test_a_busy_chat_service_port_names_make_devs_port(busy):
    out = run_dev("--port", str(busy), "--otree-port", str(free_port()), by_make=True)
    assert out.returncode == 1, out
    assert f"Port {busy} is already in use" in out.stderr and "WebSocket API" in out.stderr, out.stderr
    assert "choose another port with make dev PORT=<port> (the chat service uses PORT to PORT+4)." in out.stderr
    assert "Traceback" not in out.stderr and "Starting" not in out.stdout
