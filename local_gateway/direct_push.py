"""A `Pusher` that hands frames straight to the local gateway, without HTTP.

On AWS each push is an HTTPS call to the Management API. Locally, making the same call
through boto3 (request building, SigV4 signing, urllib3) to the emulator (aiohttp), on
the same interpreter as everything else, cost about 1.5 ms of CPU per delta: at 200
participants streaming, that alone held the GIL for a fifth of the time (docs/benchmarks.md).
This pusher keeps the Management API's semantics (410 for a closed or unknown socket,
413 over 128 KB) and skips the transport. The stack uses it unless configured to use
the HTTP emulator (`StackConfig.push = "management_api"`), which tests still exercise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ws_handlers.protocol import encode
from ws_handlers.push import ConnectionGone, PushFailed

from .management_api import MAX_DATA, ConnectionRegistry


class DirectPusher:
    """Delivers on the gateway's event loop, from the function's worker thread."""

    def __init__(self, registry: ConnectionRegistry, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        self._registry, self._loop, self._timeout = registry, loop, timeout

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        data = encode(frame)
        if len(data) > MAX_DATA:
            raise PushFailed("PayloadTooLargeException (413)")
        future = asyncio.run_coroutine_threadsafe(self._registry.send(connection_id, data), self._loop)
        try:
            delivered = future.result(self._timeout)
        except TimeoutError:  # a backstop: the gateway answers within its stall timeout (outbox.py)
            future.cancel()
            raise PushFailed("timed out (504)") from None
        if not delivered:
            raise ConnectionGone(connection_id)
