"""The chat domain for the message route: start, send, history.

It decides; the ports act. `respond` pushes a frame to the caller's socket, the store
persists, the job queue hands the reply to the reply function (SQS on AWS). The order
matters and is kept here: a message is stored before it is acknowledged, and acknowledged
before its reply is queued, so the ack always precedes the reply's first delta; `queued`
then tells the participant the reply is waiting for the assistant.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from .config import Settings
from .controls import obeyed
from .errors import ChatError
from .identity import CredentialError, Ticket, TicketOpener
from .jobs import JobQueue, ReplyJob
from .protocol import History, Send, Start, error_frame, history_page, is_blank, message_frame, queued_frame
from .store import Chat, Conflict, Connection, ControlItems, Lease, Message, Store, chat_id_for, legacy_chat_id_for
from .telemetry import logger, metrics

Respond = Callable[[dict[str, Any]], None]
_APPEND_ATTEMPTS = 3


def _belongs(chat: Chat, ticket: Ticket) -> bool:
    return chat.identity == ticket.identity and chat.chat_key == ticket.chat_key


def _owned(chat: Chat, ticket: Ticket) -> Chat:
    """The chat stored under the ticket's id, if it is the ticket's (as `send` checks its owner)."""
    if not _belongs(chat, ticket):
        raise ChatError("chat_not_found")  # never another session's or participant's transcript
    return chat


def _record_budget_use(tokens_used: int, budget: int) -> None:
    """BudgetUsedPercent: how much of an experiment's token budget is spent, for the alarm.

    Emitted where the budget is checked anyway (no extra read). The experiment is not a
    dimension: an alarm needs one fixed set of dimensions, and experiments are created at
    will, so the metric (service = stack) takes the Maximum across them. Which experiment
    it is, the operator's status command tells.
    """
    if budget > 0:
        metrics.add_metric(name="BudgetUsedPercent", unit="Percent", value=100 * tokens_used / budget)


class ChatService:
    """The message route's decisions for one invocation (the `Chat` record is the store's)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        jobs: JobQueue,
        open_ticket: TicketOpener,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self._open_ticket = open_ticket
        self._clock = clock

    def admit_frame(self, connection_id: str) -> Connection:
        """Count a frame against its socket's rate limit, before anything else (parsing included),
        and return the connection it came from; raises `not_connected` or `rate_limited`.

        Every frame that reaches the function counts: a flood of malformed or unknown frames is
        cut like any other. API Gateway answers pings itself (template.yaml); a ping that gets here
        anyway (should API Gateway and Python read a frame differently, say one with two `action`
        keys) is counted like the rest, and refused as `bad_frame`.
        """
        counted = self.store.count_frame(connection_id, self._clock(), self.settings.rate_limit_window)
        if counted is None:
            raise ChatError("not_connected")
        connection, frames = counted
        if frames > self.settings.rate_limit_frames:  # a flood: refused before any other work
            raise ChatError("rate_limited")
        return connection

    def handle(self, connection: Connection, action: Start | Send | History, endpoint: str, respond: Respond) -> None:
        if isinstance(action, Start):
            self.start(connection, action, respond)
        elif isinstance(action, Send):
            self.send(connection, action, endpoint, respond)
        else:
            self.history(connection, action, respond)

    # -- start ------------------------------------------------------------------------
    def start(self, connection: Connection, action: Start, respond: Respond) -> None:
        try:
            ticket = self._open_ticket(action.ticket)
        except CredentialError as exc:
            raise ChatError(exc.code) from None
        if ticket.identity != connection.identity:
            raise ChatError("ticket_mismatch")
        now = self._clock()
        chat = self._ticket_chat(ticket) or self._open_chat(ticket, connection, now)
        self.store.bind_connection(chat.chat_id, connection.connection_id)
        page, more = history_page(self.store.messages(chat.chat_id))
        respond(
            {
                "type": "chat",
                "chat_id": chat.chat_id,
                "messages": page,
                "more": more,
                "replying": self._replying_seq(chat, now),
                "limits": self._limits(chat),
                **({"pace": asdict(chat.bot.pace)} if chat.bot.pace else {}),
            }
        )
        self._still_queued(chat, now, respond)

    def _ticket_chat(self, ticket: Ticket) -> Chat | None:
        """The ticket's chat if it exists: by its id, else by the id chats had before ids named the
        session, accepted only if stored for this very session: a participant code reused in a new
        session is another person, who gets a new chat, never the old session's."""
        chat = self.store.get_chat(chat_id_for(ticket.identity, ticket.chat_key))
        if chat is not None:
            return _owned(chat, ticket)
        legacy = self.store.get_chat(legacy_chat_id_for(ticket.identity, ticket.chat_key))
        return legacy if legacy is not None and _belongs(legacy, ticket) else None

    def _open_chat(self, ticket: Ticket, connection: Connection, now: float) -> Chat:
        chat_id = chat_id_for(ticket.identity, ticket.chat_key)
        fresh = Chat(chat_id, ticket.identity, ticket.chat_key, ticket.bot, now, connection_id=connection.connection_id)
        opening = None
        if ticket.bot.opening_message:
            opening = Message(chat_id, 1, "assistant", ticket.bot.opening_message, now)
            fresh = replace(fresh, next_seq=2)
        try:
            return self.store.open_chat(fresh, opening, self.settings.max_chats_per_participant)
        except Conflict:  # opened meanwhile by a concurrent start, else the participant's chats are counted out
            opened = self.store.get_chat(chat_id)
            if opened is None:
                raise ChatError("chat_limit") from None
            return _owned(opened, ticket)

    def _still_queued(self, chat: Chat, now: float, respond: Respond) -> None:
        """A page reloaded while its reply waits for a slot is told so again (not just `replying`)."""
        lease = chat.lease
        if lease is not None and not lease.claimed and chat.replying(now):
            user = self.store.get_message(chat.chat_id, lease.user_seq)
            if user is not None and user.client_msg_id:
                respond(queued_frame(chat.chat_id, lease.user_seq + 1, user.client_msg_id))

    def _limits(self, chat: Chat) -> dict[str, int]:
        limits = chat.bot.limits
        return {
            "max_chars": min(limits.max_chars, self.settings.max_message_chars),
            "max_user_messages": limits.max_user_messages,
            "user_messages": chat.user_messages,
        }

    @staticmethod
    def _replying_seq(chat: Chat, now: float) -> int | None:
        return chat.lease.user_seq + 1 if chat.lease and chat.replying(now) else None

    def _own_chat(self, connection: Connection, chat_id: str, **context: Any) -> Chat:
        return self._owned_by(connection, self.store.get_chat(chat_id), chat_id, **context)

    @staticmethod
    def _owned_by(connection: Connection, chat: Chat | None, chat_id: str, **context: Any) -> Chat:
        """`chat` (stored as `chat_id`, or None) if the connection's participant owns it."""
        if chat is None or chat.identity != connection.identity:
            raise ChatError("chat_not_found", chat_id=chat_id, **context)  # the same answer whether or not it exists
        return chat

    # -- history ----------------------------------------------------------------------
    def history(self, connection: Connection, action: History, respond: Respond) -> None:
        chat = self._own_chat(connection, action.chat_id)
        self.store.bind_connection(chat.chat_id, connection.connection_id)
        page, more = history_page(self.store.messages(chat.chat_id, after_seq=action.after_seq))
        respond(
            {
                "type": "history",
                "chat_id": chat.chat_id,
                "messages": page,
                "more": more,
                "replying": self._replying_seq(chat, self._clock()),
            }
        )

    # -- send -------------------------------------------------------------------------
    def send(self, connection: Connection, action: Send, endpoint: str, respond: Respond) -> None:
        context = {"chat_id": action.chat_id, "client_msg_id": action.client_msg_id}
        for _ in range(_APPEND_ATTEMPTS):  # an append that met a change (Conflict) reads again and decides afresh
            read = self.store.read_for_send(action.chat_id, action.client_msg_id, connection.identity.experiment)
            chat = self._owned_by(connection, read.chat, action.chat_id, client_msg_id=action.client_msg_id)
            self._check_text(chat, action.text, context)
            if read.client_seq is not None:  # a retry, or the same id raced in from another socket
                return self._resend(connection, chat, action, read.client_seq, endpoint, respond)
            now = self._clock()
            try:
                self._check_appendable(chat, now, context, read.controls)
            except ChatError:
                # read_for_send reads each item committed, not the batch as one (DynamoDB's
                # BatchGetItem): while another socket appends this very id, the chat may show that
                # append (lease held, one more message) and the id's record not yet. A refusal is
                # final only once the id alone, read after the chat, is unstored (refusals only).
                if (stored := self.store.find_client_message(chat.chat_id, action.client_msg_id)) is not None:
                    return self._resend(connection, chat, action, stored, endpoint, respond)
                raise
            seq = chat.next_seq
            message = Message(chat.chat_id, seq, "user", action.text, now, client_msg_id=action.client_msg_id)
            lease = self._queued_lease(now, seq)
            try:
                self.store.append_user_message(
                    chat, message, lease, connection.connection_id, chat.bot.limits.max_user_messages, now
                )
            except Conflict:
                continue
            respond({"type": "ack", **context, "seq": seq, "duplicate": False})
            self._enqueue(ReplyJob(chat.chat_id, seq, lease.turn_id, connection.connection_id, endpoint), context, respond)
            return None
        raise ChatError("reply_in_progress", **context)

    def _check_appendable(self, chat: Chat, now: float, context: dict[str, Any], controls: ControlItems) -> None:
        """Why a new message may not be stored now: the switches and budgets, the chat's message
        limit, a reply owed. The store's append holds to the last two under concurrency (Conflict)."""
        self._check_spending(chat, context, controls)
        if chat.user_messages >= chat.bot.limits.max_user_messages:
            raise ChatError("message_limit", **context)
        if chat.replying(now):
            raise ChatError("reply_in_progress", **context)

    def _queued_lease(self, now: float, user_seq: int) -> Lease:
        """The lease a reply holds while its job waits for a slot: long enough for the queue's
        wait, so a participant's retry does not queue the same reply twice meanwhile."""
        return Lease(uuid.uuid4().hex, now + self.settings.reply_queue_wait_seconds, user_seq)

    def _enqueue(self, job: ReplyJob, context: dict[str, Any], respond: Respond) -> None:
        """Queue the reply and say so; if the queue refuses, free the chat and tell the
        participant to retry (the message is stored: the retry only regenerates the reply)."""
        try:
            self.jobs.enqueue(job)
        except Exception:
            logger.exception("reply job not queued", extra={"chat_id": job.chat_id, "user_seq": job.user_seq})
            self.store.release_lease(job.chat_id, job.turn_id)
            respond(error_frame(ChatError("internal", **context, seq=job.user_seq + 1)))
            return
        respond(queued_frame(job.chat_id, job.user_seq + 1, context["client_msg_id"]))

    def _check_text(self, chat: Chat, text: str, context: dict[str, Any]) -> None:
        if is_blank(text):  # invisible characters alone are empty too
            raise ChatError("empty_message", **context)
        limit = min(chat.bot.limits.max_chars, self.settings.max_message_chars)
        if len(text) > limit:
            raise ChatError("message_too_long", f"Messages are limited to {limit} characters.", **context)

    def _check_spending(self, chat: Chat, context: dict[str, Any], items: ControlItems | None = None) -> None:
        """The kill switch and the token limits: refused before any model call is made (`items`:
        the chat's experiment's control items, if read already)."""
        controls = obeyed(items if items is not None else self.store.get_controls(chat.identity.experiment))
        if self.settings.paused or controls.paused:
            raise ChatError("paused", **context)
        if controls.llm_paused_until > self._clock():  # the breaker is open: fail fast, store nothing
            raise ChatError("llm_paused", **context)
        budget = controls.token_budget if controls.token_budget is not None else self.settings.token_budget
        _record_budget_use(controls.tokens_used, budget)
        if budget and controls.tokens_used >= budget:
            raise ChatError("budget_exhausted", **context)
        if chat.tokens_used >= chat.bot.limits.max_tokens_per_chat:
            raise ChatError("chat_token_limit", **context)

    def _resend(
        self, connection: Connection, chat: Chat, action: Send, seq: int, endpoint: str, respond: Respond
    ) -> None:
        """A retry of a stored message: acknowledge it again, and make sure its reply comes."""
        context = {"chat_id": chat.chat_id, "client_msg_id": action.client_msg_id}
        respond({"type": "ack", **context, "seq": seq, "duplicate": True})
        reply = self.store.get_message(chat.chat_id, seq + 1)
        if reply is not None and reply.role == "assistant":
            respond(message_frame(chat.chat_id, reply))
            return
        now = self._clock()
        chat = self.store.get_chat(chat.chat_id) or chat
        if chat.replying(now):  # the reply is queued or being written: have it pushed here from now on
            self.store.bind_connection(chat.chat_id, connection.connection_id)
            if chat.lease is not None and chat.lease.user_seq == seq and not chat.lease.claimed:
                respond(queued_frame(chat.chat_id, seq + 1, action.client_msg_id))
            return
        if chat.next_seq != seq + 1:  # later messages came after; this one stays unanswered
            return
        self._check_spending(chat, context)
        lease = self._queued_lease(now, seq)
        if self.store.take_lease(chat, lease, connection.connection_id, now):
            self._enqueue(ReplyJob(chat.chat_id, seq, lease.turn_id, connection.connection_id, endpoint), context, respond)
