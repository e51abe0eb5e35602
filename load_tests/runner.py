"""Virtual participants: one asyncio task each, over real WebSockets, then a verification pass.

Every participant connects with its own connect token, starts a chat with its own ticket,
sends `messages` messages (waiting for each reply, as the service allows one reply at a
time per chat), and keeps its socket open until everyone is done, so `participants`
sockets are open at once. Afterwards a fresh socket per participant asks `history` and
checks that each sent message is stored exactly once, each reply stored exactly once, and
each reply arrived complete (verify.py).

In a burst (`Options.burst`) everyone first connects and starts a chat, then all send their
first message at the same moment (a barrier), as a classroom does when told to begin. Each
send records when its `ack`, its `queued` frame, its first delta and its final message
arrived, so ranks.py can tell whether replies started in the order the service took the
messages in.

Each message ends with a marker unique to the run, participant and message (`[#<run>.p17.m2]`):
the offline model records it with its own times per request (local_gateway/model_timings.py),
which stack_overhead.py pairs with the client's to split each reply's latency.

Every loop is bounded: a global deadline, a timeout on every wait, a cap on retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ws_handlers.bot import Bot
from ws_handlers.tickets import Identity, mint_ticket, mint_token

from .corpus import sentence
from .verify import Verification, check

#: Errors worth retrying with the same client_msg_id (docs/protocol.md's retryable codes).
RETRYABLE = frozenset({
    "paused", "rate_limited", "reply_in_progress", "llm_rate_limited", "llm_timeout", "llm_unavailable",
    "llm_paused", "reply_interrupted", "throttled", "internal",
})


@dataclass
class Options:
    url: str  #: ws(s)://host/stage, without the token
    secret: str  #: the ticket secret shared with the service
    participants: int = 20
    messages: int = 2
    think: float = 2.0  #: mean think time before each send, seconds (uniform 0.5x to 1.5x)
    ramp: float = 0.0  #: seconds over which participants connect; 0: all at once
    deadline: float = 600.0  #: the whole run (traffic and verification), seconds
    connect_timeout: float = 30.0
    reply_timeout: float = 120.0  #: per wait for an ack, a delta or the final message
    retries: int = 6  #: retries of one send after a retryable error (backoff 0.5 s doubling: ~30 s, past a dead turn's lease)
    heartbeat: float = 240.0  #: seconds between pings while connected, as client_js's heartbeatMs (0: none)
    origin: str | None = "http://localhost:8000"
    bot: Bot | None = None  #: None: local_gateway.demo_bots' tutor
    experiment: str = "load"
    session: str = ""  #: "" : a fresh session per run, so chats never collide with an earlier run
    seed: int = 0
    verify_concurrency: int = 50
    hold: bool = True  #: keep sockets open until every participant is done
    burst: bool = False  #: everyone connects first, then all send their first message at once


@dataclass
class Reply:
    """One send and what came back."""

    participant: int
    index: int
    client_msg_id: str
    text_chars: int
    sent_at: float  #: seconds since the run started (first attempt)
    marker: str = ""  #: the tag at the end of the text, found again in the model's request ("r3fa1.p17.m2")
    #: time.monotonic() when the answered attempt was sent: ttfd_s and reply_s count from it
    attempt_sent_mono: float | None = None
    burst: bool = False  #: the first message of a burst run, sent at the barrier with everyone else's
    acked_at: float | None = None  #: when the first ack arrived (s since the start): the service has the message
    queued_at: float | None = None  #: when `queued` arrived for the answered attempt, if before its first delta
    queued_after_delta: bool = False  #: `queued` came after the first delta (the reply never waited)
    first_delta_at: float | None = None  #: when the answered attempt's first delta arrived
    done_at: float | None = None  #: when the final message arrived
    ack_s: float | None = None
    ttfd_s: float | None = None
    reply_s: float | None = None
    frames: int = 0  #: frames about this reply (deltas and the message)
    deltas: int = 0
    attempts: int = 0
    user_seq: int | None = None
    reply_seq: int | None = None
    final_text: str | None = None
    merged_text: str | None = None  #: the deltas merged by offset
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  #: the last error code, if the send did not end with a message

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("final_text"), out.pop("merged_text")
        out["reply_chars"] = len(self.final_text or "")
        return out


@dataclass
class Participant:
    number: int
    participant_id: str
    token: str
    ticket: str
    connect_s: float | None = None
    connected_at: float | None = None
    closed_at: float | None = None
    chat_id: str | None = None
    replies: list[Reply] = field(default_factory=list)
    frames_in: int = 0  #: every frame received (each one a post_to_connection on AWS)
    bytes_in: list[int] = field(default_factory=list)
    frames_out: int = 0  #: every frame sent (each one an API Gateway message on AWS)
    frame_times: list[float] = field(default_factory=list)  #: wall-clock times of non-ping frames sent
    error: str | None = None


class Run:
    """One load test: `await Run(options).execute()`; counters are readable while it runs."""

    def __init__(self, options: Options) -> None:
        from local_gateway.demo_bots import BOTS

        self.o = options
        self.bot = options.bot or BOTS["tutor"]
        self.session = options.session or f"s{uuid.uuid4().hex[:10]}"
        self.tag = f"r{uuid.uuid4().hex[:6]}"  #: this run's part of each message's marker
        self.people = [self._mint(n) for n in range(options.participants)]
        self.errors: Counter[str] = Counter()
        self.connected = 0
        self.open_now = 0
        self.peak_open = 0
        self.replies_done = 0
        self.verified = 0
        self.started = 0.0
        self.started_wall = 0.0
        self.traffic_s = 0.0
        self.on_traffic_end: Callable[[], Any] | None = None  #: called between the traffic and the verification
        self.verification = Verification()
        self._all_done: asyncio.Event | None = None
        self._done_count = 0
        self._everyone_ready: asyncio.Event | None = None  #: the burst's barrier
        self._ready_count = 0

    def _mint(self, n: int) -> Participant:
        pid = f"L{n:05d}"
        who = Identity(pid, self.o.experiment, self.session)
        return Participant(n, pid, mint_token(self.o.secret, who), mint_ticket(self.o.secret, who, "main", self.bot))

    # -- timing -------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.o.deadline - self.now()

    def _wait(self, limit: float) -> float:
        left = min(limit, self.remaining())
        if left <= 0:
            raise TimeoutError("global deadline")
        return left

    # -- the run ------------------------------------------------------------------------
    async def execute(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._all_done = asyncio.Event()
        self._everyone_ready = asyncio.Event()
        tasks = [asyncio.create_task(self._participant(p)) for p in self.people]
        await asyncio.wait(tasks, timeout=max(1.0, self.remaining()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.traffic_s = self.now()
        if self.on_traffic_end is not None:
            self.on_traffic_end()
        await self._verify_all()

    def _ready_one(self) -> None:
        """One participant reached the barrier (or failed before it): the last one opens it."""
        self._ready_count += 1
        if self._ready_count >= len(self.people) and self._everyone_ready is not None:
            self._everyone_ready.set()

    async def _barrier(self) -> None:
        assert self._everyone_ready is not None
        await asyncio.wait_for(self._everyone_ready.wait(), self._wait(self.o.deadline))

    def _finished_one(self) -> None:
        self._done_count += 1
        if self._done_count >= len(self.people) and self._all_done is not None:
            self._all_done.set()

    async def _participant(self, p: Participant) -> None:
        o = self.o
        rng = random.Random(f"{o.seed}:{p.number}:think")
        ws: ClientConnection | None = None
        finished = False
        ready = False
        beat: asyncio.Task[None] | None = None
        try:
            if o.ramp > 0 and len(self.people) > 1:
                await asyncio.sleep(o.ramp * p.number / (len(self.people) - 1))
            t0 = time.monotonic()
            try:
                ws = await asyncio.wait_for(
                    connect(f"{o.url}?token={quote(p.token)}", origin=o.origin, open_timeout=None,
                            ping_interval=None, close_timeout=5, max_size=None, compression=None),
                    self._wait(o.connect_timeout),
                )
            except InvalidStatus as exc:
                self._error(p, f"connect_{exc.response.status_code}")
                return
            except Exception as exc:  # OSError, a timeout, a handshake the server cut (InvalidMessage)...
                self._error(p, f"connect_{type(exc).__name__}")
                return
            p.connect_s = time.monotonic() - t0
            p.connected_at = self.now()
            self.connected += 1
            self.open_now += 1
            self.peak_open = max(self.peak_open, self.open_now)
            if o.heartbeat > 0:  # as the browser client does: a socket waiting long for a reply is not idle
                beat = asyncio.create_task(self._heartbeat(p, ws))
            await self._send_frame(p, ws, {"action": "start", "ticket": p.ticket})
            chat = await self._until(p, ws, lambda f: f.get("type") == "chat" or f.get("type") == "error")
            if chat.get("type") != "chat":
                self._error(p, f"start_{chat.get('code')}")
                return
            p.chat_id = chat["chat_id"]
            if o.burst:
                ready = True
                self._ready_one()
                await self._barrier()
            for index in range(o.messages):
                if not (o.burst and index == 0):
                    await asyncio.sleep(min(o.think * rng.uniform(0.5, 1.5), max(0.0, self.remaining())))
                await self._exchange(p, ws, index)
            finished = True
            self._finished_one()
            if o.hold and self._all_done is not None:  # everyone stays connected until all are done
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._all_done.wait(), max(0.0, self.remaining()))
        except ConnectionClosed as exc:
            self._error(p, f"closed_{exc.rcvd.code if exc.rcvd else 1006}")
        except (TimeoutError, asyncio.TimeoutError):
            self._error(p, "timeout")
        except Exception as exc:  # counted, never a participant silently missing from the run
            self._error(p, f"failed_{type(exc).__name__}")
        finally:
            if beat is not None:
                beat.cancel()
            if o.burst and not ready:
                self._ready_one()  # never keep the others waiting at the barrier
            if not finished:
                self._finished_one()
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)
                self.open_now -= 1
                p.closed_at = self.now()

    async def _heartbeat(self, p: Participant, ws: ClientConnection) -> None:
        """A ping every `heartbeat` s (its pong is one more frame the waits pass over), bounded by the run."""
        while self.remaining() > 0:
            await asyncio.sleep(min(self.o.heartbeat, self.remaining()))
            with contextlib.suppress(ConnectionClosed):
                await self._send_frame(p, ws, {"action": "ping"})

    def _error(self, p: Participant, code: str) -> None:
        self.errors[code] += 1
        p.error = p.error or code

    async def _send_frame(self, p: Participant, ws: ClientConnection, frame: dict[str, Any]) -> None:
        p.frames_out += 1
        if frame.get("action") != "ping":
            p.frame_times.append(time.time())
        await ws.send(json.dumps(frame))

    async def _recv(self, p: Participant, ws: ClientConnection) -> dict[str, Any]:
        """The next frame. No timeout of its own: the caller's wait has one deadline for all its
        frames (`asyncio.wait_for` per frame made a task, a future and a timer for each, on the
        two cores the load generator shares with the stack; docs/benchmarks.md, "Phase 7")."""
        raw = await ws.recv()
        p.frames_in += 1
        p.bytes_in.append(len(raw))
        frame = json.loads(raw)
        return frame if isinstance(frame, dict) else {"type": "?"}

    async def _until(self, p: Participant, ws: ClientConnection, match: Any) -> dict[str, Any]:
        async with asyncio.timeout(self._wait(self.o.reply_timeout)):
            for _ in range(10_000):  # bounded: no socket sends more frames than this for one wait
                frame = await self._recv(p, ws)
                if match(frame):
                    return frame
        raise TimeoutError("too many unrelated frames")

    async def _exchange(self, p: Participant, ws: ClientConnection, index: int) -> None:
        o = self.o
        marker = f"{self.tag}.p{p.number}.m{index}"
        text = f"{sentence(p.number, index, o.seed)} [#{marker}]"
        reply = Reply(p.number, index, uuid.uuid4().hex, len(text), self.now(), marker=marker,
                      burst=o.burst and index == 0)
        p.replies.append(reply)
        frame = {"action": "send", "chat_id": p.chat_id, "client_msg_id": reply.client_msg_id, "text": text}
        for attempt in range(1 + o.retries):
            reply.attempts = attempt + 1
            t0 = reply.attempt_sent_mono = time.monotonic()
            await self._send_frame(p, ws, frame)
            async with asyncio.timeout(self._wait(o.reply_timeout)):  # the attempt's one deadline
                retryable = await self._answer(p, ws, reply, t0)
            if not (retryable and attempt < o.retries):
                return
            reply.ttfd_s = None  # the retried reply is timed from its own send
            reply.first_delta_at = reply.queued_at = None
            reply.queued_after_delta = False
            await asyncio.sleep(min(0.5 * 2**attempt * random.uniform(0.5, 1.5), max(0.0, self.remaining())))

    async def _answer(self, p: Participant, ws: ClientConnection, reply: Reply, t0: float) -> bool:
        """Read the frames of the attempt sent at `t0` until its reply or its error is in `reply`;
        True when the error is one to retry."""
        merged = ""
        for _ in range(10_000):
            got = await self._recv(p, ws)
            kind = got.get("type")
            if kind == "ack" and got.get("client_msg_id") == reply.client_msg_id:
                if reply.ack_s is None:
                    reply.ack_s = time.monotonic() - t0
                    reply.acked_at = self.now()
                reply.user_seq = got["seq"]
            elif kind == "queued" and got.get("client_msg_id") == reply.client_msg_id:
                if reply.first_delta_at is not None:
                    reply.queued_after_delta = True  # protocol.md: ignore it then
                elif reply.queued_at is None:
                    reply.queued_at = self.now()
            elif kind == "delta" and reply.user_seq is not None and got.get("seq") == reply.user_seq + 1:
                if reply.ttfd_s is None:
                    reply.ttfd_s = time.monotonic() - t0
                    reply.first_delta_at = self.now()
                reply.frames += 1
                reply.deltas += 1
                if got["offset"] <= len(merged):
                    merged = merged[: got["offset"]] + got["text"]
            elif kind == "message" and reply.user_seq is not None and got.get("seq") == reply.user_seq + 1:
                reply.reply_s = time.monotonic() - t0
                reply.done_at = self.now()
                reply.frames += 1
                reply.reply_seq = got["seq"]
                reply.final_text = got["text"]
                reply.merged_text = merged
                usage = got.get("usage") or {}
                reply.prompt_tokens = int(usage.get("prompt_tokens", 0))
                reply.completion_tokens = int(usage.get("completion_tokens", 0))
                reply.error = None
                self.replies_done += 1
                return False
            elif kind == "error" and (
                got.get("client_msg_id") == reply.client_msg_id
                or (reply.user_seq is not None and got.get("seq") == reply.user_seq + 1)
                or got.get("client_msg_id") is None
            ):
                code = got.get("code", "unknown")
                self.errors[code] += 1
                reply.error = code
                return bool(got.get("retryable")) and code in RETRYABLE
        raise TimeoutError("too many frames for one reply")

    # -- verification ----------------------------------------------------------------------
    async def _verify_all(self) -> None:
        t0 = time.monotonic()
        gate = asyncio.Semaphore(self.o.verify_concurrency)

        async def one(p: Participant) -> None:
            async with gate:
                await self._verify(p)
                self.verified += 1

        tasks = [asyncio.create_task(one(p)) for p in self.people]
        await asyncio.wait(tasks, timeout=max(1.0, self.remaining() + 60))  # verification gets a minute more
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.verification.duration_s = time.monotonic() - t0

    async def _history(self, p: Participant) -> list[dict[str, Any]]:
        """Every stored message of the participant's chat, over a fresh socket."""
        messages: list[dict[str, Any]] = []
        async with connect(f"{self.o.url}?token={quote(p.token)}", origin=self.o.origin, open_timeout=30,
                           ping_interval=None, close_timeout=5, max_size=None) as ws:
            after = 0
            for _ in range(100):  # pages of 96 KB; a load-test chat fits in one or two
                await ws.send(json.dumps({"action": "history", "chat_id": p.chat_id, "after_seq": after}))
                for _ in range(1000):
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame.get("type") == "history":
                        break
                    if frame.get("type") == "error":
                        raise RuntimeError(f"history refused: {frame.get('code')}")
                messages.extend(frame["messages"])
                if not frame.get("more") or not frame["messages"]:
                    return messages
                after = frame["messages"][-1]["seq"]
        return messages

    async def _verify(self, p: Participant) -> None:
        v = self.verification
        acked = [r for r in p.replies if r.user_seq is not None]
        v.sent += len(acked)
        v.unanswered += sum(1 for r in p.replies if r.final_text is None)
        if p.chat_id is None:
            return
        stored = None
        for attempt in range(3):  # a fresh socket can fail to open under load: a client would reconnect
            try:
                stored = await self._history(p)
                break
            except Exception as exc:
                v.failures.append(f"{p.participant_id}: history attempt {attempt + 1} failed: {type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0 + attempt)
        if stored is None:  # counted, never hidden
            v.unverified += 1
            return
        check(v, p.participant_id, p.replies, stored)
