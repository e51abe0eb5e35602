"""A worker process's pushes over its pipe get the in-process pusher's answers (delivered, 410 Gone,
413), in order, wait only for a socket far behind, and fail (never hang) when the stack is gone.
The worker's end runs on threads of this process here: a pipe is the same between processes, and
the stack's tests with worker processes (test_stack_e2e.py) push across real ones."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time

import pytest

from local_gateway.direct_push import DirectPusher
from local_gateway.management_api import MAX_DATA, RecordingRegistry
from local_gateway.pipe_push import PipePusher, PushRelay
from ws_handlers.push import ConnectionGone, PushFailed

from test_direct_push import HeldRegistry, _until, loop  # noqa: F401  (the loop fixture)


def _relayed(loop, registry, timeout: float = 5.0, ahead: int = 64 * 1024):  # noqa: F811
    stack_end, worker_end = multiprocessing.Pipe()
    PushRelay(DirectPusher(registry, loop, ahead=ahead), loop).serve(stack_end)
    return PipePusher(worker_end, timeout), stack_end


def test_delivers_in_order_and_answers_gone_and_too_large(loop):  # noqa: F811
    registry = RecordingRegistry()
    registry.open("c1")
    pusher, _ = _relayed(loop, registry)

    for n in range(50):
        pusher.send("c1", {"type": "delta", "index": n, "text": "héllo"})
    _until(lambda: len(registry.posts("c1")) == 50)
    assert [json.loads(p)["index"] for p in registry.posts("c1")] == list(range(50))

    with pytest.raises(PushFailed, match="413"):
        pusher.send("c1", {"type": "delta", "text": "x" * MAX_DATA})
    registry.mark_gone("c1")
    with pytest.raises(ConnectionGone):
        pusher.send("c1", {"type": "delta", "text": "late"})
    with pytest.raises(ConnectionGone):
        pusher.send("never-connected", {"type": "delta", "text": "?"})
    assert len(registry.posts("c1")) == 50  # nothing half-sent


def test_threads_of_a_worker_push_side_by_side(loop):  # noqa: F811
    registry = RecordingRegistry()
    for c in ("a", "b", "c", "d"):
        registry.open(c)
    pusher, _ = _relayed(loop, registry)
    failed: list[BaseException] = []

    def stream(connection: str) -> None:
        try:
            for n in range(100):
                pusher.send(connection, {"type": "delta", "index": n})
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=stream, args=(c,)) for c in ("a", "b", "c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failed == []
    _until(lambda: all(len(registry.posts(c)) == 100 for c in "abcd"))
    assert all([json.loads(p)["index"] for p in registry.posts(c)] == list(range(100)) for c in "abcd")


def test_a_push_to_a_socket_far_behind_waits_for_the_gateway_then_times_out(loop):  # noqa: F811
    registry = HeldRegistry(loop)
    registry.open("c1")
    pusher, _ = _relayed(loop, registry, timeout=0.5, ahead=100)
    pusher.send("c1", {"type": "delta", "text": "a" * 80})  # queued at once: nothing unanswered yet
    started = time.monotonic()
    with pytest.raises(PushFailed, match="timed out"):
        pusher.send("c1", {"type": "delta", "text": "b" * 80})  # 160 bytes unanswered: waits
    assert time.monotonic() - started >= 0.5

    waiting = threading.Thread(target=pusher.send, args=("c1", {"type": "delta", "text": "c"}))
    waiting.start()
    registry.give_room()  # the client reads: everything is written, and the waiting push returns
    waiting.join(60)
    assert not waiting.is_alive()
    _until(lambda: len(registry.posts("c1")) == 3)


def test_when_the_stack_is_gone_a_push_fails_at_once(loop):  # noqa: F811
    registry = RecordingRegistry()
    registry.open("c1")
    pusher, stack_end = _relayed(loop, registry, timeout=30)
    pusher.send("c1", {"type": "delta", "text": "first"})
    loop.call_soon_threadsafe(lambda: (loop.remove_reader(stack_end.fileno()), stack_end.close()))
    _until(lambda: stack_end.closed)
    with pytest.raises(PushFailed) as failed:
        pusher.send("c1", {"type": "delta", "text": "second"})
    assert "timed out" not in str(failed.value)  # the pipe's end said so, not the push's timeout
