"""A `Pusher` that hands frames straight to the local gateway, without HTTP and mostly without waiting.

On AWS each push is an HTTPS call to the Management API. Locally, making the same call
through boto3 (request building, SigV4 signing, urllib3) to the emulator (aiohttp), on
the same interpreter as everything else, cost about 1.5 ms of CPU per delta: at 200
participants streaming, that alone held the GIL for a fifth of the time (docs/benchmarks.md).
This pusher keeps the Management API's semantics (410 for a closed or unknown socket,
413 over 128 KB) and skips the transport. The stack uses it unless configured to use
the HTTP emulator (`StackConfig.push = "management_api"`), which tests still exercise.

A push used to wait for the gateway's loop to write the frame and answer (a task, a
future, the loop's wake-up and a thread switch each way, ~10 times a reply): a quarter of
the stack's CPU at 200 participants. Now a push returns as soon as its frame is queued,
when the socket is open (asked of the registry from the pushing thread: a closed or unknown
one answers 410 at once) and the connection has fewer than `ahead` bytes of frames the
gateway has not answered yet. Otherwise (a client slow to read, a loop far behind) it waits
for the gateway's answer as before, and with it the gateway's bound on slow readers
(outbox.py): a thread pushing to a full socket waits up to the stall timeout, then gets 410.
One queue for all connections, drained by the loop in order, keeps each connection's frames
in the order of their pushes, and one wake-up of the loop serves every frame queued meanwhile.
A frame queued at once and refused by the gateway (the socket closed in between) is lost, as
a post API Gateway answered 200 is lost when the socket drops right after; the next push
to it answers 410.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from typing import Any

from ws_handlers.protocol import encode
from ws_handlers.push import ConnectionGone, PushFailed

from .management_api import MAX_DATA, ConnectionRegistry

log = logging.getLogger("local_gateway")

#: Bytes of a connection's frames a push may leave unanswered by the gateway and still return at once.
AHEAD_BYTES = 64 * 1024

_Item = tuple[str, bytes, "concurrent.futures.Future[bool] | None"]


def refuse_too_large(data: bytes) -> None:
    """Raise the Management API's 413 for a frame over its limit, as a post of it would get."""
    if len(data) > MAX_DATA:
        raise PushFailed("PayloadTooLargeException (413)")


class DirectPusher:
    """Delivers on the gateway's event loop, from the functions' worker threads."""

    def __init__(self, registry: ConnectionRegistry, loop: asyncio.AbstractEventLoop, timeout: float = 5.0,
                 ahead: int = AHEAD_BYTES) -> None:
        self._registry, self._loop, self._timeout, self._ahead = registry, loop, timeout, ahead
        self._lock = threading.Lock()
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake_pending = False  #: a drain is scheduled on the loop and has not taken the queue yet
        self._unanswered: dict[str, int] = {}  #: bytes handed over per connection, not yet answered
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        future = self.offer(connection_id, encode(frame))
        if future is None:
            return
        try:
            delivered = future.result(self._timeout)
        except TimeoutError:  # a backstop: the gateway answers within its stall timeout (outbox.py)
            future.cancel()
            raise PushFailed("timed out (504)") from None
        if not delivered:
            raise ConnectionGone(connection_id)

    def offer(self, connection_id: str, data: bytes) -> concurrent.futures.Future[bool] | None:
        """Queue an encoded frame without waiting: None when the push is done (queued at once), else
        the gateway's answer to wait for (True: delivered, False: the socket closed). Raises as
        `send` does for a frame too large or a socket closed or unknown. From any thread."""
        refuse_too_large(data)
        if not self._registry.is_open(connection_id):
            raise ConnectionGone(connection_id)
        with self._lock:
            unanswered = self._unanswered.get(connection_id, 0)
            wait = unanswered > 0 and unanswered + len(data) > self._ahead
            future: concurrent.futures.Future[bool] | None = concurrent.futures.Future() if wait else None
            self._unanswered[connection_id] = unanswered + len(data)
            self._queue.append((connection_id, data, future))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._loop.call_soon_threadsafe(self._drain)
        return future

    def _drain(self) -> None:
        """On the loop: start delivering everything queued, in order (the outbox's lock keeps that order)."""
        with self._lock:
            items, self._wake_pending = list(self._queue), False
            self._queue.clear()
        for item in items:
            task = self._loop.create_task(self._deliver(*item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, connection_id: str, data: bytes, future: concurrent.futures.Future[bool] | None) -> None:
        try:
            delivered = await self._registry.send(connection_id, data)
        except Exception as exc:
            if future is None:
                log.exception("a queued push to %s failed", connection_id)
            elif future.set_running_or_notify_cancel():
                future.set_exception(exc)
            return
        finally:
            with self._lock:
                left = self._unanswered.pop(connection_id) - len(data)
                if left:
                    self._unanswered[connection_id] = left
        if future is not None and future.set_running_or_notify_cancel():
            future.set_result(delivered)
