"""The storage port: records and the storage primitives the domain needs.

Adapters store; they do not decide. Each operation is one atomic step (a read, a conditional
write or a transaction), so the domain never leaves a half-written turn behind, whatever fails
around it. A conditional write whose condition no longer holds writes nothing and says so: those
whose callers simply stop return False, the others raise `Conflict`, the one error the domain
handles by reading again and deciding afresh (why a message was refused, whether the breaker
opens). The policy itself lives in the domain: `chat` (refusals), `controls` (what the request
paths obey), `breaker` (the model's circuit breaker). Adapters: `adapters.dynamodb.DynamoStore`
(production, moto in tests) and, for the local stack, `adapters.sqlite.SqliteStore`; both are held to the
contract tests in tests/ws_handlers/test_store_contract.py. `AdminStore`, at the end, is the
operator's port (controls, allowlists, export, deletion), which the same adapters implement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Protocol

from .bot import Bot
from .identity import Identity, valid_code
from .model import Provenance


def chat_id_for(identity: Identity, chat_key: str) -> str:
    """The chat's id: one chat per (experiment, session, participant, chat key). The session is
    in it because a participant code reused in another session (a seat label, a Prolific ID) is
    another person, who must get a chat of their own."""
    return _hashed(identity.experiment, identity.session, identity.participant, chat_key)


def legacy_chat_id_for(identity: Identity, chat_key: str) -> str:
    """The id chats were stored under before ids named the session. Such a chat still resumes,
    but only for the session its stored identity names (`chat.ChatService.start`)."""
    return _hashed(identity.experiment, identity.participant, chat_key)


def _hashed(*names: str) -> str:
    # Names never contain the separator (tickets.valid_code), so three names never hash like four.
    return "c_" + hashlib.sha256("\x1f".join(names).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Connection:
    connection_id: str
    identity: Identity
    connected_at: float
    expires_at: int  #: epoch seconds; a record past it is treated as absent


@dataclass(frozen=True)
class Lease:
    """A reply owed: which turn writes it, until when, and which user message it answers.

    A lease starts queued (taken with the user message, for as long as a job may wait for a
    reply slot) and is claimed once by the reply function that runs the job, which shortens it
    to REPLY_LEASE_SECONDS and renews it while it writes. A second delivery of the same job
    finds it claimed and does nothing.
    """

    turn_id: str
    until: float
    user_seq: int
    claimed: bool = False


@dataclass(frozen=True)
class Chat:
    chat_id: str
    identity: Identity
    chat_key: str
    bot: Bot
    created_at: float
    next_seq: int = 1  #: the seq the next message will get
    user_messages: int = 0
    tokens_used: int = 0
    connection_id: str | None = None  #: where replies are pushed
    lease: Lease | None = None

    def replying(self, now: float) -> bool:
        """A lease is held while `until > now`; at `until` it has lapsed and may be taken."""
        return self.lease is not None and self.lease.until > now


@dataclass(frozen=True)
class Message:
    chat_id: str
    seq: int
    role: str  #: "user" or "assistant"
    text: str
    created_at: float
    client_msg_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None  #: the model the bot asked for (the alias): `provenance` says what answered
    latency_ms: int | None = None
    #: A generated reply's provenance, stored in the same write as the reply; None for participants'
    #: messages, openings, and replies stored before provenance was recorded.
    provenance: Provenance | None = None


@dataclass(frozen=True)
class Controls:
    """The experimenter's switches for one experiment (or the service as a whole): one CONTROL
    item as written (`AdminStore.read_controls`), or, merged with the service's and the breaker's
    (`controls.obeyed`), what the request paths obey."""

    paused: bool = False
    token_budget: int | None = None  #: None: use the TOKEN_BUDGET setting
    tokens_used: int = 0
    llm_paused_until: float = 0.0  #: the circuit breaker: no model calls before this time (merged only)
    #: The experiment admits only the codes on its allowlist (`chat-ops allowlist`). A flag on
    #: the CONTROL item the connect path reads anyway, so an open experiment costs no extra read.
    allowlist: bool = False


@dataclass(frozen=True)
class BreakerState:
    """The model's circuit breaker as stored, one record for every function instance
    (`breaker` decides how a failure changes it)."""

    failures: int = 0  #: failures counted in the current window
    window_start: float = 0.0  #: when the current window began
    open_until: float = 0.0  #: no model calls before this time

    def is_open(self, now: float) -> bool:
        return self.open_until > now


@dataclass(frozen=True)
class ControlItems:
    """What the request paths read before they act, as written, in one request: the experiment's
    CONTROL item, the service's, and the breaker. `controls.obeyed` merges them."""

    experiment: Controls
    service: Controls
    breaker: BreakerState


@dataclass(frozen=True)
class SendItems:
    """What a `send` reads before it decides, in one request: the chat, the seq its client
    message id is stored under (a retry) and the control items of the sender's experiment."""

    chat: Chat | None
    client_seq: int | None
    controls: ControlItems


#: Participant codes given to an allowlist change (AdminStore.add_to_allowlist ...).
Codes = Collection[str]


class StoreError(Exception):
    """Base of the store's refusals."""


class Conflict(StoreError):
    """A conditional write found the records otherwise than the caller read them (the chat moved
    on, a lease is held, a limit is reached, the record exists): nothing was written. The domain
    reads again and decides."""


class StoreThrottled(StoreError):
    """The database refused for capacity; retryable."""


class Store(Protocol):
    # connections
    def put_connection(self, connection: Connection) -> None: ...
    def delete_connection(self, connection_id: str) -> None: ...
    def count_frame(self, connection_id: str, now: float, window: float) -> tuple[Connection, int] | None:
        """The live connection and how many frames it sent in the current `window`-second
        window, this one included (a flood guard); None when the connection is unknown."""
        ...

    # controls
    def get_controls(self, experiment: str) -> ControlItems:
        """The experiment's and the service's CONTROL items and the breaker, as written, read
        consistently (on DynamoDB in one request); an item left unread raises StoreThrottled, never
        reads as absent (pause and budget fail closed). `controls.obeyed` merges them."""
        ...

    def on_allowlist(self, experiment: str, participant: str) -> bool:
        """Whether the experiment's allowlist names the participant: one read by key
        (`ALLOW#experiment`, participant), asked only when `Controls.allowlist` is set."""
        ...

    # chats
    def get_chat(self, chat_id: str) -> Chat | None: ...
    def open_chat(self, chat: Chat, opening: Message | None, max_chats: int) -> Chat:
        """Create the chat (and its opening message) and count it against the participant's
        `max_chats` in the chat's session (a code reused in another session is counted afresh).

        Raises Conflict, writing nothing, when the chat exists or the count is at `max_chats`.
        """
        ...

    def bind_connection(self, chat_id: str, connection_id: str) -> None:
        """Push the chat's replies to this connection from now on; Conflict when there is no such chat."""
        ...

    # messages
    def messages(self, chat_id: str, after_seq: int = 0, limit: int | None = None) -> list[Message]: ...
    def get_message(self, chat_id: str, seq: int) -> Message | None: ...
    def find_client_message(self, chat_id: str, client_msg_id: str) -> int | None: ...
    def read_for_send(self, chat_id: str, client_msg_id: str, experiment: str) -> SendItems:
        """`get_chat`, `find_client_message` and `get_controls` in one request (a send's reads
        before its append; on DynamoDB one BatchGetItem), each item as consistent as those
        are, not a snapshot of all; an item left unread raises StoreThrottled."""
        ...

    def append_user_message(
        self, chat: Chat, message: Message, lease: Lease, connection_id: str, max_user_messages: int, now: float
    ) -> None:
        """Store the user message as seq `chat.next_seq`, record its client_msg_id and take the reply
        lease, atomically, if the chat is still at `chat.next_seq` with fewer than
        `max_user_messages`, no lease held at `now` and the client_msg_id not stored.

        Raises Conflict otherwise, writing nothing: the domain reads again to tell why.
        """
        ...

    def take_lease(self, chat: Chat, lease: Lease, connection_id: str, now: float) -> bool:
        """Take the lease to (re)generate a reply, if the chat is still at `chat.next_seq`."""
        ...

    def claim_turn(self, chat_id: str, turn_id: str, until: float) -> Chat | None:
        """Claim the lease of `turn_id` for the one delivery that will write its reply, until
        `until`, and return the chat as the claim left it (one request: the reply's first read
        comes with its claim). None when the lease is another turn's or already claimed (a
        duplicate delivery), or the chat is gone."""
        ...

    def finish_reply(self, chat: Chat, reply: Message, turn_id: str) -> bool:
        """Store the reply as seq `reply.seq`, count its tokens in the chat and free the lease,
        atomically, touching only the chat's own records.

        False (and nothing written) when the turn no longer holds the lease or the seq is taken.
        Raises StoreThrottled when contention or capacity outlast the retries.
        """
        ...

    def count_tokens(self, experiment: str, tokens: int) -> None:
        """Add spent tokens to the experiment's total (what its budget is checked against).

        Kept out of `finish_reply`'s transaction on purpose: a record every reply writes would
        serialise the experiment's replies and cancel concurrent ones (docs/architecture.md).
        """
        ...

    def renew_lease(self, chat_id: str, turn_id: str, until: float) -> bool:
        """Extend the lease while the turn holds it (even lapsed); False when another turn took it."""
        ...

    def release_lease(self, chat_id: str, turn_id: str) -> None: ...

    # the model's circuit breaker, one record shared by every function instance (`breaker`)
    def read_breaker(self) -> BreakerState:
        """The breaker as stored (consistent); the initial state when nothing was ever recorded."""
        ...

    def replace_breaker(self, seen: BreakerState, new: BreakerState) -> None:
        """Store `new` if the breaker is still as `seen` (read by `read_breaker`); else Conflict,
        writing nothing: another instance changed it meanwhile."""
        ...


@dataclass(frozen=True)
class Deleted:
    """What an operator's deletion removed, by kind of record."""

    chats: int = 0
    messages: int = 0
    connections: int = 0
    records: int = 0  #: the rest: client message ids, per-participant counters, controls

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(self.chats + other.chats, self.messages + other.messages,
                       self.connections + other.connections, self.records + other.records)


class AdminStore(Protocol):
    """The operator's port (`python -m ws_handlers.ops`), beside the chat domain's `Store`.

    Never on a request path: these operations read or delete whole experiments (Query over
    the `by_experiment` index, a Scan of the small connections table). Both adapters
    implement it, held to the same contract tests as `Store`.
    """

    def read_controls(self, experiment: str | None) -> Controls:
        """One CONTROL item as written (None: the service's switch), not merged with any other:
        `controls.obeyed` is what the request paths obey."""
        ...

    def read_breaker(self) -> BreakerState:
        """As `Store.read_breaker`: the model's circuit breaker, for `chat-ops status`."""
        ...

    def set_controls(
        self, experiment: str | None, *, paused: bool | None = None, token_budget: int | None = None,
        clear_budget: bool = False,
    ) -> None:
        """Write the experiment's (None: the service's) switches; None leaves a field as it is,
        `clear_budget` removes the budget (TOKEN_BUDGET applies again); tokens_used is never touched."""
        ...

    def add_to_allowlist(self, experiment: str, participants: Codes) -> None:
        """Turn the experiment's allowlist on (the flag first: an interrupted upload refuses some
        invited participants, never admits uninvited ones) and add the codes; codes already on it
        stay once."""
        ...

    def remove_from_allowlist(self, experiment: str, participants: Codes) -> None:
        """Remove the codes; the allowlist stays on, so removing the last code admits nobody."""
        ...

    def allowlist(self, experiment: str, page_size: int = 500) -> Iterator[str]:
        """The codes on the experiment's allowlist in order, read `page_size` at a time."""
        ...

    def clear_allowlist(self, experiment: str) -> int:
        """Remove every code, then the flag (anyone with a valid token is admitted again); how many
        codes were removed. Idempotent: run it again after an interruption."""
        ...

    def experiment_chats(
        self, experiment: str, session: str | None = None, participant: str | None = None, page_size: int = 500
    ) -> Iterator[Chat]:
        """The experiment's chats by session, participant and chat key, read `page_size` at a time."""
        ...

    def messages(self, chat_id: str, after_seq: int = 0, limit: int | None = None) -> list[Message]:
        """As `Store.messages`; `message_pages` reads a chat through it, a page at a time."""
        ...

    def connections(self, experiment: str | None = None) -> Iterator[Connection]:
        """Connection records, expired ones included (TTL deletes them lazily): filter on expires_at."""
        ...

    def delete_participant(self, experiment: str, participant: str, session: str | None = None) -> Deleted:
        """Remove the participant's chats, messages, connections, counters and allowlist entry
        (with `session`, only that session's chats and connections: the allowlist entry stays).
        Idempotent: run it again after an interruption."""
        ...

    def delete_experiment(self, experiment: str) -> Deleted:
        """Remove every chat, message, connection, counter, control and allowlist code of the experiment."""
        ...


def check_controls_change(experiment: str | None, token_budget: int | None, clear_budget: bool) -> None:
    """Refuse a `set_controls` that no adapter could write faithfully (ValueError)."""
    if experiment == "":
        raise ValueError("experiment must be a name, or None for the service-wide controls")
    if experiment is None and (token_budget is not None or clear_budget):
        raise ValueError("the service-wide controls have no token budget; set TOKEN_BUDGET instead")
    if token_budget is not None and (clear_budget or token_budget < 0):
        raise ValueError("token_budget must be a non-negative integer, and not given with clear_budget")


def check_allowlist_change(experiment: str, participants: Codes) -> None:
    """Refuse codes no token could carry (ValueError): they would never match a participant."""
    for name in (experiment, *participants):
        if not valid_code(name):
            raise ValueError(f"{name!r} is not an experiment name or participant code "
                             "(1 to 64 characters of A-Z a-z 0-9 _ . : -)")


def message_pages(
    store: Store | AdminStore, chat_id: str, after_seq: int = 0, page_size: int = 500
) -> Iterator[list[Message]]:
    """A chat's messages after `after_seq` in seq order, `page_size` at a time: one
    `messages` read per page, so a long chat is never held whole."""
    while True:
        page = store.messages(chat_id, after_seq, page_size)
        if page:
            yield page
        if len(page) < page_size:
            return
        after_seq = page[-1].seq
