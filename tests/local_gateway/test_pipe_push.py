"""A worker process's pushes over its pipe get the in-process pusher's answers (delivered, 410 Gone,
413), in order, wait only for a socket far behind, and fail (never hang) when the stack is gone.
Once a socket has taken a frame, pushes to it are not answered until the stack says to ask again
(it closed, or was found closed or far behind): 410 then comes from the next push, as a reply needs
to follow the participant. The worker's end runs on threads of this process here: a pipe is the
same between processes, and the stack's tests with worker processes (test_stack_e2e.py) push
across real ones."""

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


def _relayed(loop, registry, timeout: float = 5.0, ahead: int = 64 * 1024, relay: list | None = None):  # noqa: F811
    stack_end, worker_end = multiprocessing.Pipe()
    relayed = PushRelay(DirectPusher(registry, loop, ahead=ahead), loop)
    relayed.serve(stack_end)
    if relay is not None:
        relay.append(relayed)
    return PipePusher(worker_end, timeout), stack_end


def _pushes_until_gone(pusher: PipePusher, connection_id: str, most: int = 2000) -> int:
    """Push to a socket that went until a push answers 410; how many did not (bounded)."""
    for n in range(most):
        try:
            pusher.send(connection_id, {"type": "delta", "text": "late"})
        except ConnectionGone:
            return n
        time.sleep(0.005)
    raise AssertionError(f"{most} pushes and no 410")


def test_delivers_in_order_and_answers_gone_and_too_large(loop):  # noqa: F811
    registry, relay = RecordingRegistry(), []
    registry.open("c1")
    pusher, _ = _relayed(loop, registry, relay=relay)

    for n in range(50):
        pusher.send("c1", {"type": "delta", "index": n, "text": "héllo"})
    _until(lambda: len(registry.posts("c1")) == 50)
    assert [json.loads(p)["index"] for p in registry.posts("c1")] == list(range(50))

    with pytest.raises(PushFailed, match="413"):
        pusher.send("c1", {"type": "delta", "text": "x" * MAX_DATA})
    registry.mark_gone("c1")
    loop.call_soon_threadsafe(relay[0].gone, "c1")  # as the gateway tells the relay of a closed socket
    _pushes_until_gone(pusher, "c1")
    with pytest.raises(ConnectionGone):  # and from then on
        pusher.send("c1", {"type": "delta", "text": "later"})
    with pytest.raises(ConnectionGone):
        pusher.send("never-connected", {"type": "delta", "text": "?"})
    assert len(registry.posts("c1")) == 50  # nothing half-sent, nothing after it went


def test_a_socket_found_closed_by_a_push_that_wanted_no_answer_answers_410_soon_after(loop):  # noqa: F811
    """Nobody told the relay (a socket whose outbox stopped taking frames): the unanswered push that
    finds it closed makes the next one ask, and that one answers 410."""
    registry = RecordingRegistry()
    registry.open("c1")
    pusher, _ = _relayed(loop, registry)
    pusher.send("c1", {"type": "delta", "text": "first"})  # answered: the socket takes frames
    _until(lambda: registry.posts("c1"))  # delivered (the answer says queued: a busy loop delivers it later)
    registry.mark_gone("c1")
    assert _pushes_until_gone(pusher, "c1") >= 1  # the first after it went is the one that finds out
    assert [json.loads(p)["text"] for p in registry.posts("c1")] == ["first"]


def test_once_a_socket_took_a_frame_pushes_do_not_wait_for_a_busy_loop(loop):  # noqa: F811
    """The point of pushes without an answer: a worker's reply thread goes back to its stream while
    the gateway's loop is busy, instead of waiting for the loop to answer every delta."""
    registry = RecordingRegistry()
    registry.open("c1")
    registry.open("c2")
    pusher, _ = _relayed(loop, registry)
    pusher.send("c1", {"type": "delta", "index": 0})
    busy, freed = threading.Event(), threading.Event()
    loop.call_soon_threadsafe(lambda: (busy.set(), freed.wait(60)))  # the loop is held
    busy.wait(60)
    try:
        for n in range(1, 20):
            pusher.send("c1", {"type": "delta", "index": n})  # returns though the loop cannot answer
        first_to_c2 = threading.Thread(target=pusher.send, args=("c2", {"type": "delta", "index": 0}))
        first_to_c2.start()
        first_to_c2.join(0.2)
        assert first_to_c2.is_alive()  # a socket's first push waits for the stack's answer
    finally:
        freed.set()
    first_to_c2.join(60)
    _until(lambda: len(registry.posts("c1")) == 20 and len(registry.posts("c2")) == 1)
    assert [json.loads(p)["index"] for p in registry.posts("c1")] == list(range(20))


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
    # 160 bytes unanswered by the gateway: the relay tells the worker to ask again, and the push
    # after that waits for room, up to its timeout
    for _ in range(2000):
        started = time.monotonic()
        try:
            pusher.send("c1", {"type": "delta", "text": "b" * 80})
        except PushFailed as exc:
            assert "timed out" in str(exc)
            break
        time.sleep(0.005)
    else:
        raise AssertionError("no push waited for the socket far behind")
    assert time.monotonic() - started >= 0.5

    waiting = threading.Thread(target=pusher.send, args=("c1", {"type": "delta", "text": "c"}))
    waiting.start()
    registry.give_room()  # the client reads: everything is written, and the waiting push returns
    waiting.join(60)
    assert not waiting.is_alive()
    _until(lambda: registry.queued_sends() == len(registry.posts("c1")))
    assert [json.loads(p)["text"][0] for p in registry.posts("c1")][0] == "a"  # nothing lost, in order


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
