"""Structured logs and metrics with Powertools, configured by its own environment variables.

Logs carry ids, codes, sizes and timings: never message text, prompts, tickets or keys.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "llm-chat")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LLMChat"), service=SERVICE)


def record_budget_use(tokens_used: int, budget: int) -> None:
    """BudgetUsedPercent: how much of an experiment's token budget is spent, for the alarm.

    Emitted where the budget is checked anyway (no extra read). The experiment is not a
    dimension: an alarm needs one fixed set of dimensions, and experiments are created at
    will, so the metric (service = stack) takes the Maximum across them. Which experiment
    it is, the operator's status command tells.
    """
    if budget > 0:
        metrics.add_metric(name="BudgetUsedPercent", unit=MetricUnit.Percent, value=100 * tokens_used / budget)
