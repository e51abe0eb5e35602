"""The WebSocket stage's route throttling, over real sockets against the local stack.

The stage's DefaultRouteSettings (template parameters ThrottlingRateLimit / ThrottlingBurstLimit)
give every route its own token bucket: a burst beyond it is answered as API Gateway answers it
(a 429 handshake, an error frame for a message) without invoking the function, and the socket stays open.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import InvalidStatus

from local_gateway.stack import running
from test_stack_e2e import ORIGIN, Client, _config, credentials
from waiting import PATIENCE, wait_for

THROTTLED = {"message": "Too Many Requests"}
BURST = 3


@pytest.fixture
def stack(tmp_path):
    # rate 1/s (the parameter's minimum): a burst sent at once outruns the refill by far
    parameters = {"ThrottlingRateLimit": "1", "ThrottlingBurstLimit": str(BURST)}
    with running(_config(tmp_path, parameters=parameters)) as s:
        yield s


def _throttled(frame: dict) -> bool:
    return {k: frame.get(k) for k in THROTTLED} == THROTTLED and "type" not in frame


def _answers(client: Client, ids: list[str]) -> tuple[dict[str, dict], list[dict]]:
    """Read until each send of `ids` has its one answer: an ack or a refusal naming it, or API
    Gateway's throttled frame, which names no message (and comes before the answers of the
    sends let through, whose functions run concurrently). Returns the named answers and the throttled frames."""
    named: dict[str, dict] = {}
    throttled: list[dict] = []
    deadline = time.monotonic() + PATIENCE
    while len(named) + len(throttled) < len(ids):
        frame = json.loads(client.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        client.frames.append(frame)
        if _throttled(frame):
            throttled.append(frame)
        elif frame.get("type") in ("ack", "error") and frame.get("client_msg_id") in ids:
            named[frame["client_msg_id"]] = frame
    return named, throttled


def test_a_handshake_burst_beyond_the_connect_bucket_is_refused_429(stack):
    url, _ = credentials(stack)

    async def attempt() -> int:
        try:
            async with aconnect(url, origin=ORIGIN, open_timeout=PATIENCE):
                return 101
        except InvalidStatus as refused:
            assert json.loads(refused.response.body) == THROTTLED if refused.response.status_code == 429 else True
            return refused.response.status_code

    async def burst() -> list[int]:
        return await asyncio.gather(*(attempt() for _ in range(4 * BURST)))

    statuses = asyncio.run(burst())
    assert set(statuses) <= {101, 429} and 101 in statuses and 429 in statuses
    assert stack.stats()["websocket_api"]["$connect"]["throttled"] == statuses.count(429)
    assert wait_for(lambda: asyncio.run(attempt()) == 101)  # the bucket refills: a later connection is let in


def test_a_throttled_send_is_not_written_the_socket_stays_open_and_its_retry_is_stored_once(stack):
    url, ticket = credentials(stack)
    client = Client(url)
    client.send({"action": "start", "ticket": ticket})
    chat_id = client.until("chat")["chat_id"]
    ids = [f"m{i}" for i in range(4 * BURST)]
    for i in ids:  # at once: the send route's bucket holds BURST tokens
        client.send({"action": "send", "chat_id": chat_id, "client_msg_id": i, "text": f"question {i}"})
    named, frames = _answers(client, ids)
    throttled = [i for i in ids if i not in named]
    acked = [i for i in ids if named.get(i, {}).get("type") == "ack"]
    assert frames and acked and len(frames) == len(throttled)
    assert stack.stats()["websocket_api"]["send"]["throttled"] == len(throttled)
    assert all(f["connectionId"] and f["requestId"] for f in frames)

    # nothing half-written: only the acked sends are stored; then each reply is written
    stored = [m for m in stack.store.messages(chat_id) if m.role == "user"]
    assert sorted(m.client_msg_id for m in stored) == sorted(acked)
    # the throttled sends, retried one at a time (each after the previous reply), each stored once
    for i in [*throttled, throttled[0]]:  # the first again: a retry of a stored send is a duplicate
        while True:
            _wait_idle(client, stack, chat_id)
            client.send({"action": "send", "chat_id": chat_id, "client_msg_id": i, "text": f"question {i}"})
            named, frames = _answers(client, [i])
            if named.get(i, {}).get("type") == "ack":
                break
            assert frames or named[i].get("code") == "reply_in_progress", named
    _wait_idle(client, stack, chat_id)
    messages = stack.store.messages(chat_id)
    users = [m.client_msg_id for m in messages if m.role == "user"]
    assert sorted(users) == sorted(set(users)) and set(throttled) <= set(users)
    assert messages[-1].role == "assistant"  # the last retry answered
    client.ws.send(json.dumps({"action": "ping"}))  # the socket stayed open throughout
    assert client.until("pong") == {"type": "pong"}
    client.close()


def _wait_idle(client: Client, stack, chat_id: str) -> None:
    """Until the chat's last message is a stored reply (read off the socket: each reply ends in `message`)."""
    deadline = time.monotonic() + PATIENCE
    while stack.store.messages(chat_id)[-1].role != "assistant":
        assert time.monotonic() < deadline, "no reply came"
        client.until("message")
