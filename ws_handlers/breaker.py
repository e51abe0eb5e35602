"""The model's circuit breaker: when the model keeps failing, stop calling it for a while.

The policy is here, once, free of I/O; the store keeps one `BreakerState` that every function
instance reads and replaces conditionally, so concurrent failures are each counted once and the
breaker opens once (docs/architecture.md, "When the model is down, fail fast").
"""

from __future__ import annotations

from .store import BreakerState, Conflict, Store

#: Rounds of read-decide-replace a failure may lose to concurrent ones before it goes uncounted.
#: Each round one of the contenders wins, so failures coming together open the breaker anyway
#: (LLM_BREAKER_FAILURES is 5 by default).
ATTEMPTS = 8


def after_failure(state: BreakerState, now: float, threshold: int, window: float, cooldown: float) -> BreakerState:
    """The breaker once one more model failure happened at `now`.

    Failures count within a window of `window` seconds; a failure after the window expired starts
    a new window, counted as its first. The `threshold`-th failure of a window opens the breaker
    for `cooldown` seconds and starts counting again (the window from the opening).
    """
    failures, started = state.failures + 1, state.window_start
    if started < now - window:
        failures, started = 1, now
    if failures >= threshold:
        return BreakerState(failures=0, window_start=now, open_until=now + cooldown)
    return BreakerState(failures=failures, window_start=started, open_until=state.open_until)


def record_failure(store: Store, now: float, threshold: int, window: float, cooldown: float) -> bool:
    """Count a model failure in the store's breaker; True when this failure opened it.

    Read, decide, replace if unchanged: a failure that meets a concurrent one (Conflict) is
    decided again on top of it, for at most ATTEMPTS rounds.
    """
    for _ in range(ATTEMPTS):
        seen = store.read_breaker()
        new = after_failure(seen, now, threshold, window, cooldown)
        try:
            store.replace_breaker(seen, new)
        except Conflict:
            continue
        return new.open_until != seen.open_until  # only opening moves it
    return False
