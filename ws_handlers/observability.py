"""Structured logs and metrics with Powertools, configured by its own environment variables.

Logs carry ids, codes, sizes and timings: never message text, prompts, tickets or keys.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "llm-chat")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LLMChat"), service=SERVICE)
