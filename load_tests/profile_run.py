"""The store profile's run (store_profile.py): one participant through template.yaml's functions.

    python -m load_tests.profile_run '{"bot": "...", "messages": 10, "user_chars": 120, "reply_chars": 480}'

prints the priced requests as one JSON line. DynamoDB is moto's (mock_aws, in this process);
the functions' handlers get API Gateway- and SQS-shaped events, as on AWS, and the services of
their own environment in template.yaml; only the edges stand in: the push port keeps the
frames (the run checks each answer is a participant's), the reply queue is a list the run
delivers from, and the model sends `reply_chars` of text.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from .store_profile import Shape

ORIGIN = "https://lab.example.org"


class _Sink:
    """The push port: keeps what each socket was sent (the profile checks the answers)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


class _Jobs:
    """The reply queue: the profile runs each job itself, as one SQS delivery."""

    def __init__(self) -> None:
        self.queued: list[Any] = []

    def enqueue(self, job: Any) -> None:
        self.queued.append(job)


class _MotoPeek:
    """The meter's look at items, straight from moto's backend: a request's serialisation both
    ways (most of what moto spends on a call) would double the profile's time."""

    def __init__(self, region: str) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        self._backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][region]

    def get_item(self, TableName: str, Key: dict[str, Any], **_: Any) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        item = self._backend.get_item(TableName, Key)
        return {} if item is None else {"Item": item.to_json()["Attributes"]}


class _Metered:
    """The store, with each call labelled by the store method that made it."""

    def __init__(self, store: Any, meter: Any) -> None:
        self._store, self._meter = store, meter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._meter.method(name):
                return attribute(*args, **kwargs)

        return call


class _Model:
    """The model port: `reply_chars` of text in one piece, then its usage. While the turn delivers
    the piece, the meter labels its calls apart; once the turn asks for more, it probes."""

    def __init__(self, reply_chars: int, meter: Any, probe: Any) -> None:
        self.reply_chars, self.meter, self.probe = reply_chars, meter, probe

    def stream(self, bot: Any, messages: list[dict[str, str]]) -> Iterator[Any]:
        from ws_handlers.model import Usage

        action = self.meter.action
        self.meter.action = f"{action}: delivering the text"  # a slow machine's re-reads land here
        yield "y" * self.reply_chars
        self.meter.action = action
        self.probe()
        yield Usage(sum(len(m["content"]) for m in messages) // 4, self.reply_chars // 4)


class _Run:
    def __init__(self, shape: Shape) -> None:
        import boto3

        from local_gateway.template import create_tables, load
        from ws_handlers import runtime
        from ws_handlers.adapters.dynamodb import DynamoStore
        from ws_handlers.bot import Bot
        from ws_handlers.config import Settings

        from .dynamo_units import Meter, Table

        self.shape, self.bot, self.cid = shape, Bot.from_dict(json.loads(shape.bot)), "profile-connection="
        self.secret = uuid.uuid4().hex * 2
        self.template = load()
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_tables(client, self.template)
        tables = {kwargs["TableName"]: Table.from_create_table(kwargs) for kwargs in self.template.tables.values()}
        self.meter = Meter(tables, peek=_MotoPeek("us-east-1"))
        self.meter.attach(client)
        self.sink, self.jobs, self.job = _Sink(), _Jobs(), None
        self.model = _Model(shape.reply_chars, self.meter, self._probe_turn)
        self.services, self.settings = {}, {}
        for function in self.template.functions.values():
            env = {k: v for k, v in function.environment.items() if not k.endswith("_ARN")}  # secrets: plain here
            # The profile sends without think time, so a long chat would meet the flood limit that a
            # participant 30 s between messages never meets; the frames cost the same either way.
            settings = Settings.from_env(env | {"TICKET_SECRET": self.secret, "ALLOWED_ORIGINS": ORIGIN,
                                                "OPENAI_API_KEY": "profile", "RATE_LIMIT_FRAMES": "1000000"})
            store = _Metered(DynamoStore(settings.connections_table, settings.chats_table, client=client), self.meter)
            self.settings[function.logical_id] = settings
            self.services[function.logical_id] = runtime.Services(
                settings=settings, store=store, jobs=self.jobs, pusher_for=lambda endpoint: self.sink,
                ticket_secret=lambda: self.secret, model_factory=lambda: self.model,
            )
        self.settings_of_send = self.settings[self.template.api.routes["send"]]
        self.store = self.services[self.template.api.routes["send"]].store
        self.handlers = {lid: f.load() for lid, f in self.template.functions.items()}

    # -- invoking functions as API Gateway and the event source mapping would -------------------
    def _invoke(self, logical_id: str, event: dict[str, Any], action: str) -> Any:
        from local_gateway.lambda_context import LambdaContext
        from ws_handlers import runtime

        function = self.template.functions[logical_id]
        self.meter.action = action
        with runtime.using(self.services[logical_id]):
            return self.handlers[logical_id](event, LambdaContext(logical_id, function.memory_mb))

    def _context(self, route: str, event_type: str) -> dict[str, Any]:
        return {"routeKey": route, "eventType": event_type, "connectionId": self.cid, "stage": "prod",
                "domainName": "profile.execute-api.us-east-1.amazonaws.com", "apiId": "profile",
                "requestId": uuid.uuid4().hex, "requestTimeEpoch": int(time.time() * 1000)}

    def _route(self, route: str, event: dict[str, Any], action: str) -> Any:
        return self._invoke(self.template.api.routes[route], event, action)

    def frame(self, body: dict[str, Any], action: str) -> list[dict[str, Any]]:
        """A client frame through its route; the frames the socket got for it."""
        from local_gateway.template import route_for

        text = json.dumps(body)
        route = route_for(self.template.api, text)
        before = len(self.sink.frames)
        self._route(route, {"requestContext": self._context(route, "MESSAGE"), "body": text,
                            "isBase64Encoded": False}, action)
        return self.sink.frames[before:]

    def reply(self, action: str) -> list[dict[str, Any]]:
        """The queued job, delivered once to the function that drains the queue."""
        (function,) = [f for f in self.template.functions.values() if f.queue_sources]
        self.job = self.jobs.queued.pop(0)
        record = {"messageId": uuid.uuid4().hex, "body": json.dumps(self.job.to_dict()), "eventSource": "aws:sqs"}
        before = len(self.sink.frames)
        self._invoke(function.logical_id, {"Records": [record]}, action)
        return self.sink.frames[before:]

    def _probe_turn(self) -> None:
        """Inside the turn, while it holds the chat: one lease renewal and one re-read of the chat."""
        action, job = self.meter.action, self.job
        self.meter.action = f"probe: renewal ({action})"
        until = time.time() + self.settings_of_send.reply_lease_seconds
        renewed = self.store.renew_lease(job.chat_id, job.turn_id, until)
        _expect(renewed, self.meter.action, renewed)
        self.meter.action = f"probe: rebind ({action})"
        _expect(self.store.get_chat(job.chat_id) is not None, self.meter.action, None)
        self.meter.action = action

    # -- the participant -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ws_handlers.tickets import Identity, mint_ticket, mint_token

        message = self.settings_of_send
        who = Identity("L00001", "load", "s" + uuid.uuid4().hex[:10])  # shaped like the load generator's
        headers = {"Origin": ORIGIN, "Host": "profile.execute-api.us-east-1.amazonaws.com"}
        answer = self._route("$connect", {"requestContext": self._context("$connect", "CONNECT"), "headers": headers,
                                          "queryStringParameters": {"token": mint_token(self.secret, who)},
                                          "isBase64Encoded": False}, "connect")
        _expect(answer.get("statusCode") == 200, "connect", answer)
        got = self.frame({"action": "start", "ticket": mint_ticket(self.secret, who, "main", self.bot)}, "start")
        _expect([f["type"] for f in got] == ["chat"], "start", got)
        chat_id = got[0]["chat_id"]
        for k in range(1, self.shape.messages + 1):
            text = "x" * self.shape.user_chars
            send = {"action": "send", "chat_id": chat_id, "client_msg_id": uuid.uuid4().hex, "text": text}
            got = self.frame(send, f"send {k}")
            _expect([f["type"] for f in got] == ["ack", "queued"], f"send {k}", got)
            if k == 1:  # while the reply is queued: a send is refused after its reads
                got = self.frame(send | {"client_msg_id": uuid.uuid4().hex}, "refused send")
                _expect([f.get("code") for f in got] == ["reply_in_progress"], "refused send", got)
            got = [f["type"] for f in self.reply(f"reply {k}")]
            _expect(got[-1:] == ["message"] and set(got[:-1]) == {"delta"}, f"reply {k}", got)
        window = message.rate_limit_window
        fresh = (int(time.time() // window) + 50) * window  # a window no frame has used, well within the TTL
        for action in ("probe: frame (new window)", "probe: frame (same window)"):
            self.meter.action = action
            _expect(self.store.count_frame(self.cid, fresh, window) is not None, action, None)
        self._route("$disconnect", {"requestContext": self._context("$disconnect", "DISCONNECT"),
                                    "isBase64Encoded": False}, "disconnect")
        return {"requests": [asdict(r) for r in self.meter.requests], "rate_limit_window": window,
                "reply_lease_seconds": message.reply_lease_seconds,
                "memory_mb": {f.logical_id: f.memory_mb for f in self.template.functions.values()}}


def _expect(ok: bool, step: str, got: Any) -> None:
    if not ok:
        raise RuntimeError(f"the profile's {step} did not go as a participant's would: {got!r}")


def main(argv: list[str] | None = None) -> int:
    from moto import mock_aws

    shape = Shape(**json.loads((sys.argv[1:] if argv is None else argv)[0]))
    with mock_aws():
        result = _Run(shape).run()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
