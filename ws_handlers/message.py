"""The message route (start, send, history, ping and $default): answer fast, never raise.

Replies are not written here: `send` stores the message, acknowledges it and queues the
reply for the reply function, so this function returns within API Gateway's 29 s. Whatever
fails becomes an error frame on the caller's socket (`entry.on_socket`).
"""

from __future__ import annotations

from typing import Any

from . import tickets  # noqa: F401  (loaded in Lambda's init phase: a `start` frame opens a ticket)
from .chat import ChatService
from .entry import Caller, lambda_entry, on_socket
from .observability import logger, metrics
from .protocol import parse
from .runtime import services


@lambda_entry(answer=on_socket)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics.add_metric(name="Frames", unit="Count", value=1)
    svc = services()
    caller = Caller.of(event)
    logger.append_keys(connection_id=caller.connection_id)
    service = ChatService(svc.settings, svc.store, svc.jobs, svc.open_ticket, clock=svc.clock)
    connection = service.admit_frame(caller.connection_id)  # counted before it is even parsed
    logger.append_keys(participant=connection.identity.participant)
    action = parse(event.get("body"))
    logger.append_keys(action=type(action).__name__.lower())
    service.handle(connection, action, caller.endpoint, caller.respond)
    return {"statusCode": 200}
