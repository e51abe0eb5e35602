"""Structured logs and metrics with Powertools, configured by its own environment variables.

Logs carry ids, codes, sizes and timings: never message text, prompts, tickets or keys.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider


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


SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "llm-chat")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LLMChat")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
metrics.provider = _OneBufferAtATime(
    namespace=NAMESPACE, service=SERVICE, metric_set=metrics.metric_set, dimension_set=metrics.dimension_set,
    metadata_set=metrics.metadata_set, default_dimensions=metrics.default_dimensions,
)


def record_budget_use(tokens_used: int, budget: int) -> None:
    """BudgetUsedPercent: how much of an experiment's token budget is spent, for the alarm.

    Emitted where the budget is checked anyway (no extra read). The experiment is not a
    dimension: an alarm needs one fixed set of dimensions, and experiments are created at
    will, so the metric (service = stack) takes the Maximum across them. Which experiment
    it is, the operator's status command tells.
    """
    if budget > 0:
        metrics.add_metric(name="BudgetUsedPercent", unit=MetricUnit.Percent, value=100 * tokens_used / budget)
