"""Coalescing a streamed reply into deltas. No I/O.

Each post_to_connection costs money and a round trip, so tokens are not pushed one by
one: the first piece goes at once (time to first delta is what a participant feels),
later ones are buffered until `flush_seconds` have passed or `flush_chars` are waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Coalescer:
    def __init__(self, flush_seconds: float, flush_chars: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.flush_seconds = flush_seconds
        self.flush_chars = flush_chars
        self._clock = clock
        self._buffer: list[str] = []
        self._buffered = 0
        self._last_flush: float | None = None

    def add(self, piece: str) -> str | None:
        """Buffer a piece; return the text to push now, if it is time."""
        if not piece:
            return None
        self._buffer.append(piece)
        self._buffered += len(piece)
        now = self._clock()
        if self._last_flush is None or self._buffered >= self.flush_chars or now - self._last_flush >= self.flush_seconds:
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Whatever is buffered, now."""
        self._last_flush = self._clock()
        if not self._buffer:
            return None
        text = "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return text
