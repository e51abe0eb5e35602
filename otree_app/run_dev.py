"""`make dev`: the local chat stack and oTree's devserver side by side; Ctrl-C stops both.

Run with the service's venv (standard library and local_gateway.ports only here):

    .venv/bin/python otree_app/run_dev.py [--port 8787] [--otree-port 8000] [-- serve options...]

`make dev PORT=9787 OTREE_PORT=9000` passes its variables as these options. The stack takes
PORT (the WebSocket API) and the next four ports (Management API, offline model, demo
pages, study entry); every port is checked before anything starts, and a busy one is named with the
variable that moves it. oTree is told the WebSocket URL, and the stack allows oTree's and
the demo page's origins, on whatever ports they have.

The stack (`python -m local_gateway serve`, its banner and demo link unchanged) starts
first, so that its dev secret (.local/ticket-secret) exists when oTree mints; then
`otree devserver` from .venv-otree (it re-executes `otree` from PATH and runs a child, so
.venv-otree/bin goes first on PATH). Each runs in its own process group, stopped as a group.
A leftover otree_app/db.sqlite3 makes devserver refuse to start: it is deleted (oTree's
sessions are throwaway here; the chats stay in .local/chat.sqlite3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from local_gateway import ports

APP = Path(__file__).resolve().parent
ROOT = APP.parent
OTREE_BIN = ROOT / ".venv-otree" / "bin"


def wait_for_port(port: int, procs: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def stop(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGINT to each process group (the stack finishes replies in flight), then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # also whatever the group's leader left behind (devserver's child)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def demo_session(port: int) -> str | None:
    """A session of chat_demo through oTree's REST API; its session-wide participant link."""
    body = json.dumps({"session_config_name": "chat_demo", "num_participants": 4}).encode()
    request = urllib.request.Request(
        f"http://localhost:{port}/api/sessions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response).get("session_wide_url")
    except OSError as exc:
        print(f"(could not create a demo session: {exc})", flush=True)
        return None


def busy_port(port: int, otree_port: int) -> str | None:
    """A message about the first of these ports in use, naming the `make dev` variable that moves it
    (or this script's option, when it is run by hand); None when all are free."""
    by_make = "MAKELEVEL" in os.environ
    stack = ("make dev PORT=<port> (the chat service uses PORT to PORT+4)" if by_make
             else "--port <port> (the chat service uses it and the next four)")
    otree = "make dev OTREE_PORT=<port>" if by_make else "--otree-port <port>"
    return ports.first_busy("127.0.0.1", [
        (otree_port, "oTree", otree),
        (port, "the chat service's WebSocket API", stack),
        (port + 1, "the chat service's Management API", stack),
        (port + 2, "the chat service's offline model", stack),
        (port + 3, "the chat service's demo page", stack),
        (port + 4, "the chat service's study entry", stack),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8787,
                        help="the chat service's WebSocket port; it takes the next four too (default 8787)")
    parser.add_argument("--otree-port", type=int, default=8000, help="oTree's devserver (default 8000)")
    parser.add_argument("serve_args", nargs="*", help="passed to `python -m local_gateway serve`")
    args = parser.parse_args(argv)
    if busy := busy_port(args.port, args.otree_port):
        print(busy, file=sys.stderr)
        return 1
    if not (OTREE_BIN / "otree").exists():
        print("oTree is not installed: run `make otree`", file=sys.stderr)
        return 1

    procs: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    port = args.port
    origins = ",".join(f"http://{host}:{p}" for p in (args.otree_port, port + 3) for host in ("localhost", "127.0.0.1"))
    serve = [f"--port={port}", f"--management-port={port + 1}", f"--model-port={port + 2}",
             f"--demo-port={port + 3}", f"--entry-port={port + 4}", f"--origins={origins}", *args.serve_args]
    try:
        print("Starting the chat service...", flush=True)
        stack = subprocess.Popen([sys.executable, "-m", "local_gateway", "serve", *serve],
                                 cwd=ROOT, start_new_session=True)
        procs.append(stack)
        if not wait_for_port(port, procs, 60):
            print("The local stack did not start.", file=sys.stderr)
            return 1

        (APP / "db.sqlite3").unlink(missing_ok=True)
        env = os.environ | {"PATH": f"{OTREE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                            "CHAT_WS_URL": f"ws://127.0.0.1:{port}/local"}
        env.pop("VIRTUAL_ENV", None)
        print(f"Starting oTree's devserver on port {args.otree_port} (about ten seconds)...", flush=True)
        otree = subprocess.Popen(["otree", "devserver", str(args.otree_port)], cwd=APP, env=env,
                                 start_new_session=True)
        procs.append(otree)
        if not wait_for_port(args.otree_port, procs, 60):
            print("oTree's devserver did not start.", file=sys.stderr)
            return 1
        link = demo_session(args.otree_port)
        base = f"http://localhost:{args.otree_port}"
        lines = [
            "",
            "oTree is ready, beside the chat service (offline model, no key needed):",
            f"  Chat as a participant:  {link or base + '/demo'}",
            "                          (each new browser, or private window, is a new participant)",
            f"  Or start a demo:        {base}/demo  ->  'LLM chat: two bots...'  ->  a participant link",
            f"  Sessions and monitor:   {base}/sessions  (a session's 'Reports' tab: chat progress)",
            f"  Transcript export:      {base}/export  (chat: custom export)",
            "Stop everything with Ctrl-C.",
        ]
        print("\n".join(lines), flush=True)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.3)
        if not stopping:
            print("A server stopped; stopping the other.", file=sys.stderr)
            return 1
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
