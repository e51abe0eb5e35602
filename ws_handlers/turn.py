"""One reply turn: read the chat, stream the model's reply to the participant, store it.

Runs in the reply function, which takes the job from a queue after the user message was
stored and acknowledged, so no integration timeout can cut it. Whatever happens to the socket,
the reply is stored: a 410 Gone removes the stale connection and the turn goes on,
pushing to the chat's current connection if the participant reconnected (starting with
the text so far, so the new socket gets the reply without a gap) or to nobody.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import breaker
from .config import Settings
from .errors import ChatError
from .jobs import ReplyJob
from .model import ChatModel, LLMError, Usage
from .protocol import MAX_DELTA_BYTES, MAX_REPLY_BYTES, error_frame, fitting, message_frame, split_text, text_bytes
from .push import ConnectionGone, PushFailed, Pusher
from .store import Chat, Message, Store, StoreThrottled
from .stream import Coalescer
from .telemetry import logger, metrics

#: While a reply streams, look this often (seconds) for the socket the chat is bound to now.
#: A socket the participant closed answers 410, and the turn looks at once; this interval only
#: matters for one that died without closing (API Gateway accepts posts to it until it notices).
#: The client replaces such a socket only after 15 s without an answer to its ping (docs/client.md,
#: `pongTimeoutMs`), so a new socket waits at most 5 s more for its deltas, well within the 20 s
#: after which it would ask what became of the reply (`replyTimeoutMs`), and it misses nothing
#: (it gets the text from offset 0; the closing frame always goes to the chat's current socket).
#: 5 s, the lease's renewal period: a typical 1.5-3 s reply reads the chat for it not at all.
REBIND_INTERVAL = 5.0
#: Failures that say the provider is in trouble (not a bad request): they feed the breaker.
BREAKER_CODES = frozenset({"llm_unavailable", "llm_timeout", "llm_rate_limited"})


class _Delivery:
    """Pushes a reply's deltas to whichever socket the chat is bound to, surviving reconnects.

    The chat's binding moves when the participant starts, sends or asks for history from
    a new socket. The turn looks at it after a 410, and every REBIND_INTERVAL anyway, because an
    abandoned socket may not answer 410 at once. A new socket first gets the whole text
    so far (offset 0), so it misses nothing; clients drop what they already have by offset.

    No frame may exceed API Gateway's 128 KB: text is sent in deltas of at most
    MAX_DELTA_BYTES, and the reply is cut at MAX_REPLY_BYTES (far beyond `max_tokens` for
    ordinary text), so that its `message` frame fits too.

    `index` counts the deltas sent to the current socket: a new socket starts again at 0, as
    its text starts again at offset 0 (`_aim`).
    """

    def __init__(self, store: Store, pusher: Pusher, chat: Chat, seq: int, connection_id: str) -> None:
        self.store, self.pusher, self.chat_id, self.seq = store, pusher, chat.chat_id, seq
        self.target: str | None = connection_id
        self.text = ""  #: everything generated so far, up to MAX_REPLY_BYTES
        self.room = MAX_REPLY_BYTES  #: bytes `text` may still grow by
        self.cut = False  #: whether the reply was cut at MAX_REPLY_BYTES
        self.sent = 0  #: characters of `text` the current target has received
        self.index = 0  #: deltas the current target has received
        self.pushes = 0
        self.gone: set[str] = set()  #: sockets that answered 410; never pushed to again
        self._next_check = time.monotonic() + REBIND_INTERVAL

    def _post(self, frame: dict[str, Any]) -> bool:
        assert self.target is not None
        try:
            self.pusher.send(self.target, frame)
            self.pushes += 1
            return True
        except ConnectionGone:
            logger.info("connection gone during reply", extra={"connection_id": self.target, "chat_id": self.chat_id})
            self.store.delete_connection(self.target)
            self.gone.add(self.target)
            self._aim(None)
        except PushFailed as exc:
            logger.warning("push failed", extra={"chat_id": self.chat_id, "error": str(exc)})
        return False

    def _follow_binding(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + REBIND_INTERVAL
        chat = self.store.get_chat(self.chat_id)
        current = chat.connection_id if chat is not None else None
        if current and current not in self.gone and current != self.target:
            self._aim(current)

    def _aim(self, target: str | None) -> None:
        """Push to `target` from now on: it has received nothing of this reply yet."""
        self.target, self.sent, self.index = target, 0, 0

    def delta(self, piece: str) -> None:
        if self.cut:  # the rest of the reply is dropped (the model is still read, for its usage)
            return
        size = text_bytes(piece)
        if size > self.room:
            logger.warning("reply cut: too long for one frame", extra={"chat_id": self.chat_id, "seq": self.seq})
            piece, self.cut = fitting(piece, self.room), True
            size = text_bytes(piece)
        self.text += piece
        self.room -= size
        self._follow_binding()
        for _ in range(2):  # the current target, then at most one newly bound socket
            if self.target is None or self.sent >= len(self.text) or self._push_unsent():
                return
            self._follow_binding(force=True)

    def _push_unsent(self) -> bool:
        """Send the target what it has not received yet, in deltas that fit; False on a failure."""
        for text in split_text(self.text[self.sent :], MAX_DELTA_BYTES):
            frame = {
                "type": "delta",
                "chat_id": self.chat_id,
                "seq": self.seq,
                "index": self.index,
                "offset": self.sent,
                "text": text,
            }
            if not self._post(frame):
                return False
            self.index += 1
            self.sent += len(text)
        return True

    def final(self, frame: dict[str, Any]) -> None:
        """The closing frame (message or error) to wherever the participant is now."""
        self._follow_binding(force=True)
        if self.target is not None and not self._post(frame):
            self._follow_binding(force=True)
            if self.target is not None:
                self._post(frame)


#: Renewals per lease period: a renewal that fails (after the store's own retries) leaves the
#: next one time to land before the lease lapses (docs/architecture.md: one reply at a time).
RENEWALS_PER_LEASE = 3


class _Renewals:
    """One timer thread for every lease the process keeps: a heap of due times, the renewals run
    on a few pooled threads (a slow store call delays no other reply's renewal). A thread
    started per reply cost ~4 % of the local stack's CPU at 200 replies at once; on Lambda (one
    reply per container) the timer and one renewal thread start with the first reply and are
    reused by every later one."""

    WORKERS = 4

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, _LeaseKeeper]] = []
        self._order = itertools.count()
        self._pool: ThreadPoolExecutor | None = None

    def at(self, due: float, keeper: _LeaseKeeper) -> None:
        with self._wake:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="lease-renewal")
                threading.Thread(target=self._run, name="lease-keeper", daemon=True).start()
            heapq.heappush(self._due, (due, next(self._order), keeper))
            if self._due[0][2] is keeper:  # due before all the others: the timer sleeps for less
                self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while True:
                if not self._due:
                    self._wake.wait()
                elif (wait := self._due[0][0] - time.monotonic()) > 0:
                    self._wake.wait(wait)
                else:
                    due, _, keeper = heapq.heappop(self._due)
                    if not keeper.stopped:
                        self._pool.submit(keeper.renew, due)  # type: ignore[union-attr]


_renewals = _Renewals()


class _LeaseKeeper:
    """Renews the turn's lease on a timer, so even a model that stalls between tokens keeps
    the chat; `lost` turns true when another turn has taken it.

    Renewals keep to a fixed schedule (every `every` seconds from the start), not `every` after
    the previous one ended: a renewal slowed by the store's retries does not push the next one
    towards the lease's end. No renewal runs after the `with` block."""

    def __init__(self, renew: Callable[[], bool], every: float) -> None:
        self._renew, self._every = renew, every
        self._lock = threading.Lock()  # held by a renewal; the block's exit waits for it
        self.stopped = False
        self.lost = False

    def renew(self, due: float) -> None:
        with self._lock:
            if self.stopped:
                return
            try:
                if not self._renew():
                    self.lost = self.stopped = True
                    return
            except Exception:  # a failed renewal is retried next time; the lease has slack
                logger.warning("lease renewal failed", exc_info=True)
            _renewals.at(max(due + self._every, time.monotonic()), self)  # overdue (a slow renewal): at once

    def __enter__(self) -> _LeaseKeeper:
        _renewals.at(time.monotonic() + self._every, self)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.stopped = True


def report_dead_turn(store: Store, pusher_for: Callable[[str], Pusher], job: ReplyJob) -> bool:
    """The invocation writing `job` died without a word (its process killed: SIGKILL, out of
    memory): if the turn still holds the chat, free it and tell the participant to retry, as
    `Turn.run` does for a crash it sees. True when it did. A reply already stored, or a chat
    another turn has taken since (the participant's retry), is left alone: an error for that
    seq would make the page drop a reply that is coming."""
    chat = store.get_chat(job.chat_id)
    if chat is None or chat.lease is None or chat.lease.turn_id != job.turn_id:
        return False
    store.release_lease(job.chat_id, job.turn_id)  # first: the retry the error asks for must find the chat free
    user = store.get_message(job.chat_id, job.user_seq)
    error = ChatError("internal", chat_id=job.chat_id, seq=job.user_seq + 1,
                      client_msg_id=user.client_msg_id if user else None)
    try:
        pusher_for(job.endpoint).send(chat.connection_id or job.connection_id, error_frame(error))
    except (ConnectionGone, PushFailed):  # the participant left: `start` shows the chat free
        pass
    return True


class Turn:
    """One reply: claim the job, then its three steps: prompt, stream, store."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        model: ChatModel,
        pusher_for: Callable[[str], Pusher],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.pusher_for = pusher_for
        self._clock = clock

    def run(self, job: ReplyJob) -> None:
        """Write the reply for `job`; on an unexpected failure free the chat, tell the participant, re-raise."""
        try:
            self._run(job)
        except Exception:
            logger.exception("reply turn crashed", extra={"chat_id": job.chat_id})
            try:
                self.store.release_lease(job.chat_id, job.turn_id)
                error = ChatError("internal", chat_id=job.chat_id, seq=job.user_seq + 1)
                self.pusher_for(job.endpoint).send(job.connection_id, error_frame(error))
            except Exception:
                logger.exception("could not report the crash")
            raise  # the queue delivers the job again; the claim makes that a no-op

    def _renew(self, job: ReplyJob) -> bool:
        return self.store.renew_lease(job.chat_id, job.turn_id, self._clock() + self.settings.reply_lease_seconds)

    def _run(self, job: ReplyJob) -> None:
        chat = self._claim(job)
        if chat is None:
            return
        delivery = _Delivery(self.store, self.pusher_for(job.endpoint), chat, job.user_seq + 1, job.connection_id)
        started = self._clock()
        if self.store.read_breaker().is_open(started):
            self._fail(chat, job, delivery, LLMError("llm_paused", "breaker_open"))
            return
        try:
            usage = self._stream(chat, job, self._prompt(chat, job), delivery)
        except LLMError as exc:
            self._fail(chat, job, delivery, exc)
            return
        if usage is not None:  # None: another turn took the chat, and stores its own reply
            self._store(chat, job, delivery, usage, started)

    def _claim(self, job: ReplyJob) -> Chat | None:
        """The chat, if this delivery of `job` is the one that writes its reply.

        Queues deliver at least once: only the delivery that claims the turn writes the reply.
        A duplicate, or a job whose lease a retry has since taken, stops here, as does a chat
        the operator deleted meanwhile."""
        chat = self.store.claim_turn(job.chat_id, job.turn_id, self._clock() + self.settings.reply_lease_seconds)
        if chat is None:
            logger.info("reply job skipped: already claimed or superseded", extra={"chat_id": job.chat_id})
            metrics.add_metric(name="ReplyJobsSkipped", unit="Count", value=1)
        return chat

    def _prompt(self, chat: Chat, job: ReplyJob) -> list[dict[str, str]]:
        """The system prompt, then the chat up to the message being answered."""
        history = self.store.messages(chat.chat_id, limit=job.user_seq)
        prompt = [{"role": "system", "content": chat.bot.system_prompt}] if chat.bot.system_prompt else []
        return prompt + [{"role": m.role, "content": m.text} for m in history]

    def _stream(self, chat: Chat, job: ReplyJob, prompt: list[dict[str, str]], delivery: _Delivery) -> Usage | None:
        """Stream the model's reply to the participant, coalesced; its usage, or None when another
        turn took the chat meanwhile (the reply is abandoned). Raises LLMError."""
        coalescer = Coalescer(self.settings.stream_flush_seconds, self.settings.stream_flush_chars)
        usage = Usage(0, 0)
        with _LeaseKeeper(lambda: self._renew(job), self.settings.reply_lease_seconds / RENEWALS_PER_LEASE) as keeper:
            for piece in self.model.stream(chat.bot, prompt):
                if keeper.lost:  # a retry took the chat (our lease had lapsed): stop paying for this one
                    logger.warning("reply abandoned: another turn took the chat", extra={"chat_id": chat.chat_id})
                    return None
                if isinstance(piece, Usage):
                    usage = piece
                elif (text := coalescer.add(piece)) is not None:
                    delivery.delta(text)
        if (text := coalescer.flush()) is not None:
            delivery.delta(text)
        return usage

    def _store(self, chat: Chat, job: ReplyJob, delivery: _Delivery, usage: Usage, started: float) -> None:
        """Count the tokens (spent whether or not the reply is stored), store the reply, tell the
        participant. A reply the store refuses after its retries is never dropped silently."""
        seq = job.user_seq + 1
        reply = Message(
            chat.chat_id, seq, "assistant", delivery.text, self._clock(),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            model=chat.bot.model, latency_ms=int((self._clock() - started) * 1000), provenance=usage.provenance,
        )
        self._count_tokens(chat, usage)
        try:
            stored = self.store.finish_reply(chat, reply, job.turn_id)
        except StoreThrottled:
            logger.error("reply not stored: the store stayed contended or throttled", extra={"chat_id": chat.chat_id, "seq": seq})
            metrics.add_metric(name="RepliesNotStored", unit="Count", value=1)
            self._abandon(chat, job, delivery, "throttled")
            return
        if not stored:
            logger.warning("reply not stored: the turn lost its lease", extra={"chat_id": chat.chat_id, "seq": seq})
            return
        delivery.final(message_frame(chat.chat_id, reply))
        metrics.add_metric(name="RepliesStored", unit="Count", value=1)
        logger.info(
            "reply stored",
            extra={
                "chat_id": chat.chat_id,
                "seq": seq,
                "chars": len(reply.text),
                "cut": delivery.cut,
                "pushes": delivery.pushes,
                "latency_ms": reply.latency_ms,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            },
        )

    def _count_tokens(self, chat: Chat, usage: Usage) -> None:
        tokens = usage.prompt_tokens + usage.completion_tokens
        metrics.add_metric(name="TokensUsed", unit="Count", value=tokens)
        try:
            self.store.count_tokens(chat.identity.experiment, tokens)
        except StoreThrottled:  # the reply still goes on; the budget lags by this reply's tokens
            logger.error("tokens not counted: the store stayed throttled", extra={"chat_id": chat.chat_id, "tokens": tokens})
            metrics.add_metric(name="TokensNotCounted", unit="Count", value=tokens)

    def _fail(self, chat: Chat, job: ReplyJob, delivery: _Delivery, exc: LLMError) -> None:
        """The model failed: feed the breaker, free the chat and tell the participant."""
        logger.warning("reply failed", extra={"chat_id": chat.chat_id, "code": exc.code, **exc.log})
        metrics.add_metric(name="ReplyFailures", unit="Count", value=1)
        s = self.settings
        if exc.code in BREAKER_CODES and breaker.record_failure(
            self.store, self._clock(), s.breaker_failures, s.breaker_window, s.breaker_cooldown
        ):
            logger.error("model calls paused by the circuit breaker", extra={"cooldown_s": s.breaker_cooldown})
            metrics.add_metric(name="BreakerOpened", unit="Count", value=1)
        self._abandon(chat, job, delivery, exc.code)

    def _abandon(self, chat: Chat, job: ReplyJob, delivery: _Delivery, code: str) -> None:
        """Free the chat and send the error `code` for the reply; the user message stays stored,
        so the participant's retry (same client_msg_id) generates the reply again."""
        self.store.release_lease(chat.chat_id, job.turn_id)
        user = self.store.get_message(chat.chat_id, job.user_seq)
        error = ChatError(
            code, chat_id=chat.chat_id, seq=job.user_seq + 1, client_msg_id=user.client_msg_id if user else None
        )
        delivery.final(error_frame(error))
