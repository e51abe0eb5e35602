"""A connection's outgoing buffer, bounded, and what becomes of a client that stops reading.

API Gateway accepts a post_to_connection at once and buffers the frame for the client; it
cannot buffer for ever, and it drops a connection whose client does not read, after which
posts to it answer 410 Gone. Without a bound, the local gateway buffered without limit
(the kernel's autotuned send buffer takes up to 4 MB a socket, then asyncio's buffer grows)
and each push to such a socket held its function's thread until the pusher gave up (5 s).

Here each connection may hold `limit` bytes in the gateway, beyond a kernel send buffer of a
fixed size. A frame is written only when it fits (or into an empty buffer, should it be
larger than the bound): it never waits when there is room, and
waits at most `grace` seconds for room, behind the frames pushed before it. A buffer that
stays full that long is a client that is not reading: the socket is closed and every push
to it, waiting or later, answers "gone". Frames websockets writes itself (pongs, close
frames) are not gated; if they take the buffer over the bound, the gateway stops reading
from that client (no more pings to answer) and closes it after `grace` if the buffer
stays over.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

#: Bytes a frame's header adds to its payload, at most (a server's frames are not masked).
FRAME_OVERHEAD = 10
#: How often a push waiting for room looks at the buffer again (s): asyncio tells a protocol
#: when its buffer goes over a mark, not when one more frame would fit.
POLL_SECONDS = 0.01


@dataclass
class Backlog:
    """What the gateway's outboxes counted (Gateway.stats())."""

    peak_buffered: int = 0  #: the most bytes any connection's buffer held, as seen by a push
    stalled_closes: int = 0  #: connections closed because their buffer stayed full
    waiting_pushes: int = 0  #: pushes waiting now for room in a full buffer


class BoundedConnection(ServerConnection):
    """A server connection that tells its outbox when its buffer goes over the bound, whoever wrote."""

    outbox: Outbox | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        self.transport.pause_reading()  # a client that reads nothing gets no more pongs to not read
        if self.outbox is not None:
            self.outbox.over_bound()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.recv_messages.paused:  # unless the queue of received messages holds reading back
            self.transport.resume_reading()


class Outbox:
    """The frames on their way to one client."""

    def __init__(self, connection: ServerConnection, *, limit: int, grace: float, backlog: Backlog,
                 on_stall: Callable[[], None], kernel_buffer: int | None = None) -> None:
        self._connection, self.limit, self.grace, self._backlog = connection, limit, grace, backlog
        self._on_stall = on_stall
        self._lock = asyncio.Lock()  # frames go out in the order their pushes came
        self.stalled = False
        if kernel_buffer is not None:  # a fixed size also turns off the kernel's autotuning
            raw = connection.transport.get_extra_info("socket")
            if raw is not None:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, kernel_buffer)
        if isinstance(connection, BoundedConnection):
            connection.outbox = self

    def accepting(self) -> bool:
        """Whether frames may still be put: the socket is open and was not closed as not reading."""
        return not self.stalled and self._connection.state is State.OPEN

    def _buffered(self) -> int:
        size = self._connection.transport.get_write_buffer_size()
        self._backlog.peak_buffered = max(self._backlog.peak_buffered, size)
        return size

    def _full(self, need: int) -> bool:
        """Whether a frame of `need` bytes must wait; an empty buffer takes any frame (one larger
        than the bound would wait for ever)."""
        buffered = self._buffered()
        return buffered > 0 and buffered + need > self.limit

    async def put(self, message: str | bytes) -> bool:
        """Write one frame; False when the connection is closed, or is closed now because its
        buffer stayed full for `grace` seconds."""
        need = (len(message.encode()) if isinstance(message, str) else len(message)) + FRAME_OVERHEAD
        deadline = asyncio.get_running_loop().time() + self.grace
        self._backlog.waiting_pushes += 1
        try:
            async with asyncio.timeout_at(deadline), self._lock:
                while self.accepting() and self._full(need):
                    await asyncio.sleep(POLL_SECONDS)
                if not self.accepting():
                    return False
                await self._connection.send(message)  # never waits: the frame fits under the bound (or alone)
                self._buffered()
                return True
        except TimeoutError:
            self.stall()
            return False
        except Exception:
            if self.accepting():
                raise
            return False  # ConnectionClosed, or the transport failed under it
        finally:
            self._backlog.waiting_pushes -= 1

    def over_bound(self) -> None:
        """The buffer went over the bound (a frame not gated here): close the socket if it stays over."""
        asyncio.get_running_loop().call_later(self.grace, self._check_over_bound)

    def _check_over_bound(self) -> None:
        if self.accepting() and self._buffered() > self.limit:
            self.stall()

    def stall(self) -> None:
        """The client is not reading: count it and have the socket closed (once)."""
        if self.stalled:
            return
        self.stalled = True
        self._backlog.stalled_closes += 1
        self._on_stall()
