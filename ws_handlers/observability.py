"""Structured logs and metrics with Powertools, configured by its own environment variables.

The Lambda entry points' side of the domain's telemetry port (`telemetry`): `entry` installs it,
and decorates every handler with its `logger` and `metrics` (`lambda_entry`). It is no adapter of
the domain's: the domain logs and counts through `telemetry`, and would run without Powertools.
Logs carry ids, codes, sizes and timings: never message text, prompts, tickets or keys.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from . import telemetry
from .telemetry import SERVICE


class _OneBufferAtATime(AmazonCloudWatchEMFProvider):
    """Powertools' EMF provider with its process-wide buffer behind a lock.

    Lambda runs one invocation per process; the local stack runs many on threads of one, where
    an unguarded flush could empty the buffer while another invocation was serialising it (its
    handler then failed after doing its work: a `$connect` answered 500). One invocation's flush
    may still carry another's metrics: each is emitted once all the same.
    """

    _lock = threading.RLock()  # re-entrant: add_metric flushes by itself at 100 metrics

    def add_metric(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            super().add_metric(*args, **kwargs)

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        with self._lock:
            super().flush_metrics(raise_on_empty_metrics)


NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LLMChat")
logger = Logger(service=SERVICE)  # wraps logging.getLogger(SERVICE), which is telemetry.logger
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
metrics.provider = _OneBufferAtATime(
    namespace=NAMESPACE, service=SERVICE, metric_set=metrics.metric_set, dimension_set=metrics.dimension_set,
    metadata_set=metrics.metadata_set, default_dimensions=metrics.default_dimensions,
)


def install() -> None:
    """Send the domain's metrics (`telemetry.metrics`) to Powertools' `metrics`. Its logs need
    nothing: `telemetry.logger` is the standard library logger that `logger` wraps."""
    telemetry.install(metrics)
