"""Run an aiohttp application on loopback in a background thread.

Tests and synchronous tools use this to host the offline model or the Management API
emulator beside synchronous code (boto3, the openai client) without managing a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web


@dataclass
class ServedApp:
    url: str  #: http://127.0.0.1:PORT (https with a TLS context)
    port: int
    loop: asyncio.AbstractEventLoop

    def call(self, coro, timeout: float = 10.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def serve_in_thread(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                    ssl_context: ssl.SSLContext | None = None) -> Iterator[ServedApp]:
    """Serve `app` until the block exits; port 0 picks a free port; over TLS with `ssl_context`."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def start() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # surfaced to the caller below
            state["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="aiohttp-served", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the server did not start within 10 s")
    if "error" in state:
        raise state["error"]
    try:
        scheme = "http" if ssl_context is None else "https"
        yield ServedApp(f"{scheme}://{host}:{state['port']}", state["port"], loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
