"""An SQS queue and the Lambda event source mapping that drains it, on one machine.

On AWS the message function sends each reply job to an SQS queue, and the reply function's
event source mapping takes jobs off it with at most `MaximumConcurrency` invocations at once
(LlmConcurrency): a burst beyond that waits in the queue instead of being throttled, and
jobs start in about the order they arrived. This emulation keeps what the service must cope
with, read from template.yaml (queue and mapping properties):

- **the cap**: never more than `concurrency` invocations at once; the rest wait, first in
  first out (SQS standard queues only try to keep that order, which is all the service
  assumes);
- **at-least-once delivery**: with `duplicates` > 0 that share of messages is delivered twice,
  the copies possibly at the same time, as SQS does now and then; with `duplicate_lag` the
  second copy comes up to that many seconds after the first (uniformly drawn), ahead of the
  line, as another SQS host may hand it out while the first copy's reply is still running;
- **failures**: an invocation that raises leaves its messages in the queue; they become
  visible again after the visibility timeout, with `ApproximateReceiveCount` one higher, and
  go to the dead-letter queue (`dead_letters`) once received `max_receive_count` times;
- **retention**: a message older than the retention period is deleted unseen, as SQS does
  (and logged here, which SQS does not).

What it does not reproduce: long-polling latency, the mapping's gradual scaling of pollers,
batch windows, and messages that survive a restart (the queue is in memory: a restart drops
what was waiting, and the stack frees the leases those jobs held).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ws_handlers.jobs import ReplyJob

from .thread_runner import Done

log = logging.getLogger("local_gateway")


class Runner(Protocol):
    def submit(self, event: dict[str, Any], done: Done) -> None: ...
    def shutdown(self, timeout: float = 10.0) -> None: ...


@dataclass
class _Message:
    message_id: str
    body: str
    sent_at: float
    receives: int = 0
    copies: int = 1  #: deliveries still owed: 2 while an at-least-once duplicate is pending


@dataclass(frozen=True)
class DeadLetter:
    """A message moved to the dead-letter queue, with the last failure that sent it there."""

    body: str
    receives: int
    failure: str | None


@dataclass
class QueueStats:
    sent: int = 0
    delivered: int = 0
    duplicated: int = 0  #: extra deliveries of at-least-once
    redelivered: int = 0  #: deliveries after a failure and the visibility timeout
    expired: int = 0
    max_waiting: int = 0  #: the longest the queue got (messages waiting for a slot)
    waits: list[float] = field(default_factory=list)  #: seconds from send to first delivery, in send order


class LocalQueue:
    """The `JobQueue` port (enqueue) on a queue drained by `runner` with at most `concurrency` at once."""

    def __init__(
        self,
        runner: Runner,
        *,
        concurrency: int,
        visibility_timeout: float = 30.0,
        max_receive_count: int | None = None,
        retention: float = 345_600.0,
        duplicates: float = 0.0,
        duplicate_lag: float = 0.0,
        seed: int | None = None,
        arn: str = "arn:aws:sqs:us-east-1:000000000000:local",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0.0 <= duplicates <= 1.0:
            raise ValueError("duplicates is a share of messages, from 0 to 1")
        if duplicate_lag < 0:
            raise ValueError("duplicate_lag is at least 0 seconds")
        self._runner = runner
        self.concurrency = concurrency
        self.visibility_timeout = visibility_timeout
        self.max_receive_count = max_receive_count
        self.retention = retention
        self.duplicates = duplicates
        self.duplicate_lag = duplicate_lag
        self.arn = arn
        self._clock = clock  #: sent, due and visible-again times (a test moves it instead of waiting)
        self.dead_letters: list[DeadLetter] = []
        self.stats = QueueStats()
        self._random = random.Random(seed)
        self._ready: deque[_Message] = deque()
        self._hidden: list[tuple[float, int, _Message]] = []  #: (visible again at, tie-break, message)
        self._late: list[tuple[float, int, _Message]] = []  #: lagging duplicates: (due at, tie-break, copy)
        self._order = itertools.count()
        self._in_flight = 0
        self._first_delivery: set[str] = set()
        self._changed = threading.Condition()
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="sqs-dispatch", daemon=True)
        self._dispatcher.start()

    # -- the sending side ------------------------------------------------------------------
    def enqueue(self, job: ReplyJob) -> None:
        self.send(json.dumps(job.to_dict()))

    def send(self, body: str) -> None:
        """SendMessage: the body waits for a free slot; sometimes it will be delivered twice."""
        message = _Message(str(uuid.uuid4()), body, self._clock())
        with self._changed:
            if self._stopping:
                raise RuntimeError("the queue is shut down")
            if self.duplicates and self._random.random() < self.duplicates:
                message.copies = 2
                self.stats.duplicated += 1
            self._ready.append(message)
            self.stats.sent += 1
            self.stats.max_waiting = max(self.stats.max_waiting, len(self._ready))
            self._changed.notify_all()

    # -- the event source mapping ------------------------------------------------------------
    def _dispatch(self) -> None:
        with self._changed:
            while True:
                now = self._clock()
                while self._hidden and self._hidden[0][0] <= now:
                    self._ready.append(heapq.heappop(self._hidden)[2])
                while self._late and self._late[0][0] <= now:  # ahead of the line: its twin already ran
                    self._ready.appendleft(heapq.heappop(self._late)[2])
                if self._stopping and not self._ready:
                    return
                if self._ready and self._in_flight < self.concurrency:
                    message = self._ready[0]
                    if now - message.sent_at > self.retention:
                        self._ready.popleft()
                        self.stats.expired += 1
                        log.error("a queued job expired unseen after %.0f s", now - message.sent_at)
                        self._changed.notify_all()  # the queue may be idle now
                        continue
                    if message.copies > 1 and self.duplicate_lag > 0:  # the duplicate comes later
                        message.copies -= 1
                        copy = self._ready.popleft()
                        twin = _Message(message.message_id, message.body, message.sent_at, message.receives)
                        due = now + self._random.uniform(0, self.duplicate_lag)
                        heapq.heappush(self._late, (due, next(self._order), twin))
                    elif message.copies > 1:  # the duplicate stays first in line: it may run alongside
                        message.copies -= 1
                        copy = _Message(message.message_id, message.body, message.sent_at, message.receives)
                    else:
                        copy = self._ready.popleft()
                    self._deliver(copy, now)
                    continue
                due = [heap[0][0] for heap in (self._hidden, self._late) if heap]
                self._changed.wait(min(due) - now if due else None)

    def _deliver(self, message: _Message, now: float) -> None:
        """One invocation with a batch of one (template: BatchSize 1); called holding the lock."""
        message.receives += 1
        self._in_flight += 1
        self.stats.delivered += 1
        if message.message_id not in self._first_delivery:
            self._first_delivery.add(message.message_id)
            self.stats.waits.append(now - message.sent_at)
        record = {
            "messageId": message.message_id,
            "receiptHandle": uuid.uuid4().hex,
            "body": message.body,
            "attributes": {
                "ApproximateReceiveCount": str(message.receives),
                "SentTimestamp": str(int(message.sent_at * 1000)),
                "ApproximateFirstReceiveTimestamp": str(int(now * 1000)),
            },
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(message.body.encode()).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.arn,
            "awsRegion": "us-east-1",
        }
        self._runner.submit({"Records": [record]}, lambda failure: self._finished(message, failure))

    def _finished(self, message: _Message, failure: str | None) -> None:
        with self._changed:
            self._in_flight -= 1
            if failure is not None:
                if self.max_receive_count is not None and message.receives >= self.max_receive_count:
                    self.dead_letters.append(DeadLetter(message.body, message.receives, failure))
                    log.error("a job went to the dead-letter queue after %d receives: %s", message.receives, failure)
                elif not self._stopping:
                    self.stats.redelivered += 1
                    log.warning("a job failed; visible again in %.1f s: %s", self.visibility_timeout, failure)
                    entry = (self._clock() + self.visibility_timeout, next(self._order), message)
                    heapq.heappush(self._hidden, entry)
            self._changed.notify_all()

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def runner(self) -> Runner:
        """What runs the invocations (threads, or worker processes)."""
        return self._runner

    @property
    def waiting(self) -> int:
        """Messages waiting for a slot or for their visibility timeout."""
        with self._changed:
            return len(self._ready) + len(self._hidden) + len(self._late)

    def snapshot(self) -> dict[str, Any]:
        """The settings and stats so far, copied under the lock (the dispatcher appends to them)."""
        with self._changed:
            return {"concurrency": self.concurrency, "duplicates": self.duplicates,
                    "duplicate_lag": self.duplicate_lag, "waiting": self.waiting,
                    "dead_letters": len(self.dead_letters), **asdict(self.stats)}

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is waiting or running (tests, shutdown); True when idle."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._ready and not self._hidden and not self._late and self._in_flight == 0, timeout
            )

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop delivering (what waits is dropped, as a stopped stack's queue would be) and let
        running invocations finish."""
        with self._changed:
            self._stopping = True
            self._ready.clear()
            self._hidden.clear()
            self._late.clear()
            self._changed.notify_all()
        self._dispatcher.join(timeout)
        self._runner.shutdown(timeout)
