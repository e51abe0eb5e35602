"""Drive the Lambda handlers as API Gateway would: events in, frames read off the socket.

DynamoDB and the Management API are moto's (in process); the reply function drains the
local SQS queue, which delivers every job twice (at-least-once, as SQS may); the LLM is
the offline model over HTTP. Only the edges differ from AWS.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends

from local_gateway.lambda_context import LambdaContext
from local_gateway.management_api import RecordingRegistry
from local_gateway.sqs_queue import LocalQueue
from local_gateway.thread_runner import ThreadRunner
from ws_handlers import connect, disconnect, message, reply, runtime
from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.bot import Bot, Limits
from ws_handlers.config import Settings
from ws_handlers.tickets import Identity, mint_ticket, mint_token
from waiting import Clock

DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"
STAGE = "test"
ORIGIN = "https://lab.example.org"
EXPERIMENT, SESSION = "exp1", "sess1"


def bot(**overrides: Any) -> Bot:
    limits = overrides.pop("limits", Limits())
    fields = {
        "name": "tutor",
        "model": "offline-tutor",
        "system_prompt": "You are Ada, a patient maths tutor. SECRET-TREATMENT-MARKER",
        "temperature": 0.2,
        "max_tokens": 120,
    } | overrides
    return Bot(**fields, limits=limits)


class Harness:
    def __init__(self, secret: str, model_url: str, env: dict[str, str], registry: RecordingRegistry | None = None,
                 *, tables: Callable[[Any, str, str], None]):
        """`tables(client, connections, chats)` creates the DynamoDB tables (the `dynamodb_tables` fixture)."""
        self.secret = secret
        base = {
            "CONNECTIONS_TABLE": "conns",
            "CHATS_TABLE": "chats",
            "TICKET_SECRET": secret,
            "ALLOWED_ORIGINS": ORIGIN,
            "OPENAI_API_KEY": "offline",
            "OPENAI_BASE_URL": model_url + "/v1",
            "LLM_TIMEOUT_SECONDS": "30",
            "LLM_MAX_RETRIES": "2",
            "STREAM_FLUSH_MS": "0",
        }
        self.settings = Settings.from_env(base | env)
        self.ddb = boto3.client("dynamodb")
        tables(self.ddb, self.settings.connections_table, self.settings.chats_table)
        self.registry = registry
        # every job twice; a failed one again after 0.2 s (not the template's 30 minutes)
        self.queue = LocalQueue(
            ThreadRunner(reply.handler, threads=8), concurrency=8, duplicates=1.0, visibility_timeout=0.2,
            max_receive_count=5,
        )
        services = runtime.from_settings(self.settings, jobs=self.queue)
        self.clock = services.clock = Clock()
        self.store: DynamoStore = services.store  # type: ignore[assignment]
        runtime.install(services)

    def close(self) -> None:
        self.queue.wait_idle(60)
        self.queue.shutdown()
        runtime.install(None)

    # -- credentials ------------------------------------------------------------------
    def identity(self, participant: str = "P1") -> Identity:
        return Identity(participant, EXPERIMENT, SESSION)

    def token(self, participant: str = "P1", **kw: Any) -> str:
        return mint_token(self.secret, self.identity(participant), **kw)

    def ticket(self, participant: str = "P1", chat_key: str = "main", **bot_overrides: Any) -> str:
        return mint_ticket(self.secret, self.identity(participant), chat_key, bot(**bot_overrides))

    # -- events -----------------------------------------------------------------------
    def _context(self, cid: str, route: str, event_type: str) -> dict[str, Any]:
        return {
            "routeKey": route,
            "eventType": event_type,
            "connectionId": cid,
            "domainName": DOMAIN,
            "stage": STAGE,
            "apiId": "abc123",
            "requestId": uuid.uuid4().hex,
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": "127.0.0.1"},
        }

    def connect(self, cid: str = "conn-1", participant: str = "P1", token: str | None = "mint",
                origin: str | None = ORIGIN) -> dict[str, Any]:
        headers = {"Host": DOMAIN, "Sec-WebSocket-Version": "13"}
        if origin is not None:
            headers["Origin"] = origin
        query = None if token is None else {"token": self.token(participant) if token == "mint" else token}
        event = {
            "requestContext": self._context(cid, "$connect", "CONNECT"),
            "headers": headers,
            "queryStringParameters": query,
            "isBase64Encoded": False,
        }
        if self.registry is not None:
            self.registry.open(cid)
        return connect.handler(event, LambdaContext("connect"))

    def disconnect(self, cid: str) -> dict[str, Any]:
        event = {"requestContext": self._context(cid, "$disconnect", "DISCONNECT"), "isBase64Encoded": False}
        return disconnect.handler(event, LambdaContext("disconnect"))

    def send_raw(self, cid: str, body: str | None, route: str = "$default") -> dict[str, Any]:
        event = {"requestContext": self._context(cid, route, "MESSAGE"), "body": body, "isBase64Encoded": False}
        return message.handler(event, LambdaContext("message"))

    def send(self, cid: str, frame: dict[str, Any], wait: bool = True) -> list[dict[str, Any]]:
        """Send a frame; return the frames the socket received because of it (replies included)."""
        before = len(self.frames(cid))
        # API Gateway answers `ping` itself (template.yaml): a frame that reaches the function never has that route
        route = frame.get("action") if frame.get("action") in ("start", "send", "history") else "$default"
        response = self.send_raw(cid, json.dumps(frame), route)
        assert response == {"statusCode": 200}
        if wait:
            assert self.queue.wait_idle(60), "a reply did not finish"
        return self.frames(cid)[before:]

    def send_at_once(self, frames: list[tuple[str, dict[str, Any]]], wait: bool = True) -> None:
        """Send (connection, frame) pairs from as many threads released together, as a burst
        arrives; return when they (and, with `wait`, the replies they started) are done."""
        barrier = threading.Barrier(len(frames))

        def one(cid: str, frame: dict[str, Any]) -> None:
            barrier.wait(60)
            self.send_raw(cid, json.dumps(frame))

        threads = [threading.Thread(target=one, args=pair) for pair in frames]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a send did not finish"
        if wait:
            assert self.queue.wait_idle(60), "a reply did not finish"

    # -- what the socket received ---------------------------------------------------------
    def frames(self, cid: str) -> list[dict[str, Any]]:
        if self.registry is not None:
            return [json.loads(p) for p in self.registry.posts(cid)]
        backend = apigatewaymanagementapi_backends["123456789012"]["us-east-1"]
        conn = backend.connections.get(cid)
        data = conn.data.decode() if conn is not None else ""
        decoder, out, i = json.JSONDecoder(), [], 0
        while i < len(data):
            frame, i = decoder.raw_decode(data, i)
            out.append(frame)
        return out

    # -- conveniences -------------------------------------------------------------------
    def start(self, cid: str = "conn-1", participant: str = "P1", chat_key: str = "main", **bot_overrides: Any) -> dict:
        frames = self.send(cid, {"action": "start", "ticket": self.ticket(participant, chat_key, **bot_overrides)})
        assert frames[-1]["type"] == "chat", frames
        return frames[-1]

    def has_connection(self, cid: str) -> bool:
        """Whether the connection is stored (expired or not)."""
        return any(c.connection_id == cid for c in self.store.connections())

    def table_items(self, table: str = "chats") -> list[dict[str, Any]]:
        """Every item (tests only: a scan is fine here, never on a request path)."""
        name = {"chats": self.settings.chats_table, "conns": self.settings.connections_table}[table]
        return self.ddb.scan(TableName=name)["Items"]
