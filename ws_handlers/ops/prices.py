"""Every price the cost model uses, in one place: AWS us-east-1 on-demand list prices and an LLM.

Recorded 2025-06 from the public price pages below (not fetched at run time; check them
before budgeting a study). Free tiers are ignored: a study should not count on them.

- API Gateway WebSocket: https://aws.amazon.com/api-gateway/pricing/  (first 1 billion messages)
- Lambda (x86_64):       https://aws.amazon.com/lambda/pricing/
- SQS standard queues:   https://aws.amazon.com/sqs/pricing/ ($0.40 per million requests of up to 64 KB)
- DynamoDB on-demand:    https://aws.amazon.com/dynamodb/pricing/on-demand/ (after the
  November 2024 price cut: $0.625 per million write request units, $0.125 per million reads)
- OpenAI gpt-4o-mini:    https://openai.com/api/pricing/ ($0.15 per 1M input, $0.60 per 1M output tokens)
"""

from __future__ import annotations

DATE = "2025-06"
REGION = "us-east-1"

#: USD per unit
PRICES = {
    "apigw_message": 1.00 / 1e6,  #: per WebSocket message, metered in 32 KB increments, both directions
    "apigw_connection_minute": 0.25 / 1e6,
    "lambda_request": 0.20 / 1e6,  #: per invocation (synchronous or asynchronous)
    "lambda_gb_second": 0.0000166667,  #: x86_64, first 6 billion GB-s per month
    "sqs_request": 0.40 / 1e6,  #: standard queue, per request of up to 64 KB
    "dynamodb_wru": 0.625 / 1e6,  #: write request unit (1 KB; transactional writes take 2)
    "dynamodb_rru": 0.125 / 1e6,  #: read request unit (4 KB strongly consistent; transactional reads take 2)
}
APIGW_MESSAGE_BYTES = 32 * 1024

#: USD per 1M tokens, by model name (the bots' `model`).
LLM_PRICES = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
}

#: What the cost model does not count (small, or outside the service).
NOT_COUNTED = (
    "free tiers",
    "CloudWatch Logs ingestion and storage (about 1 KB of structured log per invocation, $0.50 per GB)",
    "X-Ray traces (Tracing: Active; the default sampling records 1 request per second and 5% of the rest)",
    "Secrets Manager ($0.40 per secret per month; values are cached per Lambda container)",
    "the reply queue's idle polling (Lambda's pollers long-poll it: cents a month) and data transfer out",
    "DynamoDB storage ($0.25 per GB-month) and point-in-time recovery",
)


def llm_prices(model: str | None) -> dict[str, float] | None:
    """USD per 1M tokens for `model`, also under a dated name (gpt-4o-mini-2024-07-18); None if unknown."""
    if not model:
        return None
    if model in LLM_PRICES:
        return LLM_PRICES[model]
    known = [name for name in LLM_PRICES if model.startswith(name + "-")]
    return LLM_PRICES[max(known, key=len)] if known else None


def llm_usd(model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What the tokens cost at the table's prices; None for a model the table does not know."""
    prices = llm_prices(model)
    if prices is None:
        return None
    return prompt_tokens / 1e6 * prices["input"] + completion_tokens / 1e6 * prices["output"]
