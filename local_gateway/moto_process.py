"""moto's DynamoDB server in a process of its own, under the strict emulation (`StackConfig.moto_process`).

In the stack's process moto shares one GIL with the gateway's event loop and the message
function's threads; at a few hundred participants it was the largest share of that process's
work (tests/load_tests, docs/benchmarks.md). DynamoDB is another service on AWS; for load
tests this puts its emulation at least on another core. The process installs the strict
emulation from LOCAL_DYNAMODB_* (as the stack does in process) and answers
`GET /_local/stats` with its settings and counters (`StrictDynamoDB.describe()`), which only it
can read. Tests that configure the session's emulation keep moto in the stack's process.
DynamoDB's requests go straight to moto's DynamoDB app: moto's dispatcher would look the service
up for every request, under a global lock, listing moto's modules on disk.

    python -m local_gateway.moto_process --host 127.0.0.1 --port 0   # prints "serving at URL"
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from .model_process import stop  # terminate by PID, reap, close the pipes: the same for both children

ROOT = Path(__file__).resolve().parent.parent
STATS_PATH = "/_local/stats"
_READY = re.compile(r"serving at (http://\S+)")


def start(host: str, timeout: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start the server on a free port; return the process and its endpoint URL."""
    command = [sys.executable, "-m", "local_gateway.moto_process", "--host", host, "--port", "0"]
    # stdin stays open for the child's life: when this process ends, however, the child sees EOF and stops
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    ready = _READY.search(got[0]) if got else None
    if ready is None:
        stop(child)
        raise RuntimeError(f"moto's DynamoDB server did not start within {timeout:.0f} s (exit {child.poll()})")
    return child, ready.group(1)


def stats(endpoint: str) -> dict[str, Any]:
    """The emulation's settings and counters, from the server at `endpoint`."""
    with urllib.request.urlopen(endpoint + STATS_PATH, timeout=30) as answer:
        return json.loads(answer.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_gateway.moto_process", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from .strict_dynamodb import Strictness, install

    emulation = install(Strictness.from_env())
    moto = DomainDispatcherApplication(create_backend_app)
    # what moto's dispatcher picks for DynamoDB's requests, picked once: it otherwise looks the
    # service up under a global lock on every request (listing moto's modules on disk)
    dynamodb = create_backend_app("dynamodb")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return dynamodb(environ, start_response)
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") == STATS_PATH:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(emulation.describe()).encode()]
        return moto(environ, start_response)

    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    # the stack's end, even a crash, closes our stdin: stop then too, never outlive it
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the stack's to handle; it stops us
    print(f"serving at http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
