"""An emulator of API Gateway's WebSocket Management API (the @connections endpoint).

`sam local` cannot serve WebSocket APIs, so the local stack runs its own gateway. The
handlers must still push frames with an unmodified boto3 `apigatewaymanagementapi` client;
pointed at endpoint_url="http://127.0.0.1:PORT/STAGE", boto3 sends
POST|GET|DELETE /STAGE/@connections/ID with the id percent-encoded as one path segment
(`/` `+` `=` become %2F %2B %3D), so the path is parsed from the raw, undecoded URL.
Statuses, x-amzn-ErrorType headers and bodies copy API Gateway's, so boto3 raises the same
exceptions as on AWS: GoneException (410), PayloadTooLargeException (413),
ForbiddenException (403, wrong stage). SigV4 headers are ignored.
"""

from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol
from urllib.parse import unquote

from aiohttp import web

from ws_handlers.gateway_limits import MAX_MESSAGE_BYTES

MAX_DATA = MAX_MESSAGE_BYTES  #: API Gateway's limit on one post_to_connection payload (bytes)


class ConnectionRegistry(Protocol):
    """What the emulator needs from whoever holds the client sockets (the local gateway)."""

    async def send(self, connection_id: str, data: bytes) -> bool:
        """Deliver one frame; False when the connection is unknown, closed or gone."""

    def is_open(self, connection_id: str) -> bool:
        """Whether the connection is open now; safe to call from any thread (direct_push.py asks
        from the functions' threads, without waiting for the loop)."""

    def describe(self, connection_id: str) -> dict | None:
        """{"connectedAt", "lastActiveAt" (datetimes or ISO 8601 strings),
        "identity": {"sourceIp", "userAgent"}}, or None when unknown, closed or gone."""

    async def close(self, connection_id: str) -> bool:
        """Close the connection; False when it was unknown, closed or gone."""


@dataclass
class _Recorded:
    source_ip: str
    user_agent: str
    connected_at: datetime
    last_active_at: datetime
    posts: list[bytes] = field(default_factory=list)
    live: bool = True


class RecordingRegistry:
    """An in-memory ConnectionRegistry that records posts instead of sending them.

    Every method takes a lock, so a test thread may use it while the app runs in another.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[str, _Recorded] = {}

    def open(self, connection_id: str, source_ip: str = "127.0.0.1", user_agent: str = "test") -> None:
        """Register a live connection (replacing any earlier one with this id)."""
        now = datetime.now(timezone.utc)
        with self._lock:
            self._conns[connection_id] = _Recorded(source_ip, user_agent, now, now)

    def mark_gone(self, connection_id: str) -> None:
        """Make later calls answer 410, as if the client had vanished."""
        with self._lock:
            if conn := self._conns.get(connection_id):
                conn.live = False

    def is_open(self, connection_id: str) -> bool:
        with self._lock:
            conn = self._conns.get(connection_id)
            return bool(conn and conn.live)

    def posts(self, connection_id: str) -> list[bytes]:
        """Everything delivered to the connection, in order (kept after it closes)."""
        with self._lock:
            conn = self._conns.get(connection_id)
            return list(conn.posts) if conn else []

    async def send(self, connection_id: str, data: bytes) -> bool:
        with self._lock:
            conn = self._conns.get(connection_id)
            if not (conn and conn.live):
                return False
            conn.posts.append(bytes(data))
            conn.last_active_at = datetime.now(timezone.utc)
            return True

    def describe(self, connection_id: str) -> dict | None:
        with self._lock:
            conn = self._conns.get(connection_id)
            if not (conn and conn.live):
                return None
            return {
                "connectedAt": conn.connected_at,
                "lastActiveAt": conn.last_active_at,
                "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            }

    async def close(self, connection_id: str) -> bool:
        with self._lock:
            conn = self._conns.get(connection_id)
            if not (conn and conn.live):
                return False
            conn.live = False
            return True


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, error_type: str, message: str) -> web.Response:
    headers = {"x-amzn-ErrorType": error_type}
    return web.json_response({"message": message}, status=status, headers=headers)


def _gone() -> web.Response:
    # API Gateway's 410 has an empty body (SDKs read the code from the header only).
    return web.Response(status=410, headers={"x-amzn-ErrorType": "GoneException"})


def _too_large() -> web.Response:
    return _error(413, "PayloadTooLargeException", "Request entity too large")


_FAULT_TYPES = {429: "LimitExceededException", 500: "InternalServerErrorException", 503: "ServiceUnavailableException"}


def management_app(
    registry: ConnectionRegistry, stage: str = "local", faults: collections.deque[int] | None = None
) -> web.Application:
    """The Management API of one stage, served at /{stage}/@connections/{connection id}.

    `faults` (tests): HTTP statuses that the next POSTs answer instead of delivering, one each.
    """

    async def handle(request: web.Request) -> web.Response:
        # ["", stage, "@connections", encoded id]; request.path would decode %2F into "/".
        parts = request.raw_path.split("?", 1)[0].split("/")
        if len(parts) < 2 or unquote(parts[1]) != stage:
            return _error(403, "ForbiddenException", "Forbidden")
        if len(parts) != 4 or parts[2] != "@connections" or not parts[3]:
            return web.json_response({"message": "Not Found"}, status=404)
        connection_id = unquote(parts[3])
        if request.method == "POST":
            if faults:
                status = faults.popleft()
                return _error(status, _FAULT_TYPES.get(status, "InternalServerErrorException"), "Injected fault")
            try:
                data = await request.read()
            except web.HTTPRequestEntityTooLarge:  # beyond aiohttp's client_max_size
                return _too_large()
            if len(data) > MAX_DATA:
                return _too_large()
            return web.Response(status=200) if await registry.send(connection_id, data) else _gone()
        if request.method == "GET":
            info = registry.describe(connection_id)
            if info is None:
                return _gone()
            identity = info.get("identity") or {}
            return web.json_response({
                "connectedAt": _iso(info["connectedAt"]),
                "lastActiveAt": _iso(info["lastActiveAt"]),
                "identity": {k: identity.get(k) for k in ("sourceIp", "userAgent")},
            })
        if request.method == "DELETE":
            return web.Response(status=204) if await registry.close(connection_id) else _gone()
        headers = {"Allow": "DELETE, GET, POST"}
        return web.json_response({"message": "Method Not Allowed"}, status=405, headers=headers)

    async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_response_prepare.append(add_request_id)
    return app
