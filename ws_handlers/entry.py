"""The Lambda entry points' shell: Powertools' logging and metrics, and what a failure becomes.

Every handler (connect, disconnect, message, reply) is wrapped by `lambda_entry`, as Powertools
intends: `inject_lambda_context` puts the invocation's ids on every log line and drops the keys
the previous invocation of a warm container appended; `log_metrics` flushes the invocation's
metrics however it ends. A handler only does its route's work and raises; its `answer` turns what
it raised into what its caller gets, and never a stack trace (that goes to the logs only):

* `on_socket`, the message routes: an error frame on the caller's socket, by code, and 200 to
  API Gateway, so a refusal is no Lambda error.
* `at_handshake`, $connect: a refusal as its HTTP status (401 or 403, the reason as body).
* neither ($disconnect, reply), or a $connect failure that is no refusal: it raises, so Lambda
  records an error (the Errors alarms count them), SQS delivers a failed reply job again, and
  API Gateway answers a failed handshake 500 without detail.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import observability
from .adapters.apigateway import endpoint_from_event
from .errors import ChatError, Refused
from .observability import logger, metrics
from .protocol import error_frame
from .push import ConnectionGone, Pusher, PushFailed
from .runtime import services
from .store import Store, StoreThrottled

observability.install()  # the domain's metrics (telemetry.metrics) go to Powertools from here on

Event = dict[str, Any]
Handler = Callable[[Event, Any], Any]
#: What a failure becomes for the caller: the handler's return value, or None to raise it.
Answer = Callable[[Event, Exception], Any]


def lambda_entry(answer: Answer | None = None) -> Callable[[Handler], Handler]:
    """Give `handler` its logging and metrics, and answer what it raises with `answer`."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def answered(event: Event, context: Any) -> Any:
            try:
                return handler(event, context)
            except Exception as exc:
                response = answer(event, exc) if answer is not None else None
                if response is None:
                    raise
                return response

        # the answer runs inside log_metrics, so the metrics it adds are flushed with the rest
        return logger.inject_lambda_context(clear_state=True)(metrics.log_metrics(answered))

    return decorate


@dataclass(frozen=True)
class Caller:
    """The socket a message-route event came from, and the Management API that reaches it."""

    connection_id: str
    endpoint: str
    pusher: Pusher
    store: Store

    @classmethod
    def of(cls, event: Event) -> Caller:
        svc = services()
        endpoint = endpoint_from_event(event, svc.settings.websocket_endpoint)
        return cls(event["requestContext"]["connectionId"], endpoint, svc.pusher_for(endpoint), svc.store)

    def respond(self, frame: dict[str, Any]) -> None:
        """Push `frame` to the caller. A push never fails the frame's work: a closed socket (410)
        is forgotten, and what was stored stays for `history`; another failure is logged."""
        try:
            self.pusher.send(self.connection_id, frame)
        except ConnectionGone:
            self.store.delete_connection(self.connection_id)
        except PushFailed as exc:
            logger.warning("push failed", extra={"error": str(exc)})


def chat_error(exc: Exception) -> ChatError:
    """What a participant is told of `exc`, logged and counted: a refusal by its code, a store that
    stayed throttled as `throttled`, anything else as `internal` (its trace stays in the logs)."""
    if isinstance(exc, ChatError):
        logger.info("refused", extra={"code": exc.code})
        metrics.add_metric(name="Refusals", unit="Count", value=1)
        return exc
    if isinstance(exc, StoreThrottled):
        logger.warning("store throttled")
        return ChatError("throttled")
    logger.exception("unhandled error")
    return ChatError("internal")


def on_socket(event: Event, exc: Exception) -> dict[str, Any]:
    """The message routes: the failure as an error frame on the caller's socket."""
    error = chat_error(exc)  # logged first: finding the caller may fail as well
    Caller.of(event).respond(error_frame(error))
    return {"statusCode": 200}


def at_handshake(event: Event, exc: Exception) -> dict[str, Any] | None:
    """$connect: a refusal as its HTTP status; anything else is raised (a Lambda error)."""
    if not isinstance(exc, Refused):
        return None
    logger.info("connection refused", extra={"status": exc.status, "reason": exc.reason})
    metrics.add_metric(name="ConnectionsRefused", unit="Count", value=1)
    return {"statusCode": exc.status, "body": exc.reason}
