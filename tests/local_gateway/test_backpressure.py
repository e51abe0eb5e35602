"""Participants whose client stops reading: their sockets are closed, and nobody else waits.

A page whose tab froze, a laptop that slept with its socket half open, or a hostile client keeps
its socket open and reads nothing. Every frame pushed to it piles up in the gateway. The gateway
bounds each connection's outgoing buffer (`GatewayLimits.max_buffered`) and closes a socket whose buffer
stays full for `GatewayLimits.stall_timeout`; pushes to it are answered 410 from then on, as API
Gateway's Management API answers for a connection it dropped. Real sockets on loopback: the
clients that stop reading are raw TCP sockets with a small receive buffer, speaking WebSocket
through websockets' Sans-I/O protocol, so nothing reads on their behalf.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Origin
from websockets.uri import parse_uri

from local_gateway.gateway import GatewayLimits
from local_gateway.stack import FUNCTION_THREADS, Stack, StackConfig, running
from ws_handlers.bot import Bot
from ws_handlers.bot import Limits
from ws_handlers.tickets import Identity, mint_ticket, mint_token

ORIGIN = "http://localhost:8000"
#: A bot whose chat frames are large (4,000-character opening message and participant messages),
#: so that a few dozen `history` frames fill a socket that is not read.
WORDY = Bot(name="wordy", model="offline", system_prompt="Answer briefly.", max_tokens=60,
            opening_message="Welcome. " * 444, limits=Limits(max_chars=4000))
LONG_TEXT = "Tell me about the weather in spring. " * 108  # 3,996 characters


def _stack_config(tmp_path, push: str, limits: GatewayLimits) -> StackConfig:
    return StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp_path, push=push,
                       model_ttft=0.0, model_tokens_per_second=0.0, limits=limits,
                       environment={"RATE_LIMIT_FRAMES": "10000", "MAX_MESSAGE_CHARS": "4000"})


def _credentials(stack: Stack, participant: str) -> tuple[str, str]:
    who = Identity(participant, "exp", "sess")
    url = f"{stack.urls['websocket']}?token={quote(mint_token(stack.secret, who))}"
    return url, mint_ticket(stack.secret, who, "main", WORDY)


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Wait until `condition()` is true; fail after `timeout` s (a bound, not a pace)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


class NonReader:
    """A client that opens a chat, then sends frames and never reads again."""

    def __init__(self, url: str, ticket: str) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri, origin=Origin(ORIGIN), max_size=None)
        self.sock = socket.socket()
        # Before connect, so the window stays small. Not much smaller: with 4 KB, loopback TCP
        # stalled the client's own sends now and then (its acks were held up), as if the gateway
        # had stopped reading.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.settimeout(60)
        self.sock.connect((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        response = self._next_event()
        assert isinstance(response, Response) and response.status_code == 101, response
        self.send({"action": "start", "ticket": ticket})
        while (frame := self._next_event()).opcode is not Opcode.TEXT or json.loads(frame.data)["type"] != "chat":
            pass
        self.chat_id = json.loads(frame.data)["chat_id"]  # the last frame this client reads until it is closed

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _next_event(self) -> Response | Frame:
        while not (events := self.protocol.events_received()):
            self.protocol.receive_data(self.sock.recv(65536))
        (event, *rest) = events
        assert not rest, rest
        return event

    def send(self, frame: dict) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._flush()

    def send_raw_pings(self, count: int) -> None:
        for _ in range(count):
            self.protocol.send_ping(b"p" * 125)
        self._flush()

    def ended(self) -> bool:
        """Read everything the gateway sent, until the connection ends; False if it stays open."""
        self.sock.settimeout(60)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


async def _participant(url: str, ticket: str) -> tuple[str, str]:
    """An ordinary participant: connects, starts, sends, reads the whole reply."""
    async with connect(url, origin=ORIGIN, open_timeout=60) as ws:
        await ws.send(json.dumps({"action": "start", "ticket": ticket}))
        chat = await _frame(ws, "chat")
        await ws.send(json.dumps({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": uuid.uuid4().hex,
                                  "text": "What is a prime number?"}))
        return chat["chat_id"], (await _frame(ws, "message"))["text"]


async def _frame(ws, kind: str) -> dict:
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != kind:
        assert frame["type"] != "error", frame
    return frame


def _stored(stack: Stack, chat_id: str) -> list[tuple[int, str]]:
    return [(m.seq, m.role) for m in stack.store.messages(chat_id)]


@pytest.mark.parametrize("push", ["direct", "management_api"])
def test_ten_sockets_that_never_read_are_closed_and_the_others_chat_normally(tmp_path, push):
    limits = GatewayLimits(max_buffered=64 * 1024, stall_timeout=2.0)
    with running(_stack_config(tmp_path, push, limits)) as stack:
        stalled = [NonReader(*_credentials(stack, f"S{n}")) for n in range(10)]
        for client in stalled:  # each `history` answer holds both 4,000-character messages
            client.send({"action": "send", "chat_id": client.chat_id, "client_msg_id": "m1", "text": LONG_TEXT})
            for _ in range(60):  # ~0.5 MB each, far beyond the kernel's buffers and the gateway's bound
                client.send({"action": "history", "chat_id": client.chat_id})
        _wait_for(lambda: stack.gateway.stats()["waiting_pushes"], "pushes to wait on a full socket")

        async def others() -> list[tuple[str, str]]:
            return await asyncio.gather(*(_participant(*_credentials(stack, f"P{n}")) for n in range(5)))

        for chat_id, reply in asyncio.run(others()):  # meanwhile: connected, chatted, got the whole reply
            assert reply and _stored(stack, chat_id) == [(1, "assistant"), (2, "user"), (3, "assistant")]

        _wait_for(lambda: stack.gateway.stats()["stalled_closes"] >= 10, "the non-reading sockets to be closed")
        assert all(client.ended() for client in stalled)
        for client in stalled:  # nothing lost: the reply nobody could read was stored
            _wait_for(lambda: len(_stored(stack, client.chat_id)) == 3, "the reply of a non-reading participant")
            assert _stored(stack, client.chat_id) == [(1, "assistant"), (2, "user"), (3, "assistant")]
        stats = stack.gateway.stats()
        assert stats["stalled_closes"] == 10  # only those: no ordinary participant was cut
        assert limits.max_buffered // 2 < stats["peak_buffered"] <= limits.max_buffered
        _wait_for(lambda: not stack.gateway.sockets, "every socket to be gone")


def test_connect_is_served_while_every_message_thread_waits_on_a_full_socket(tmp_path):
    """$connect runs on its own functions' threads: pushes waiting for room cannot starve it."""
    limits = GatewayLimits(max_buffered=64 * 1024, stall_timeout=60.0)  # pushes wait as long as a handshake may
    with running(_stack_config(tmp_path, "direct", limits)) as stack:
        stalled = [NonReader(*_credentials(stack, f"S{n}")) for n in range(4)]
        for client in stalled:
            for _ in range(60 + FUNCTION_THREADS // 4):
                client.send({"action": "history", "chat_id": client.chat_id})
        _wait_for(lambda: stack.gateway.stats()["waiting_pushes"] >= FUNCTION_THREADS,
                  "every thread of the message function to wait on a full socket")

        async def newcomer() -> None:
            url, _ = _credentials(stack, "P1")
            async with connect(url, origin=ORIGIN, open_timeout=60):
                pass

        asyncio.run(newcomer())
        for client in stalled:  # the clients go away: their pushes end with 410 and free the threads
            client.close()
        _wait_for(lambda: stack.gateway.stats()["waiting_pushes"] == 0, "the waiting pushes to end")


def test_a_client_that_sends_protocol_pings_and_never_reads_is_closed(tmp_path):
    """Pongs are written by websockets itself, outside the gated pushes; the bound holds for them too."""
    limits = GatewayLimits(max_buffered=64 * 1024, stall_timeout=1.0)
    with running(_stack_config(tmp_path, "direct", limits)) as stack:
        client = NonReader(*_credentials(stack, "S1"))
        try:
            for _ in range(100):  # 127-byte pongs; far more than the buffers hold
                client.send_raw_pings(1000)
        except ConnectionResetError:  # the gateway dropped the connection
            pass
        _wait_for(lambda: stack.gateway.stats()["stalled_closes"] == 1, "the pinging socket to be closed")
        assert client.ended()
        # over the bound by at most the pongs to one read of pings (asyncio reads 256 KiB at a time)
        assert stack.gateway.stats()["peak_buffered"] <= limits.max_buffered + 256 * 1024
