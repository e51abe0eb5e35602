"""The in-process pusher keeps the Management API's answers (delivered, 410 Gone, 413), the order of
each connection's frames, and waits for the gateway only when a connection has too much unanswered."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from local_gateway.direct_push import DirectPusher
from local_gateway.management_api import MAX_DATA, RecordingRegistry
from ws_handlers.push import ConnectionGone, PushFailed


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(60)
    loop.close()


def test_delivers_gone_and_too_large(loop):
    registry = RecordingRegistry()
    registry.open("c1")
    pusher = DirectPusher(registry, loop)

    pusher.send("c1", {"type": "delta", "text": "héllo"})
    _until(lambda: registry.posts("c1"))
    assert [json.loads(p) for p in registry.posts("c1")] == [{"type": "delta", "text": "héllo"}]

    with pytest.raises(PushFailed, match="413"):
        pusher.send("c1", {"type": "delta", "text": "x" * MAX_DATA})
    assert len(registry.posts("c1")) == 1  # nothing half-sent

    registry.mark_gone("c1")
    with pytest.raises(ConnectionGone):
        pusher.send("c1", {"type": "delta", "text": "late"})
    with pytest.raises(ConnectionGone):
        pusher.send("never-connected", {"type": "delta", "text": "?"})


class HeldRegistry(RecordingRegistry):
    """A registry whose socket takes nothing until the test lets it: a client that does not read."""

    def __init__(self, loop) -> None:
        super().__init__()
        self.room = asyncio.Event()
        self._in_order = asyncio.Lock()
        self._loop = loop
        self._arrived = 0

    def queued_sends(self) -> int:
        """Frames the loop has handed to this registry so far (waiting for room, or taken)."""
        return self._arrived

    def give_room(self) -> None:
        self._loop.call_soon_threadsafe(self.room.set)

    async def send(self, connection_id: str, data: bytes) -> bool:
        self._arrived += 1
        async with self._in_order:  # first come, first served, as the gateway's outbox (its lock)
            await self.room.wait()
            return await super().send(connection_id, data)


def test_a_push_returns_before_the_loop_delivers_and_frames_keep_their_order(loop):
    registry = HeldRegistry(loop)
    registry.open("c1")
    pusher = DirectPusher(registry, loop, ahead=10_000)
    for n in range(20):  # ~40 bytes each: all queued at once, although the socket takes nothing yet
        pusher.send("c1", {"type": "delta", "index": n})
    assert registry.posts("c1") == []

    registry.give_room()
    _until(lambda: len(registry.posts("c1")) == 20)
    assert [json.loads(p)["index"] for p in registry.posts("c1")] == list(range(20))


def test_a_push_beyond_the_bytes_ahead_waits_for_the_gateway_and_learns_it_is_gone(loop):
    """Backpressure: a connection with `ahead` bytes unanswered makes the next push wait for its answer."""
    registry = HeldRegistry(loop)
    registry.open("c1")
    pusher = DirectPusher(registry, loop, ahead=100)
    pusher.send("c1", {"type": "delta", "text": "a" * 60})  # nothing unanswered: at once
    outcome: list[object] = []
    waiting = threading.Thread(target=lambda: outcome.append(_attempt(pusher, {"type": "delta", "text": "b" * 60})))
    waiting.start()
    _until(lambda: registry.queued_sends() == 2)  # both frames are with the loop; the second push waits
    assert not outcome
    registry.mark_gone("c1")  # the socket closes before it took either frame
    registry.give_room()
    waiting.join(60)
    assert outcome == [ConnectionGone]
    with pytest.raises(ConnectionGone):  # and from now on at once, without the loop
        pusher.send("c1", {"type": "delta", "text": "c"})


def _attempt(pusher: DirectPusher, frame: dict) -> object:
    try:
        pusher.send("c1", frame)
    except Exception as exc:  # noqa: BLE001 - the test looks at which
        return type(exc)
    return "delivered"


def _until(condition, timeout: float = 60.0) -> None:
    """Wait for `condition()` (a bound, not a pace)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)
