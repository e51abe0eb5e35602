"""The workers' lean pusher reads the emulator's answers as boto3 would: 200, 410 Gone, 413, 5xx."""

from __future__ import annotations

import collections
import json

import pytest

from local_gateway.http_push import HttpPusher
from local_gateway.management_api import MAX_DATA, RecordingRegistry, management_app
from ws_handlers.push import ConnectionGone, PushFailed

from local_gateway.threaded import serve_in_thread


def test_delivers_gone_too_large_and_failures():
    registry = RecordingRegistry()
    registry.open("a/b+c=")  # ids with characters that must be percent-encoded
    faults: collections.deque[int] = collections.deque()
    with serve_in_thread(management_app(registry, stage="local", faults=faults)) as served:
        pusher = HttpPusher(f"{served.url}/local")
        pusher.send("a/b+c=", {"type": "delta", "text": "héllo"})
        assert [json.loads(p) for p in registry.posts("a/b+c=")] == [{"type": "delta", "text": "héllo"}]

        with pytest.raises(PushFailed, match="413"):
            pusher.send("a/b+c=", {"type": "delta", "text": "x" * MAX_DATA})
        faults.append(500)
        with pytest.raises(PushFailed, match="500"):
            pusher.send("a/b+c=", {"type": "delta", "text": "x"})
        assert len(registry.posts("a/b+c=")) == 1

        registry.mark_gone("a/b+c=")
        with pytest.raises(ConnectionGone):
            pusher.send("a/b+c=", {"type": "delta", "text": "late"})
    with pytest.raises(PushFailed):  # nobody listening any more
        pusher.send("a/b+c=", {"type": "delta", "text": "?"})
