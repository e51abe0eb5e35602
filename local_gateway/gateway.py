"""An emulation of API Gateway's WebSocket API, on `websockets`.

`sam local` cannot serve WebSocket APIs, so the local stack runs its own gateway. It
reproduces what the handlers and the browser can observe of API Gateway:

* `$connect` is invoked during the handshake with the real event shape (headers with
  Origin, query string, requestContext); a non-2xx answer refuses the handshake with
  that status, and nothing is registered.
* Each message is routed by the API's route selection expression, read from
  template.yaml, and its integration is invoked without blocking the socket: frames are
  handled concurrently, as API Gateway does. A route with a MOCK integration (ping) is
  answered by the gateway itself, with no function call.
* Limits (`GatewayLimits`): 128 KB messages and 32 KB frames (larger ones close the socket with 1009),
  binary frames (closed with 1003, as API Gateway accepts only text), an
  idle timeout (10 min by default; only frames from the client count as activity) and a
  2-hour maximum connection, both closing with 1001 Going Away.
* `$disconnect` is invoked after the socket closes, best effort.
* Route throttling (the stage's DefaultRouteSettings): a token bucket per route (throttle.py),
  one token per handshake or frame, taken before anything else runs for that route. A throttled
  `$connect` refuses the handshake with 429 and `{"message": "Too Many Requests"}`; a throttled
  frame is answered with API Gateway's error frame (`{"message": "Too Many Requests",
  "connectionId", "requestId"}`) and its integration is not invoked (a MOCK route's answer is not
  sent); the socket stays open. A throttled `$disconnect` is not invoked. AWS documents the
  429 and the token bucket (https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-protect.html);
  the frame's exact text and the `$disconnect` case are this emulation's reading (docs/local.md).
* Each connection's outgoing buffer is bounded (outbox.py): a client that stops reading is
  closed with 1001 once its buffer has stayed full for `GatewayLimits.stall_timeout`, and pushes to
  it answer "gone" from then on, as API Gateway drops a connection it cannot deliver to.
* As the Management API's `ConnectionRegistry`, it delivers post_to_connection data to
  the socket, and answers "gone" for unknown or closed connections.

docs/local.md lists what it does not reproduce.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ws_handlers.gateway_limits import MAX_CLIENT_FRAME_BYTES, MAX_MESSAGE_BYTES

from .outbox import Backlog, BoundedConnection, Outbox
from .template import WebSocketApi, route_for
from .throttle import TokenBucket, route_bucket

log = logging.getLogger("local_gateway")

#: Invokes a function by logical id with an event; returns the handler's result.
Invoke = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class GatewayLimits:
    max_message: int = MAX_MESSAGE_BYTES
    max_frame: int = MAX_CLIENT_FRAME_BYTES
    idle_timeout: float = 600.0
    max_lifetime: float = 7200.0
    #: Bytes a connection's outgoing buffer may hold in the gateway, beyond the kernel's buffer;
    #: keep it above the largest frame (128 KB), or such a frame waits for an empty buffer
    max_buffered: int = 256 * 1024
    #: The kernel's send buffer of each socket (SO_SNDBUF, which Linux doubles); None leaves the
    #: system's autotuning, which lets one socket that is not read hold megabytes
    socket_send_buffer: int | None = 64 * 1024
    #: Seconds a push waits for room in a full buffer; a buffer full that long is closed (1001)
    stall_timeout: float = 1.0


#: What API Gateway answers a throttled request with (a handshake's 429 body, a frame's error message).
TOO_MANY_REQUESTS = "Too Many Requests"
#: The reason of the close frame sent to a client whose buffer stayed full.
STALLED_REASON = "Going away: the client is not reading"
#: Seconds a closing handshake may take before the connection is dropped (websockets' default).
CLOSE_TIMEOUT = 10.0


@dataclass
class _Socket:
    connection: ServerConnection
    connection_id: str
    connected_at: float
    source_ip: str
    user_agent: str
    outbox: Outbox
    last_active: float = field(default_factory=time.time)


def new_connection_id() -> str:
    """An id shaped like API Gateway's (`L0SM9cOFvHcCIhw=`), `=` included, to keep URL-encoding honest."""
    return base64.b64encode(secrets.token_bytes(10)).decode()


def _now_strings() -> tuple[int, str]:
    now = datetime.now(timezone.utc)
    return int(now.timestamp() * 1000), now.strftime("%d/%b/%Y:%H:%M:%S +0000")


class Gateway:
    """The WebSocket side of the emulated API; `serve()` starts it on loopback."""

    def __init__(
        self, api: WebSocketApi, invoke: Invoke, *, limits: GatewayLimits = GatewayLimits(), api_id: str = "local"
    ) -> None:
        self.api = api
        self.invoke = invoke
        self.limits = limits
        self.api_id = api_id
        self.sockets: dict[str, _Socket] = {}
        #: told (on the loop) of each socket forgotten: closed, or dropped as not reading (pipe_push.py)
        self.on_forget: list[Callable[[str], None]] = []
        self._pending: dict[int, str] = {}  # id(ServerConnection) -> connection id, during the handshake
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self.backlog = Backlog()
        self.domain = ""
        #: route key -> its stage bucket (every route gets the stage's DefaultRouteSettings on its own)
        self.buckets: dict[str, TokenBucket] = {
            route: bucket for route in [*api.routes, *api.mocks]
            if (bucket := route_bucket(api.throttling_rate, api.throttling_burst)) is not None
        }

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await serve(
            self._serve,
            host,
            port,
            process_request=self._handshake,
            max_size=(self.limits.max_message, self.limits.max_frame),
            ping_interval=None,  # API Gateway sends no pings; clients keep sockets alive themselves
            compression=None,
            server_header=None,
            create_connection=BoundedConnection,
            # the outbox keeps the buffer under the bound, so websockets' own flow control never
            # holds a send; going over (only a frame websockets writes itself) pauses the socket
            write_limit=(self.limits.max_buffered, self.limits.max_buffered),
        )
        bound = self._server.sockets[0].getsockname()[1]
        self.domain = f"{host}:{bound}"
        return bound

    async def stop(self, grace: float = 10.0) -> None:
        """Refuse new sockets, let running invocations finish (up to `grace` s), close the rest."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        await asyncio.gather(*(self._shut(sock, 1001, "Going away") for sock in list(self.sockets.values())))
        await self._server.wait_closed()

    def stats(self) -> dict[str, int]:
        """The outgoing buffers' counters: the bound, the peak seen, sockets closed as not reading."""
        return dataclasses.asdict(self.backlog) | {"max_buffered": self.limits.max_buffered}

    # -- events -------------------------------------------------------------------------
    def _context(self, connection_id: str, route: str, event_type: str, connected_at: float) -> dict[str, Any]:
        epoch, text = _now_strings()
        return {
            "routeKey": route,
            "eventType": event_type,
            "extendedRequestId": uuid.uuid4().hex[:16],
            "requestTime": text,
            "messageDirection": "IN",
            "stage": self.api.stage,
            "connectedAt": int(connected_at * 1000),
            "requestTimeEpoch": epoch,
            "requestId": uuid.uuid4().hex[:16],
            "domainName": self.domain,
            "connectionId": connection_id,
            "apiId": self.api_id,
        }

    @staticmethod
    def _headers(headers: Headers) -> tuple[dict[str, str], dict[str, list[str]]]:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in headers.raw_items():
            single[name] = value
            multi.setdefault(name, []).append(value)
        return single, multi

    # -- $connect -------------------------------------------------------------------------
    async def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.strip("/") != self.api.stage:
            return connection.respond(403, "Forbidden\n")
        if (bucket := self.buckets.get("$connect")) is not None and not bucket.take():
            return connection.respond(429, json.dumps({"message": TOO_MANY_REQUESTS}) + "\n")
        connection_id = new_connection_id()
        query = parse_qs(url.query, keep_blank_values=True)
        headers, multi_headers = self._headers(request.headers)
        source_ip = connection.remote_address[0] if connection.remote_address else "127.0.0.1"
        context = self._context(connection_id, "$connect", "CONNECT", time.time())
        context["identity"] = {"sourceIp": source_ip, "userAgent": request.headers.get("User-Agent", "")}
        event = {
            "headers": headers,
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "requestContext": context,
            "isBase64Encoded": False,
        }
        function = self.api.routes.get("$connect")
        if function is not None:
            try:
                result = await self.invoke(function, event)
            except Exception:
                log.exception("$connect failed")
                return connection.respond(500, "Internal server error\n")
            status = int(result.get("statusCode", 200)) if isinstance(result, dict) else 200
            if not 200 <= status < 300:
                return connection.respond(status, f"{result.get('body') or ''}\n")
        self._pending[id(connection)] = connection_id
        return None

    # -- the socket ---------------------------------------------------------------------
    async def _serve(self, connection: ServerConnection) -> None:
        connection_id = self._pending.pop(id(connection))
        request = connection.request
        outbox = Outbox(connection, limit=self.limits.max_buffered, grace=self.limits.stall_timeout,
                        backlog=self.backlog, on_stall=lambda: self._stalled(connection_id),
                        kernel_buffer=self.limits.socket_send_buffer)
        sock = _Socket(
            connection,
            connection_id,
            time.time(),
            connection.remote_address[0] if connection.remote_address else "127.0.0.1",
            request.headers.get("User-Agent", "") if request else "",
            outbox,
        )
        self.sockets[connection_id] = sock
        watchdog = asyncio.create_task(self._watch(sock))
        try:
            async for message in connection:
                if isinstance(message, bytes):  # API Gateway takes no binary frames: it disconnects
                    await self._shut(sock, 1003, "Binary frames are not supported")
                    break
                sock.last_active = time.time()
                await self._receive(sock, message)
                # One frame per turn of the event loop: a read can bring thousands of frames,
                # and going through them without yielding held every other socket for seconds.
                await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            watchdog.cancel()
            self._forget(connection_id)
            await self._disconnect(sock)

    async def _watch(self, sock: _Socket) -> None:
        """Close the socket after the idle timeout or at the maximum connection duration."""
        deadline_life = sock.connected_at + self.limits.max_lifetime
        while True:
            deadline = min(sock.last_active + self.limits.idle_timeout, deadline_life)
            delay = deadline - time.time()
            if delay <= 0:
                await self._shut(sock, 1001, "Going away")
                return
            await asyncio.sleep(delay)

    async def _shut(self, sock: _Socket, code: int, reason: str, within: float = CLOSE_TIMEOUT) -> None:
        """Close with `code`, or drop the connection if the closing handshake takes over `within`
        seconds: a client that does not read never answers a close frame, and websockets would
        wait for room to write it for as long as the buffer stays over its limit."""
        try:
            await asyncio.wait_for(sock.connection.close(code, reason), within)
        except TimeoutError:
            sock.connection.transport.abort()

    def _forget(self, connection_id: str) -> _Socket | None:
        """Pushes to the socket answer "gone" from now on."""
        sock = self.sockets.pop(connection_id, None)
        if sock is not None:
            for listener in self.on_forget:
                listener(connection_id)
        return sock

    def _stalled(self, connection_id: str) -> None:
        """The outbox found the client not reading: forget the socket (pushes answer "gone") and close it."""
        sock = self._forget(connection_id)
        if sock is None:
            return
        log.warning("closing %s: its outgoing buffer (%d bytes) stayed full for %.1f s", connection_id,
                    self.limits.max_buffered, self.limits.stall_timeout)
        self._spawn(self._shut(sock, 1001, STALLED_REASON, within=self.limits.stall_timeout))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive(self, sock: _Socket, message: str) -> None:
        """Route one frame. A MOCK integration is answered here, in the socket's own loop and
        without a function: a client that floods it and does not read its answers stalls only
        itself, until its full buffer closes it. A function's integration runs concurrently, as on AWS."""
        context = self._context(sock.connection_id, "", "MESSAGE", sock.connected_at)
        context["messageId"] = uuid.uuid4().hex[:16]
        try:
            route = route_for(self.api, message)
        except LookupError:  # no matching route and no $default
            await self._error(sock, "Forbidden", context)
            return
        if (bucket := self.buckets.get(route)) is not None and not bucket.take():
            await self._error(sock, TOO_MANY_REQUESTS, context)
            return
        if route in self.api.mocks:
            if (answer := self.api.mocks[route]) is not None:
                await sock.outbox.put(answer)
            return
        context["routeKey"] = route
        self._spawn(self._dispatch(sock, route, message, context))

    async def _dispatch(self, sock: _Socket, route: str, message: str, context: dict[str, Any]) -> None:
        event = {"requestContext": context, "body": message, "isBase64Encoded": False}
        try:
            await self.invoke(self.api.routes[route], event)
        except Exception:
            log.exception("integration failed for route %s", route)
            await self._error(sock, "Internal server error", context)

    async def _error(self, sock: _Socket, message: str, context: dict[str, Any]) -> None:
        """What API Gateway sends when an integration fails, no route matches or the route is throttled."""
        frame = {"message": message, "connectionId": sock.connection_id, "requestId": context["requestId"]}
        await sock.outbox.put(json.dumps(frame))

    async def _disconnect(self, sock: _Socket) -> None:
        function = self.api.routes.get("$disconnect")
        if function is None or ((bucket := self.buckets.get("$disconnect")) is not None and not bucket.take()):
            return
        context = self._context(sock.connection_id, "$disconnect", "DISCONNECT", sock.connected_at)
        context["disconnectStatusCode"] = sock.connection.close_code or 1006
        context["disconnectReason"] = sock.connection.close_reason or ""
        headers, multi = self._headers(sock.connection.request.headers) if sock.connection.request else ({}, {})
        event = {"headers": headers, "multiValueHeaders": multi, "requestContext": context, "isBase64Encoded": False}
        try:
            await self.invoke(function, event)
        except Exception:
            log.exception("$disconnect failed")

    # -- the Management API's view (ConnectionRegistry) ------------------------------------------
    async def send(self, connection_id: str, data: bytes) -> bool:
        """Deliver one frame. Answered at once while the buffer has room; else within the stall
        timeout, with False ("gone") if the socket was closed meanwhile as not reading."""
        sock = self.sockets.get(connection_id)
        if sock is None:
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return await sock.outbox.put(text if text is not None else data)

    def is_open(self, connection_id: str) -> bool:
        """From any thread: the socket is registered and its outbox takes frames (a dict lookup and
        two attributes, each read atomically)."""
        sock = self.sockets.get(connection_id)
        return sock is not None and sock.outbox.accepting()

    def describe(self, connection_id: str) -> dict | None:
        sock = self.sockets.get(connection_id)
        if sock is None:
            return None
        return {
            "connectedAt": datetime.fromtimestamp(sock.connected_at, timezone.utc),
            "lastActiveAt": datetime.fromtimestamp(sock.last_active, timezone.utc),
            "identity": {"sourceIp": sock.source_ip, "userAgent": sock.user_agent},
        }

    async def close(self, connection_id: str) -> bool:
        sock = self.sockets.get(connection_id)
        if sock is None:
            return False
        await self._shut(sock, 1000, "")
        return True
