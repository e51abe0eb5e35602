"""$connect: authenticate the participant and bind the socket, or refuse with 401/403."""

from __future__ import annotations

import time
from typing import Any

from .admission import admit, header
from .entry import at_handshake, lambda_entry
from .observability import logger, metrics
from .runtime import services
from .store import Connection


@lambda_entry(answer=at_handshake)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    svc = services()
    settings = svc.settings
    connection_id = event["requestContext"]["connectionId"]
    token = (event.get("queryStringParameters") or {}).get("token")
    origin = header(event.get("headers"), "origin")
    identity = admit(settings, svc.ticket_secret(), token, origin, svc.store.get_controls, svc.store.on_allowlist)
    now = time.time()
    svc.store.put_connection(Connection(connection_id, identity, now, int(now) + settings.connection_ttl))
    logger.info("connected", extra={"connection_id": connection_id, "participant": identity.participant})
    metrics.add_metric(name="Connections", unit="Count", value=1)
    return {"statusCode": 200}
