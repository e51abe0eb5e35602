"""The in-process pusher keeps the Management API's answers: delivered, 410 Gone, 413."""

from __future__ import annotations

import asyncio
import json
import threading

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
    assert [json.loads(p) for p in registry.posts("c1")] == [{"type": "delta", "text": "héllo"}]

    with pytest.raises(PushFailed, match="413"):
        pusher.send("c1", {"type": "delta", "text": "x" * MAX_DATA})
    assert len(registry.posts("c1")) == 1  # nothing half-sent

    registry.mark_gone("c1")
    with pytest.raises(ConnectionGone):
        pusher.send("c1", {"type": "delta", "text": "late"})
    with pytest.raises(ConnectionGone):
        pusher.send("never-connected", {"type": "delta", "text": "?"})
