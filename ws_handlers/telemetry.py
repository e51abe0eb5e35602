"""The domain's logs and metrics, as ports: standard library only.

Logs: the domain writes to the standard library's logger named for the service
(POWERTOOLS_SERVICE_NAME, default llm-chat), which is the very logger Powertools' `Logger`
wraps (it is `logging.getLogger(service)`): once `observability` has built it, the domain's
lines are Powertools' JSON, with the invocation's keys. Logs carry ids, codes, sizes and
timings: never message text, prompts, tickets or keys.

Metrics: `metrics.add_metric(name=..., unit=..., value=...)` goes to the `MetricSink` installed
by the entry points (`observability.install`: Powertools' EMF metrics); until then, nowhere.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "llm-chat")
logger = logging.getLogger(SERVICE)


class MetricSink(Protocol):
    def add_metric(self, name: str, unit: str, value: float) -> None: ...


class _Dropped:
    def add_metric(self, name: str, unit: str, value: float) -> None:
        pass


class _Metrics:
    """What the domain calls: forwards to the installed sink."""

    sink: MetricSink = _Dropped()

    def add_metric(self, name: str, unit: str, value: float) -> None:
        self.sink.add_metric(name=name, unit=unit, value=value)


metrics = _Metrics()


def install(sink: MetricSink) -> None:
    """Send the domain's metrics to `sink` (the entry points install Powertools')."""
    _Metrics.sink = sink
