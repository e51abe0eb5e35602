"""The offline model in a process of its own (`StackConfig.model_process`).

In the stack's process the model shares the GIL and the event loop with the gateway: at
200 participants it writes ~2000 SSE chunks a second on the loop that also serves every
socket. A real model is on another machine; for load tests this puts it at least on
another core. Tests that inject faults through `Stack.model` keep it in process.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_READY = re.compile(r"serving at (http://\S+)")


async def start(host: str, port: int, ttft: float | None, tokens_per_second: float | None,
                timeout: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start `python -m local_gateway.offline_model`; return it and its base URL (…/v1)."""
    command = [sys.executable, "-m", "local_gateway.offline_model", "--host", host, "--port", str(port)]
    if ttft is not None:
        command += ["--ttft-ms", str(ttft * 1000)]
    if tokens_per_second is not None:
        command += ["--tokens-per-second", str(tokens_per_second)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout)
    except TimeoutError:
        stop(child)
        raise RuntimeError(f"the offline model did not start within {timeout:.0f} s") from None
    ready = _READY.search(line)
    if ready is None:
        stop(child)
        raise RuntimeError(f"the offline model did not start (exit {child.poll()}): {line.strip()!r}")
    return child, ready.group(1)


def stop(child: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Terminate a child process of the stack (only this one, by its PID), reap it, close its pipes
    (the model's here, moto's server's in moto_process)."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()
