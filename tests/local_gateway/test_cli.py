"""`python -m local_gateway` as a user runs it: serve, mint, chat, SIGTERM, serve again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "local_gateway", "--data-dir", str(data_dir), *args]


FREE_PORTS = ("--port", "0", "--management-port", "0", "--model-port", "0", "--demo-port", "0", "--entry-port", "0")


class Served:
    """`serve` in its own process group, on free ports; stopped by its PID only."""

    def __init__(self, data_dir: Path, **env: str):
        self.process = subprocess.Popen(
            _cli("serve", *FREE_PORTS, data_dir=data_dir),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            # serve's own log level unless a test asks (the tests' POWERTOOLS_LOG_LEVEL is left out)
            env={**{k: v for k, v in os.environ.items() if k != "POWERTOOLS_LOG_LEVEL"},
                 "OFFLINE_MODEL_TTFT_MS": "0", "OFFLINE_MODEL_TOKENS_PER_SECOND": "0", **env},
        )
        self.output: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            self.output.append(line)
            if match := re.search(r"WebSocket\s+(ws://\S+)\?token=", line):
                self.url = match.group(1)
                return
            if not line and self.process.poll() is not None:
                break
        self.process.kill()
        raise AssertionError("serve did not start:\n" + "".join(self.output))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.output.append(self.process.stdout.read())
        return code


def _mint(data_dir: Path, url: str) -> dict:
    out = subprocess.run(
        _cli("mint", "--participant", "P1", "--url", url, data_dir=data_dir),
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(out.stdout)


def _chat(creds: dict, text: str | None) -> dict:
    with connect(creds["ws_url"], open_timeout=60) as ws:
        ws.send(json.dumps({"action": "start", "ticket": creds["ticket"]}))
        chat = json.loads(ws.recv(timeout=60))
        if text is None:
            return chat
        ws.send(json.dumps({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "m1", "text": text}))
        while (frame := json.loads(ws.recv(timeout=60)))["type"] != "message":
            assert frame["type"] in ("ack", "queued", "delta"), frame
        return frame


def test_serve_mint_chat_sigterm_and_serve_again(tmp_path):
    served = Served(tmp_path)
    try:
        creds = _mint(tmp_path, served.url)
        assert set(creds) >= {"url", "token", "ticket", "ws_url"}
        reply = _chat(creds, "Hello from the command line")
        assert reply["role"] == "assistant" and reply["text"]
    finally:
        assert served.stop() == 0
    assert "Stopped." in "".join(served.output)
    assert "demo.html?url=" in "".join(served.output)  # a link a researcher can open
    assert "demo-survey.html?chat_entry=http" in "".join(served.output)  # the demo survey, its study registered
    assert re.search(r"Study entry\s+POST http://127\.0\.0\.1:\d+/studies/STUDY/entry", "".join(served.output))
    assert "connected" not in "".join(served.output)  # serve's default level: warnings and errors only
    assert (tmp_path / "ticket-secret").stat().st_mode & 0o077 == 0  # the dev secret is private

    again = Served(tmp_path)
    try:
        chat = _chat(_mint(tmp_path, again.url), None)
        texts = [m["text"] for m in chat["messages"]]
        assert texts[-2:] == ["Hello from the command line", reply["text"]]
    finally:
        assert again.stop() == 0


def test_each_handler_log_event_is_printed_once(tmp_path):
    """The handlers' Powertools logger prints an event as JSON; the root handler `serve` sets up for
    the stack's own messages must not print it a second time."""
    served = Served(tmp_path, POWERTOOLS_LOG_LEVEL="INFO")
    try:
        _chat(_mint(tmp_path, served.url), None)
    finally:
        assert served.stop() == 0
    output = "".join(served.output)
    connected = [line for line in output.splitlines() if re.search(r"\bconnected\b", line)]
    disconnected = [line for line in output.splitlines() if re.search(r"\bdisconnected\b", line)]
    assert len(connected) == 1 and len(disconnected) == 1, output
    assert json.loads(connected[0])["message"] == "connected"  # the structured event, as on CloudWatch


@pytest.mark.parametrize("option", ["--port", "--management-port"])
def test_serve_on_a_busy_port_says_which_option_to_change(tmp_path, option):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        args = list(FREE_PORTS)
        args[args.index(option) + 1] = busy
        out = subprocess.run(_cli("serve", *args, data_dir=tmp_path), cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert out.returncode != 0
    assert f"Port {busy} is already in use" in out.stderr, out.stderr
    assert f"choose another port with {option}." in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_store_file_deleted_while_serving_stops_the_stack_loudly_and_acks_nothing(tmp_path):
    """The SQLite file deleted under a running stack used to leave it answering `internal` for ever,
    on an empty new file. Now the stack refuses the next message (no ack), says which file went,
    saves what it still held beside it, and exits non-zero."""
    served, store = Served(tmp_path), tmp_path / "chat.sqlite3"
    creds = _mint(tmp_path, served.url)
    frames: list[dict] = []
    try:
        with connect(creds["ws_url"], open_timeout=60) as ws:
            ws.send(json.dumps({"action": "start", "ticket": creds["ticket"]}))
            chat_id = json.loads(ws.recv(timeout=60))["chat_id"]
            send = {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Kept"}
            ws.send(json.dumps(send))
            while json.loads(ws.recv(timeout=60))["type"] != "message":
                pass
            store.unlink()
            with contextlib.suppress(ConnectionClosed):  # the stack may have noticed first, and stopped
                ws.send(json.dumps({**send, "client_msg_id": "m2", "text": "Into the void"}))
                while True:
                    frames.append(json.loads(ws.recv(timeout=60)))
        code = served.process.wait(60)
    finally:
        if served.process.poll() is None:
            served.process.kill()
    output = "".join(served.output) + served.process.stdout.read()
    assert code == 1 and f"{store} was deleted or replaced" in output, output
    assert [f["code"] for f in frames] in ([], ["internal"])  # never an ack
    assert not store.exists()  # no empty store made in its place
    (saved,) = tmp_path.glob("chat.sqlite3.saved-*")
    assert f"saved in {saved}" in output
    texts = [row[0] for row in sqlite3.connect(saved).execute("SELECT text FROM messages WHERE role = 'user'")]
    assert texts == ["Kept"]


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 2), (3, 3), (16, 4)])
def test_serve_runs_the_reply_function_in_one_worker_process_per_core(cores, workers):
    from local_gateway.stack import default_function_processes

    assert default_function_processes(cores) == workers
