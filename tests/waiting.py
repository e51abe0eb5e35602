"""Waiting without timing: tests wait for what they expect, never for a fixed time.

`Clock` is a clock the code under test reads and a test moves on instead of sleeping through a
cooldown, a lease or a retention period. `Hold` is the offline model's sleep in tests: a stall or
delay fault of `Hold.SECONDS` lasts until the test releases it, so the test, not a timer, decides
when a stalled reply goes on. `wait_for` polls a condition with a bound that only ends failures. `at_once` starts threads together
(a barrier, not a sleep) for tests of concurrent writers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

#: How long a condition may take before a test fails: only a bound (waits end when the condition
#: holds); a busy machine can take many seconds for what takes milliseconds alone.
PATIENCE = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float = PATIENCE) -> bool:
    """Poll until `predicate()` is true; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Clock:
    """Epoch seconds: real time, moved on by `advance`."""

    def __init__(self) -> None:
        self._ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self._ahead

    def advance(self, seconds: float) -> None:
        self._ahead += seconds


class Hold:
    """The offline model's `sleep`: a wait of exactly `SECONDS` lasts until `release()` (which also
    lets through those that begin after it, until `close()`); other waits are real."""

    SECONDS = 3600.0

    def __init__(self) -> None:
        self._released = threading.Event()

    async def sleep(self, seconds: float) -> None:
        if seconds != self.SECONDS:
            await asyncio.sleep(seconds)
            return
        while not self._released.is_set():
            await asyncio.sleep(0.01)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.clear()


def at_once(count: int, target: Callable[[int], Any]) -> list:
    """Run target(i) on `count` threads released together; their results (or exceptions) in order."""
    start = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    return results
