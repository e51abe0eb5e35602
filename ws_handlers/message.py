"""The message route (start, send, history, ping and $default): answer fast, never raise.

Replies are not written here: `send` stores the message, acknowledges it and queues the
reply for the reply function, so this function returns within API Gateway's 29 s.
"""

from __future__ import annotations

from typing import Any

from .chat import Chats
from .errors import ChatError
from .observability import logger, metrics
from .protocol import error_frame, parse
from .push import ConnectionGone, PushFailed, endpoint_from_event
from .runtime import services
from .store import StoreThrottled


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    svc = services()
    connection_id = event["requestContext"]["connectionId"]
    endpoint = endpoint_from_event(event, svc.settings.websocket_endpoint)
    pusher = svc.pusher_for(endpoint)
    logger.append_keys(connection_id=connection_id)

    def respond(frame: dict[str, Any]) -> None:
        try:
            pusher.send(connection_id, frame)
        except ConnectionGone:  # the participant left; what was stored stays for `history`
            svc.store.delete_connection(connection_id)
        except PushFailed as exc:
            logger.warning("push failed", extra={"error": str(exc)})

    action_name = "unknown"
    try:
        # Every frame that reaches the function counts, before it is parsed: a flood of malformed
        # or unknown frames is cut like any other. API Gateway answers pings itself (template.yaml);
        # a ping that gets here anyway (should API Gateway and Python read a frame differently, say
        # one with two `action` keys) is counted like the rest.
        counted = svc.store.count_frame(connection_id, svc.clock(), svc.settings.rate_limit_window)
        if counted is None:
            raise ChatError("not_connected")
        connection, frames = counted
        if frames > svc.settings.rate_limit_frames:  # a flood: refused before any other work
            raise ChatError("rate_limited")
        logger.append_keys(participant=connection.identity.participant)
        action = parse(event.get("body"))
        action_name = type(action).__name__.lower()
        chats = Chats(svc.settings, svc.store, svc.jobs, svc.ticket_secret, clock=svc.clock)
        chats.handle(connection, action, endpoint, respond)
    except ChatError as exc:
        logger.info("refused", extra={"action": action_name, "code": exc.code})
        metrics.add_metric(name="Refusals", unit="Count", value=1)
        respond(error_frame(exc))
    except StoreThrottled:
        logger.warning("store throttled", extra={"action": action_name})
        respond(error_frame(ChatError("throttled")))
    except Exception:
        logger.exception("unhandled error", extra={"action": action_name})
        respond(error_frame(ChatError("internal")))
    metrics.add_metric(name="Frames", unit="Count", value=1)
    return {"statusCode": 200}
