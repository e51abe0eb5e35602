"""The local reply queue keeps SQS's and the event source mapping's semantics: a cap without
throttling, about first-in-first-out, at-least-once delivery, redelivery after the visibility
timeout, dead letters, retention."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from local_gateway.sqs_queue import LocalQueue
from local_gateway.thread_runner import ThreadRunner
from waiting import Clock


class Recorder:
    """A handler that records each invocation's record and can hold invocations until released."""

    def __init__(self, fail: set[str] | None = None, hold: bool = False) -> None:
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail = fail or set()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.arrived = threading.Semaphore(0)

    def __call__(self, event: dict[str, Any], _context: Any) -> None:
        (record,) = event["Records"]
        with self.lock:
            self.records.append(record)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.arrived.release()
        try:
            assert self.release.wait(60)
            if record["body"] in self.fail:
                raise RuntimeError(f"failing {record['body']}")
        finally:
            with self.lock:
                self.running -= 1

    def bodies(self) -> list[str]:
        with self.lock:
            return [r["body"] for r in self.records]


def _queue(handler: Recorder, **options: Any) -> LocalQueue:
    options = {"concurrency": 2, "visibility_timeout": 0.05, "max_receive_count": 3} | options
    return LocalQueue(ThreadRunner(handler, threads=options["concurrency"]), **options)


def test_at_most_the_cap_run_at_once_and_the_rest_wait_in_arrival_order():
    handler = Recorder(hold=True)
    queue = _queue(handler, concurrency=2)
    try:
        for i in range(8):
            queue.send(f"job-{i}")
        for _ in range(2):
            assert handler.arrived.acquire(timeout=60)
        assert queue.waiting == 6  # waiting for a slot, not throttled and retried
        handler.release.set()
        assert queue.wait_idle(60)
        started = handler.bodies()  # in the order the handlers began: two threads may swap neighbours
        assert sorted(started) == [f"job-{i}" for i in range(8)]
        assert all(abs(started.index(f"job-{i}") - i) <= 1 for i in range(8)), started
        assert handler.most_at_once == 2
        assert queue.stats.max_waiting >= 6 and len(queue.stats.waits) == 8
    finally:
        queue.shutdown()


def test_the_event_is_shaped_as_sqs_delivers_it():
    handler = Recorder()
    queue = _queue(handler, arn="arn:aws:sqs:us-east-1:000000000000:ReplyQueue")
    try:
        queue.send(json.dumps({"kind": "reply", "chat_id": "c_1"}))
        assert queue.wait_idle(60)
        (record,) = handler.records
        assert json.loads(record["body"]) == {"kind": "reply", "chat_id": "c_1"}
        assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"].endswith(":ReplyQueue")
        assert record["attributes"]["ApproximateReceiveCount"] == "1" and record["messageId"]
    finally:
        queue.shutdown()


def test_at_least_once_every_message_can_come_twice_with_the_same_id():
    handler = Recorder()
    queue = _queue(handler, duplicates=1.0, seed=7)
    try:
        for i in range(5):
            queue.send(f"job-{i}")
        assert queue.wait_idle(60)
        assert sorted(handler.bodies()) == sorted(f"job-{i}" for i in range(5) for _ in range(2))
        by_id: dict[str, set[str]] = {}
        for record in handler.records:
            by_id.setdefault(record["messageId"], set()).add(record["body"])
        assert len(by_id) == 5 and all(len(bodies) == 1 for bodies in by_id.values())
        assert queue.stats.duplicated == 5 and queue.stats.delivered == 10
    finally:
        queue.shutdown()


def test_a_lagging_duplicate_comes_after_its_twin_and_ahead_of_the_line():
    handler, clock = Recorder(hold=True), Clock()
    queue = _queue(handler, concurrency=1, duplicates=1.0, duplicate_lag=0.3, seed=3, clock=clock)
    try:
        for i in range(3):
            queue.send(f"job-{i}")
        assert handler.arrived.acquire(timeout=60)  # job-0 runs; its twin is due within 0.3 s
        assert queue.waiting == 3
        clock.advance(0.4)  # the twin is due when job-0 ends
        handler.release.set()
        assert queue.wait_idle(60)
        bodies = handler.bodies()
        assert bodies[:2] == ["job-0", "job-0"]  # the due twin went ahead of job-1
        assert sorted(bodies) == sorted(f"job-{i}" for i in range(3) for _ in range(2))
        assert queue.stats.delivered == 6 and len(queue.stats.waits) == 3
    finally:
        queue.shutdown()


def test_a_failed_job_comes_back_after_the_visibility_timeout_then_goes_to_the_dead_letters():
    handler = Recorder(fail={"bad"})
    queue = _queue(handler, max_receive_count=3)
    try:
        queue.send("bad")
        queue.send("good")
        assert queue.wait_idle(60)
        bad = [r for r in handler.records if r["body"] == "bad"]
        assert [r["attributes"]["ApproximateReceiveCount"] for r in bad] == ["1", "2", "3"]
        assert handler.bodies().count("good") == 1
        (dead,) = queue.dead_letters
        assert dead.body == "bad" and dead.receives == 3 and "failing bad" in dead.failure
        assert queue.stats.redelivered == 2
    finally:
        queue.shutdown()


def test_a_message_past_its_retention_is_dropped_unseen():
    handler, clock = Recorder(hold=True), Clock()
    queue = _queue(handler, concurrency=1, retention=0.2, clock=clock)
    try:
        queue.send("first")
        assert handler.arrived.acquire(timeout=60)
        queue.send("too-late")  # waits behind "first" for longer than it is retained
        clock.advance(0.3)
        handler.release.set()
        assert queue.wait_idle(60)
        assert handler.bodies() == ["first"] and queue.stats.expired == 1
    finally:
        queue.shutdown()


def test_a_shut_down_queue_refuses_new_messages_and_stops_boundedly():
    handler = Recorder()
    queue = _queue(handler)
    queue.send("job")
    queue.shutdown(timeout=10)
    with pytest.raises(RuntimeError):
        queue.send("after")


@pytest.mark.parametrize("options", [{"concurrency": 0}, {"duplicates": 1.5}, {"duplicates": -0.1},
                                     {"duplicate_lag": -1.0}])
def test_bad_settings_are_refused(options):
    with pytest.raises(ValueError):
        _queue(Recorder(), **options)
