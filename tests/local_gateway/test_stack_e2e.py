"""The local stack end to end, over real sockets on loopback, on both stores."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import random
import signal
import time
import uuid
from urllib.parse import quote

import boto3
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from local_gateway.demo_bots import BOTS
from local_gateway.gateway import GatewayLimits
from local_gateway.stack import StackConfig, running
from waiting import PATIENCE, Hold, wait_for
from ws_handlers.tickets import Identity, mint_ticket, mint_token

ORIGIN = "http://localhost:8000"


def _config(tmp_path, store="sqlite", **kw) -> StackConfig:
    """A stack on free ports whose reply queue delivers every job twice, as SQS may."""
    return StackConfig(
        port=0, management_port=0, model_port=0, entry_port=0, demo_port=0, data_dir=tmp_path, store=store,
        model_ttft=kw.pop("ttft", 0.0), model_tokens_per_second=kw.pop("tps", 0.0),
        duplicate_deliveries=kw.pop("duplicate_deliveries", 1.0), **kw,
    )


# The defaults (SQLite, functions on threads pushing in process), and closer to AWS: moto's
# DynamoDB, every push over HTTP through boto3 to the Management API emulator.
@pytest.fixture(params=[("sqlite", "direct"), ("dynamodb", "management_api")], ids=["sqlite", "dynamodb"])
def stack(request, tmp_path):
    store, push = request.param
    with running(_config(tmp_path, store, push=push)) as s:
        yield s


def _hold(stack) -> Hold:
    """The stack's model keeps stalls of Hold.SECONDS until the test releases them (or the stack stops)."""
    held = Hold()
    stack.model.sleep = held.sleep
    return held


def credentials(stack, participant="P1", chat_key="main", bot="tutor"):
    who = Identity(participant, "exp", "sess")
    url = f"{stack.urls['websocket']}?token={quote(mint_token(stack.secret, who))}"
    return url, mint_ticket(stack.secret, who, chat_key, BOTS[bot])


class Client:
    """A participant's socket, with the merge a real client does: by seq, deltas by offset."""

    def __init__(self, url: str):
        self.ws = connect(url, origin=ORIGIN, open_timeout=PATIENCE, close_timeout=2).__enter__()
        self.frames: list[dict] = []

    def send(self, frame: dict) -> None:
        self.ws.send(json.dumps(frame))

    def until(self, kind: str, timeout: float = PATIENCE) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            self.frames.append(frame)
            if frame.get("type") == kind:
                return frame

    def close(self) -> None:
        self.ws.close()


def render(frames: list[dict]) -> dict[int, str]:
    """What the participant's screen shows: one text per seq."""
    shown: dict[int, str] = {}
    for f in frames:
        if f.get("type") in ("chat", "history"):
            shown.update({m["seq"]: m["text"] for m in f["messages"]})
        elif f.get("type") == "message":
            shown[f["seq"]] = f["text"]
        elif f.get("type") == "delta":
            current = shown.get(f["seq"], "")
            if f["offset"] <= len(current):
                shown[f["seq"]] = current[: f["offset"]] + f["text"]
    return shown


def _transcript(stack, chat_id):
    return [(m.seq, m.role) for m in stack.store.messages(chat_id)]


def test_connect_refused_and_accepted(stack):
    url, _ = credentials(stack)
    for target, origin, status in (
        (stack.urls["websocket"], ORIGIN, 401),  # no token
        (url, "https://evil.example.com", 403),
        (url.replace("/local?", "/prod?"), ORIGIN, 403),  # wrong stage
    ):
        with pytest.raises(InvalidStatus) as refused:
            Client(target) if origin == ORIGIN else connect(target, origin=origin, open_timeout=PATIENCE).__enter__()
        assert refused.value.response.status_code == status
    client = Client(url)
    client.send({"action": "ping"})
    assert client.until("pong") == {"type": "pong"}
    client.close()


def test_start_send_and_a_streamed_reply(stack):
    url, ticket = credentials(stack)
    client = Client(url)
    client.send({"action": "start", "ticket": ticket})
    chat = client.until("chat")
    assert chat["messages"][0]["text"] == BOTS["tutor"].opening_message
    client.send({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "m1", "text": "Can you explain fractions?"})
    final = client.until("message")
    kinds = [f["type"] for f in client.frames]
    assert kinds[:2] == ["chat", "ack"] and kinds[-1] == "message" and "delta" in kinds
    assert render(client.frames)[final["seq"]] == final["text"]
    assert "Ada" in final["text"]  # the offline model speaks in the bot's voice
    assert _transcript(stack, chat["chat_id"]) == [(1, "assistant"), (2, "user"), (3, "assistant")]
    client.close()


def test_unknown_actions_reach_default_and_bad_frames_get_errors(stack):
    url, _ = credentials(stack)
    client = Client(url)
    client.send({"action": "dance"})
    assert client.until("error")["code"] == "unknown_action"
    client.ws.send("not json")
    assert client.until("error")["code"] == "bad_frame"
    client.ws.send(b"\x00\x01binary")  # API Gateway accepts text frames only
    with pytest.raises(ConnectionClosed) as closed:
        client.until("never")
    assert closed.value.rcvd.code == 1003


def _nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "0" + "}" * depth


#: Frames under 32 KB that nest deep (the gateway's route selection could not parse them and
#: the gateway answered nothing), or spread wide; each with the answer the protocol documents.
ODD_SHAPES = [
    *((_nested(depth, "array"), "bad_frame") for depth in (1_000, 5_000, 10_000)),
    *((_nested(depth, "object"), "bad_frame") for depth in (1_000, 5_000)),
    ('{"action":"ping","x":%s}' % _nested(5_000, "array"), "bad_frame"),  # unparseable: $default, not ping
    ('{"action":"send","x":%s}' % _nested(100, "object"), "bad_frame"),  # parseable, routed to send: too deep
    ("[%s]" % ",".join(["0"] * 10_000), "bad_frame"),  # wide, but not an object
    ("{%s}" % ",".join(f'"k{i}":0' for i in range(2_000)), "unknown_action"),
    ('{"action":"dance","x":[%s]}' % ",".join(["[]"] * 5_000), "unknown_action"),
    ('{"action":"ping","x":[%s]}' % ",".join(["0"] * 10_000), "pong"),  # API Gateway's own answer
]


def test_deep_and_wide_frames_get_their_documented_answer_and_the_socket_stays_open(tmp_path):
    with running(_config(tmp_path, environment={"RATE_LIMIT_FRAMES": "1000"})) as stack:
        url, _ = credentials(stack)
        client = Client(url)
        for body, answer in ODD_SHAPES:
            assert len(body.encode()) <= 32 * 1024
            client.ws.send(body)
            frame = json.loads(client.ws.recv(timeout=PATIENCE))
            assert frame.get("code", frame["type"]) == answer, body[:40]
            assert "Traceback" not in frame.get("message", "")
        client.send({"action": "ping"})
        assert client.until("pong") == {"type": "pong"}
        client.close()


def test_a_flood_of_malformed_and_unknown_frames_is_rate_limited(tmp_path):
    limit = {"RATE_LIMIT_FRAMES": "5", "RATE_LIMIT_WINDOW_SECONDS": "3600"}
    with running(_config(tmp_path, environment=limit)) as stack:
        url, _ = credentials(stack)
        client = Client(url)
        for body in ["not json", '{"action":"dance"}', _nested(5_000, "array")] * 4:
            client.ws.send(body)
        codes = [json.loads(client.ws.recv(timeout=PATIENCE))["code"] for _ in range(12)]  # answered in any order
        assert sorted(codes).count("rate_limited") == 7 and set(codes) == {"bad_frame", "unknown_action", "rate_limited"}
        client.close()


async def _until(ws, kind: str) -> dict:
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), PATIENCE)))["type"] != kind:
        pass
    return frame


def test_a_ping_flood_is_answered_by_the_gateway_and_holds_up_nobody(tmp_path):
    """API Gateway answers pings itself (a MOCK integration), so a flood from one socket runs no
    function: another participant connects, starts and gets a reply while it goes on. The flood
    (bursts of BURST pings, each burst's pongs read before the next) stops when the other
    participant is done, or after CAP pings, which would mean the others waited behind it.
    Afterwards the flooding socket's own rate limit is untouched: no ping reached the message
    function, which counts every frame it gets. The stage's route throttle is lifted out of the
    way (it would answer most pings "Too Many Requests"; test_gateway_throttle.py covers it)."""
    burst, cap, ping = 1_000, 200_000, json.dumps({"action": "ping"})
    limit = {"RATE_LIMIT_FRAMES": "20", "RATE_LIMIT_WINDOW_SECONDS": "3600"}
    unthrottled = {"ThrottlingRateLimit": "1000000000", "ThrottlingBurstLimit": "1000000000"}
    with running(_config(tmp_path, environment=limit, parameters=unthrottled)) as stack:
        invoked: collections.Counter[str] = collections.Counter()
        invoke = stack.gateway.invoke

        async def counted(function: str, event: dict) -> object:  # Lambda's view: every invocation, by route
            invoked[event["requestContext"]["routeKey"]] += 1
            return await invoke(function, event)

        stack.gateway.invoke = counted
        (flood_url, flood_ticket), (other_url, other_ticket) = credentials(stack, "P1"), credentials(stack, "P2")

        async def scenario() -> tuple[int, dict, bool]:
            async with aconnect(flood_url, origin=ORIGIN) as flood:
                done = asyncio.Event()

                async def flooding() -> int:
                    sent = 0
                    while not done.is_set() and sent < cap:
                        for _ in range(burst):
                            await flood.send(ping)
                        for _ in range(burst):
                            assert json.loads(await asyncio.wait_for(flood.recv(), PATIENCE)) == {"type": "pong"}
                        sent += burst
                    return sent

                flooder = asyncio.create_task(flooding())
                async with aconnect(other_url, origin=ORIGIN) as other:
                    await other.send(json.dumps({"action": "start", "ticket": other_ticket}))
                    chat = await _until(other, "chat")
                    await other.send(json.dumps({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "m1",
                                                 "text": "Hello?"}))
                    await _until(other, "message")
                    during_flood = not flooder.done()
                done.set()
                sent = await flooder
                await flood.send(json.dumps({"action": "start", "ticket": flood_ticket}))
                return sent, json.loads(await asyncio.wait_for(flood.recv(), PATIENCE)), during_flood

        sent, answer, during_flood = asyncio.run(scenario())
        assert during_flood and sent < cap, "the other participant waited for the flood"
        assert sent > 20 and invoked["ping"] == 0  # every ping answered by the gateway, far beyond the rate limit
        assert answer["type"] == "chat", answer  # not rate_limited: the pings never reached the function
        assert invoked["start"] == 2 and invoked["send"] == 1


@pytest.mark.parametrize("push, processes", [("direct", 0), ("management_api", 0), ("direct", 2)],
                         ids=["direct", "management_api", "worker_processes"])
def test_reconnect_in_the_middle_of_a_reply_resumes_without_gap_or_duplicate(tmp_path, push, processes):
    config = _config(tmp_path, tps=40, push=push, function_processes=processes)
    with running(config) as stack:  # a reply takes a second or two, once the model goes on
        held = _hold(stack)  # the model stops after a few words until the participant is back
        stack.model.add_faults([{"kind": "stall", "after_tokens": 3, "seconds": Hold.SECONDS}])
        url, ticket = credentials(stack)
        first = Client(url)
        first.send({"action": "start", "ticket": ticket})
        chat = first.until("chat")
        first.send({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "m1", "text": "Tell me about primes"})
        first.until("delta")
        first.close()  # the laptop lid closes mid-reply
        second = Client(url)
        second.frames = list(first.frames)  # the page keeps what it showed
        second.send({"action": "start", "ticket": ticket})
        assert second.until("chat")["replying"] == 3  # back while the reply is being written
        held.release()
        final = second.until("message")
        for socket_frames in (first.frames, second.frames[len(first.frames):]):  # each socket counts from 0
            indexes = [f["index"] for f in socket_frames if f["type"] == "delta"]
            assert indexes == list(range(len(indexes)))
        shown = render(second.frames)
        assert shown[final["seq"]] == final["text"]
        stored = {m.seq: m.text for m in stack.store.messages(chat["chat_id"])}
        assert shown == stored  # nothing missing, nothing twice
        second.close()


def _reply_workers() -> set[int]:
    """The stack's live reply worker processes (spawned children of this test's process)."""
    from pathlib import Path

    from load_tests.local import processes

    def worker(pid: int) -> bool:
        try:  # a killed worker not yet reaped has an empty command line
            return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    return {pid for pid in processes(os.getpid()) if worker(pid)}


def test_a_killed_reply_worker_is_replaced_and_the_participant_retries(tmp_path):
    """A worker process killed mid-reply (SIGKILL, the OOM killer) used to leave that reply
    silent for ever, and every later message acked and never answered. Now a new worker takes
    its place, the participant is told (`internal`, retryable, for the reply's seq) instead of
    waiting, the retry of the same message gets its reply, and the queue's redelivery of the
    killed job (as SQS's after the visibility timeout) writes nothing twice."""
    config = _config(tmp_path, tps=40, function_processes=1, queue_visibility_timeout=0.2)
    with running(config) as stack:  # every job delivered twice: both copies may die with the worker
        held = _hold(stack)  # the model stops after a few words: the worker is killed mid-reply
        stack.model.add_faults([{"kind": "stall", "after_tokens": 2, "seconds": Hold.SECONDS}])
        (queue,) = stack.queues.values()
        url, ticket = credentials(stack)
        client = Client(url)
        client.send({"action": "start", "ticket": ticket})
        chat_id = client.until("chat")["chat_id"]
        send = {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Tell me about primes"}
        client.send(send)
        client.until("delta")
        (killed,) = _reply_workers()
        os.kill(killed, signal.SIGKILL)  # a process this test started, by its PID
        error = client.until("error")
        assert (error["code"], error["retryable"], error["seq"], error["client_msg_id"]) == ("internal", True, 3, "m1")
        held.release()
        assert wait_for(lambda: _reply_workers() - {killed}), "no new worker took the killed one's place"
        assert len(_reply_workers() - {killed}) == 1
        client.send(send)  # the retry the error asks for
        assert client.until("ack")["duplicate"] is True
        retried = client.until("message")
        client.send({**send, "client_msg_id": "m2", "text": "And after that?"})  # a later message is answered
        later = client.until("message")
        assert queue.wait_idle(PATIENCE) and queue.stats.redelivered >= 1  # the killed job came back, and did nothing
        stored = {m.seq: (m.role, m.text) for m in stack.store.messages(chat_id)}
        assert sorted(stored) == [1, 2, 3, 4, 5] and [r for r, _ in stored.values()] == [
            "assistant", "user", "assistant", "user", "assistant"]
        assert (stored[3][1], stored[5][1]) == (retried["text"], later["text"])
        client.close()


def test_410_for_unknown_and_closed_connections(stack):
    mgmt = boto3.client(
        "apigatewaymanagementapi", endpoint_url=stack.urls["management"], region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="x",
    )
    url, _ = credentials(stack)
    client = Client(url)
    assert wait_for(lambda: stack.gateway.sockets)  # registered just after the handshake's answer
    [connection_id] = list(stack.gateway.sockets)
    mgmt.post_to_connection(ConnectionId=connection_id, Data=b'{"type":"hello"}')
    assert client.until("hello") == {"type": "hello"}
    assert mgmt.get_connection(ConnectionId=connection_id)["Identity"]["SourceIp"] == "127.0.0.1"
    forgotten: list[str] = []
    stack.gateway.on_forget.append(forgotten.append)  # as the reply workers' relay listens (pipe_push.py)
    client.close()
    assert wait_for(lambda: connection_id not in stack.gateway.sockets)
    assert forgotten == [connection_id]  # told once, by the time pushes answer 410
    for cid in (connection_id, "bm90LWEtY29ubmVjdGlvbg="):
        with pytest.raises(mgmt.exceptions.GoneException):
            mgmt.post_to_connection(ConnectionId=cid, Data=b"{}")


@pytest.mark.parametrize("size", [129 * 1024, 40 * 1024])  # over the message limit; one frame over 32 KB
def test_oversized_messages_and_frames_close_with_1009(stack, size):
    url, _ = credentials(stack)
    client = Client(url)
    client.ws.send("x" * size)
    with pytest.raises(ConnectionClosed) as closed:
        client.until("never")
    assert closed.value.rcvd.code == 1009


def test_a_large_message_in_small_frames_passes_the_gateway_and_the_service_refuses_it(stack):
    """Frames under 32 KB make a message of up to 128 KB at the gateway; the service parses
    only what one frame can carry (a browser sends each message as one frame)."""
    url, _ = credentials(stack)
    client = Client(url)
    for size, code in ((30_000, "unknown_action"), (60_000, "frame_too_large")):  # parsed; refused unread
        text = json.dumps({"action": "dance", "pad": "y" * size})
        client.ws.send([text[i : i + 16_000] for i in range(0, len(text), 16_000)])  # fragments under 32 KB
        frame = client.until("error")
        assert frame["code"] == code
    assert frame["retryable"] is False
    client.send({"action": "ping"})  # the socket stays open
    assert client.until("pong") == {"type": "pong"}
    client.close()


def test_a_ticket_for_a_long_cjk_prompt_fits_in_one_frame_and_the_socket_stays_open(stack):
    """Ten thousand CJK characters were 60 KB of \\u escapes in the ticket: the gateway closed the socket."""
    rng = random.Random(5)
    prompt = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(10_000))
    who = Identity("P1", "exp", "sess")
    url = f"{stack.urls['websocket']}?token={quote(mint_token(stack.secret, who))}"
    ticket = mint_ticket(stack.secret, who, "main", dataclasses.replace(BOTS["tutor"], system_prompt=prompt))
    client = Client(url)
    client.send({"action": "start", "ticket": ticket})
    chat = client.until("chat")
    assert stack.store.get_chat(chat["chat_id"]).bot.system_prompt == prompt
    client.send({"action": "ping"})
    assert client.until("pong") == {"type": "pong"}
    client.close()


def test_idle_timeout_and_heartbeat(tmp_path):
    with running(_config(tmp_path, limits=GatewayLimits(idle_timeout=3.0))) as stack:
        url, _ = credentials(stack)
        idle, busy = Client(url), Client(url)  # opened together
        deadline = time.monotonic() + PATIENCE
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() < deadline:  # the busy one pings far more often than the timeout until the idle one is closed
                busy.send({"action": "ping"})
                busy.until("pong")
                try:
                    idle.ws.recv(timeout=0.2)
                except TimeoutError:
                    pass
        assert closed.value.rcvd.code == 1001
        busy.send({"action": "ping"})  # the busy one outlived it
        assert busy.until("pong")
        busy.close()


def test_a_restart_loses_no_chat_or_message(tmp_path):
    with running(_config(tmp_path)) as stack:
        url, ticket = credentials(stack)
        client = Client(url)
        client.send({"action": "start", "ticket": ticket})
        chat_id = client.until("chat")["chat_id"]
        client.send({"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Remember me"})
        before = client.until("message")
        client.close()
    with running(_config(tmp_path)) as stack:  # same data dir, same dev secret
        url, ticket = credentials(stack)
        client = Client(url)
        client.send({"action": "start", "ticket": ticket})
        chat = client.until("chat")
        assert chat["chat_id"] == chat_id
        assert [m["text"] for m in chat["messages"]][-2:] == ["Remember me", before["text"]]
        client.send({"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Remember me"})
        assert client.until("ack")["duplicate"] is True  # idempotency survives the restart too
        client.close()


# On DynamoDB (strict emulation, every job delivered twice) the same holds for forty participants
# sending at once: tests/load_tests/test_load_burst.py.
@pytest.fixture(params=[("sqlite", "direct", 0), ("sqlite", "direct", 2)], ids=["sqlite", "worker_processes"])
def busy_stack(request, tmp_path):
    store, push, processes = request.param
    # ten reply slots for fifty participants: most replies wait in the queue
    config = _config(tmp_path, store, push=push, function_processes=processes, parameters={"LlmConcurrency": "10"})
    with running(config) as s:
        yield s


def test_fifty_participants_at_once_every_message_stored_exactly_once(busy_stack):
    stack, participants, messages = busy_stack, 50, 2

    async def participant(n: int) -> tuple[str, list[str]]:
        url, ticket = credentials(stack, participant=f"P{n}")
        replies: list[str] = []
        async with aconnect(url, origin=ORIGIN, open_timeout=PATIENCE) as ws:
            await ws.send(json.dumps({"action": "start", "ticket": ticket}))
            chat_id = await _await_type(ws, "chat")
            for i in range(messages):
                frame = {"action": "send", "chat_id": chat_id["chat_id"], "client_msg_id": uuid.uuid4().hex,
                         "text": f"Message {i} from participant {n}"}
                await ws.send(json.dumps(frame))
                replies.append((await _await_type(ws, "message"))["text"])
        return chat_id["chat_id"], replies

    async def everyone():
        return await asyncio.wait_for(asyncio.gather(*(participant(n) for n in range(participants))), 120)

    results = asyncio.run(everyone())
    assert len({chat_id for chat_id, _ in results}) == participants
    for chat_id, replies in results:
        stored = stack.store.messages(chat_id)
        assert [m.seq for m in stored] == list(range(1, 2 + 2 * messages))  # opening + 2 turns, no gap
        assert [m.role for m in stored[1:]] == ["user", "assistant"] * messages
        assert [m.text for m in stored if m.role == "assistant"][1:] == replies
    # every job came twice, yet each reply was generated once
    (queue,) = stack.queues.values()
    assert queue.stats.sent == participants * messages and queue.stats.delivered == 2 * queue.stats.sent
    assert stack.model.stats["requests"] == participants * messages
    assert queue.stats.max_waiting > 0 and not queue.dead_letters


async def _await_type(ws, kind: str) -> dict:
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == kind:
            return frame
        if frame.get("type") == "error":
            raise AssertionError(frame)


def test_the_maximum_connection_duration_closes_even_a_busy_socket(tmp_path):
    with running(_config(tmp_path, limits=GatewayLimits(idle_timeout=60, max_lifetime=0.8))) as stack:
        url, _ = credentials(stack)
        client = Client(url)
        deadline = time.monotonic() + PATIENCE
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() < deadline:  # active all along: only the 2-hour cap (here 0.8 s) applies
                client.send({"action": "ping"})
                client.until("pong")
                time.sleep(0.1)
        assert closed.value.rcvd.code == 1001


def test_any_openai_compatible_server_through_its_base_url(tmp_path):
    """OPENAI_BASE_URL: the stack starts no offline model and talks to the given server."""
    from local_gateway.offline_model import OfflineModel
    from local_gateway.threaded import serve_in_thread

    external = OfflineModel(ttft=0, tokens_per_second=0, api_key="compat-key")
    with serve_in_thread(external.app()) as served:
        config = _config(tmp_path, openai_base_url=served.url + "/v1", openai_api_key="compat-key")
        with running(config) as stack:
            assert stack.model is None
            url, ticket = credentials(stack)
            client = Client(url)
            client.send({"action": "start", "ticket": ticket})
            chat = client.until("chat")
            client.send({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "m1", "text": "Hello there"})
            assert client.until("message")["role"] == "assistant"
            assert external.stats["completions_finished"] == 1
            client.close()


def test_a_failed_start_leaves_no_process_behind(tmp_path):
    import os
    import socket
    from pathlib import Path

    from load_tests.local import processes

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = set(processes(os.getpid()))
        with pytest.raises(OSError):
            config = StackConfig(port=port, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp_path,
                                 model_process=True, function_processes=1)
            with running(config):
                pass
    def ours(pids):  # multiprocessing's resource tracker lives as long as this process: not the stack's
        return {pid for pid in pids if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()}

    assert ours(processes(os.getpid())) <= before  # the model's and the worker's processes are gone
