"""`python -m local_gateway` as a user runs it: serve, mint, chat, SIGTERM, serve again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "local_gateway", "--data-dir", str(data_dir), *args]


class Served:
    """`serve` in its own process group, on free ports; stopped by its PID only."""

    def __init__(self, data_dir: Path):
        self.process = subprocess.Popen(
            _cli("serve", "--port", "0", "--management-port", "0", "--model-port", "0", "--demo-port", "0",
                 data_dir=data_dir),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "OFFLINE_MODEL_TTFT_MS": "0", "OFFLINE_MODEL_TOKENS_PER_SECOND": "0"},
        )
        self.output: list[str] = []
        deadline = time.monotonic() + 30
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
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.output.append(self.process.stdout.read())
        return code


def _mint(data_dir: Path, url: str) -> dict:
    out = subprocess.run(
        _cli("mint", "--participant", "P1", "--url", url, data_dir=data_dir),
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    )
    return json.loads(out.stdout)


def _chat(creds: dict, text: str | None) -> dict:
    with connect(creds["ws_url"], open_timeout=10) as ws:
        ws.send(json.dumps({"action": "start", "ticket": creds["ticket"]}))
        chat = json.loads(ws.recv(timeout=10))
        if text is None:
            return chat
        ws.send(json.dumps({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "m1", "text": text}))
        while (frame := json.loads(ws.recv(timeout=10)))["type"] != "message":
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
    assert (tmp_path / "ticket-secret").stat().st_mode & 0o077 == 0  # the dev secret is private

    again = Served(tmp_path)
    try:
        chat = _chat(_mint(tmp_path, again.url), None)
        texts = [m["text"] for m in chat["messages"]]
        assert texts[-2:] == ["Hello from the command line", reply["text"]]
    finally:
        assert again.stop() == 0
