"""API Gateway's request throttling: a token bucket per route, as a stage's route settings set it.

API Gateway documents its throttling as a token bucket, one token a request: the bucket holds
`burst` tokens and refills at `rate` tokens a second; a request that finds less than one token
is answered 429 before any integration runs, and takes nothing
(https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-throttling.html). AWS
applies it "on a best-effort basis", so real limits may let a little more through; the local
stack applies the bucket exactly, the strictest reading, so a client that survives it survives AWS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`take()` is True while the bucket has a token (and takes it), False when throttled. Thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 0:
            raise ValueError(f"a token bucket needs a rate and a burst of 0 or more, got {rate} and {burst}")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)  # API Gateway's bucket starts full
        self._at = clock()
        self._lock = threading.Lock()
        #: requests answered 429 so far (what the stack's stats report)
        self.throttled = 0

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self.throttled += 1
            return False


def route_bucket(rate: float | None, burst: int | None,
                 clock: Callable[[], float] = time.monotonic) -> TokenBucket | None:
    """The bucket of a route whose stage sets `rate` and/or `burst`; None when it sets neither.
    A stage sets both in practice; one alone leaves the other at the account's (10,000 and 5,000)."""
    if rate is None and burst is None:
        return None
    return TokenBucket(10_000.0 if rate is None else rate, 5_000 if burst is None else burst, clock)


def describe(buckets: dict[str, TokenBucket]) -> dict[str, dict[str, float]]:
    """Each route's requests throttled so far, with its limits (for the stack's stats)."""
    return {key: {"throttled": b.throttled, "rate": b.rate, "burst": b.burst} for key, b in buckets.items()}
