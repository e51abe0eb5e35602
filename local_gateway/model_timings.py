"""Per-request timings of the offline model, for splitting a load test's latency (load_tests/stack_overhead.py).

Off unless asked for (`OfflineModel(timings=N)` or env OFFLINE_MODEL_TIMINGS=N, N > 0 the most
requests kept): `make dev` neither records nor holds anything. When on, each chat completions
request gets one record, kept in a bounded deque (the oldest dropped first, and counted):

- `marker`: the load generator's tag found in the request's last user message (`[#...]`), or None;
- `received`: the handler started (the request's headers were read);
- `first_token`: the first content token is about to be handed to the transport;
- `last_token`: the last content token likewise; `done`: the stream's `[DONE]` likewise (after the
  finish and usage chunks);
- `status`: the HTTP status answered, `outcome`: "done", "cut", "disconnected" or "error".

Each is read just before the write, never after it: a peer in another process or thread may
read the bytes before the writer's coroutine resumes, and what the load test subtracts (the
client's first delta less the model's first token) must not go below zero. The write itself
(microseconds) therefore counts as after the model.

Times are `time.monotonic()`, never the model's injectable clock: on Linux it reads
CLOCK_MONOTONIC, one clock for every process of the machine, so the load generator (another
process) can subtract its own monotonic readings from these. Served at `GET /_timings`.
"""

from __future__ import annotations

import collections
import re
import time
from typing import Any

from local_gateway.offline_replies import content_text

#: The load generator's tag: `[#` + letters, digits, dots or dashes + `]`.
MARKER = re.compile(r"\[#([\w.-]{1,64})\]")


def marker_of(messages: list[dict[str, Any]]) -> str | None:
    """The tag in the last user message, or None."""
    for message in reversed(messages):
        if message.get("role") == "user":
            found = MARKER.search(content_text(message.get("content")))
            return found.group(1) if found else None
    return None


class Timings:
    """A bounded record of requests' times; `limit` 0 records nothing."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = max(0, limit)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.limit or 1)
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def start(self, received: float) -> dict[str, Any] | None:
        """A new record (mutated as the request goes on), or None when off."""
        if not self.enabled:
            return None
        if len(self.records) == self.limit:
            self.dropped += 1
        record: dict[str, Any] = {"marker": None, "received": received, "first_token": None, "last_token": None,
                                  "done": None, "status": None, "outcome": None}
        self.records.append(record)
        return record

    def document(self) -> dict[str, Any]:
        """What `GET /_timings` answers."""
        return {"enabled": self.enabled, "limit": self.limit, "dropped": self.dropped,
                "clock": "time.monotonic (CLOCK_MONOTONIC)", "now": time.monotonic(),
                "records": list(self.records) if self.enabled else []}


_NOW = object()


def stamp(record: dict[str, Any] | None, key: str, value: Any = _NOW) -> None:
    """Set `key` of a record (to the monotonic time now when no value is given); nothing when off."""
    if record is not None:
        record[key] = time.monotonic() if value is _NOW else value
