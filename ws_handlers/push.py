"""The push port: frames to a participant's socket. No I/O here: the Management API adapter
is `adapters.apigateway`; the local stack has its own (local_gateway/direct_push.py, pipe_push.py)."""

from __future__ import annotations

from typing import Any, Protocol


class ConnectionGone(Exception):
    """The socket is closed or unknown (HTTP 410): stop pushing to it."""


class PushFailed(Exception):
    """The Management API refused for another reason (throttling, 5xx, payload too large)."""


class Pusher(Protocol):
    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        """Deliver one frame; raises ConnectionGone or PushFailed."""
        ...
