"""$disconnect: unbind the socket. Best effort on AWS's side too: stale records expire by TTL."""

from __future__ import annotations

from typing import Any

from .entry import lambda_entry
from .observability import logger, metrics
from .runtime import services


@lambda_entry()
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    connection_id = event["requestContext"]["connectionId"]
    services().store.delete_connection(connection_id)
    logger.info("disconnected", extra={"connection_id": connection_id})
    metrics.add_metric(name="Disconnections", unit="Count", value=1)
    return {"statusCode": 200}
