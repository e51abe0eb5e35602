"""The store on SQLite: the embedded default of the local stack.

Why SQLite: the local stack must run on one laptop without AWS, keep its data across
restarts and stay fast as transcripts pile up. moto's DynamoDB sorts the whole table on
every Query (320 queries/s at 100 items, 26/s at 4,000); SQLite, in the standard library,
answers the same reads through a primary key in microseconds whatever the file's size, and
its transactions give the conditional writes of `dynamodb.DynamoStore` exactly: each
operation checks its conditions and writes inside one `BEGIN IMMEDIATE` transaction, so
a refused condition writes nothing and no concurrent writer can interleave.

Tables mirror the DynamoDB items: `chats` (the META item: counters, binding, lease),
`messages` (one row per message, keyed (chat_id, seq), with the fields an export needs and a
reply's provenance),
`client_messages` ((chat_id, client_msg_id) -> seq, for idempotent retries),
`participants` (chats opened per session), `controls` (pause switch, token budget and tokens used per
experiment; the row with experiment '' is the service-wide `SERVICE` item), `allowlists` (the
experiments whose allowlist is on: the CONTROL item's flag), `allowlist` ((experiment,
participant): the `ALLOW#` items), `studies` and `assignments` (a study's `STUDY#` items:
definition, seed, key hash and entries counter; one row per participant's arm) and
`connections` (a row past `expires_at` reads as absent, as on DynamoDB before TTL deletes
it; nothing deletes it here: a row per connect is negligible on one laptop). The operator's
methods at the end (`store.AdminStore`, for `python -m ws_handlers.ops`) page through an
experiment along the `chats_by_experiment` index and delete in one transaction.

Concurrency: writes go through one connection behind one lock, a transaction at a time;
reads through one connection per thread, with no lock (in WAL mode a reader never waits
for the writer). An earlier measurement (16 handler + 16 reply threads making whole turns)
found that a connection per thread for *writes* gave fewer turns per second and a p99
several times longer, whether writers queued on a Python lock or in SQLite's sleeping busy
handler (stalls up to 2 s), so writes stay serialised. Reads once shared that lock too; at
200 participants every reply's reads then queued behind every write while the lock's
holder waited for the GIL (docs/benchmarks.md), hence the readers.

Other processes on the file (the reply function's worker processes, operator tools) queue for
the write lock too: each store takes an exclusive `flock` on a file beside the database
(`<file>-lock`) around each write transaction. SQLite's own wait for another process's lock
is its busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ms and longer between tries, whatever
the other writer holds it for (0.1-1 ms here); the store's writer slept on while the lock was
free, and every write of its process waited behind it. In a burst of 200 sends the stack's
writer slept 0.67 s of the round's 1.25 s that way, once 107 ms at a time (docs/benchmarks.md,
phase 8). Waiting in `flock`, a writer wakes when the one before it unlocks, and the kernel
releases the lock of a process that dies. SQLite's lock still guards the file against writers
that take no `flock` (the `sqlite3` shell); for those the busy timeout stands, and when it runs
out the store raises StoreThrottled, as the DynamoDB adapter does on throttling.

Durability: WAL with `synchronous=NORMAL`. A commit is in the WAL, in the operating
system's hands, before it returns, so nothing committed is lost when the process is
killed (SIGTERM, Ctrl-C, SIGKILL) and a transaction cut mid-way is never visible. Only a
power loss or OS crash can drop the last commits (never corrupt the file). That is the
right trade for a laptop stack: `FULL` would fsync on every commit, and every message
and lease is a commit.

The file lost: deleted (or another put in its place) while the stack runs, the open
connections went on writing into the unlinked file, new ones opened an empty file, and every
request failed for ever. The store remembers the file it opened (device and inode) and checks
the path before each commit and each new connection, a `stat` costing microseconds: if the
path no longer names that file, the transaction is rolled back and the store raises
`StoreFileLost` from then on, tells `on_lost` once (the stack stops), and `save_copy` writes
what it still holds beside the path. A new connection never creates the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..bot import Bot
from ..enrolment import Assignment, StudyRecord
from ..identity import Identity
from ..model import PROVENANCE_FIELDS, Provenance
from ..store import (
    BreakerState,
    Chat,
    Codes,
    Conflict,
    Connection,
    ControlItems,
    Controls,
    Deleted,
    Lease,
    Message,
    SendItems,
    StoreError,
    StoreThrottled,
    check_allowlist_change,
    check_controls_change,
)
from ..study import Study, study_from_dict, study_to_dict

SCHEMA_VERSION = 5  #: PRAGMA user_version; each migration bumps it
_SERVICE = ""  #: the `controls` row of the service as a whole (no experiment is named '')

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS connections (
        connection_id TEXT PRIMARY KEY,
        participant TEXT NOT NULL, experiment TEXT NOT NULL, session TEXT NOT NULL,
        connected_at REAL NOT NULL, expires_at INTEGER NOT NULL,
        rate_window INTEGER NOT NULL DEFAULT 0, rate_count INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS chats (
        chat_id TEXT PRIMARY KEY,
        experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, chat_key TEXT NOT NULL,
        bot TEXT NOT NULL, bot_name TEXT NOT NULL, created_at REAL NOT NULL,
        next_seq INTEGER NOT NULL, user_messages INTEGER NOT NULL, tokens_used INTEGER NOT NULL,
        connection_id TEXT, lease_turn TEXT, lease_until REAL, lease_seq INTEGER,
        lease_claimed INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS chats_by_experiment ON chats (experiment, session, participant, chat_key)",
    """CREATE TABLE IF NOT EXISTS messages (
        chat_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL,
        created_at REAL NOT NULL, client_msg_id TEXT,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, model TEXT, latency_ms INTEGER,
        model_snapshot TEXT, system_fingerprint TEXT, parameters TEXT, system_prompt_sha256 TEXT,
        experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, chat_key TEXT NOT NULL,
        bot_name TEXT NOT NULL,
        PRIMARY KEY (chat_id, seq))""",
    """CREATE TABLE IF NOT EXISTS client_messages (
        chat_id TEXT NOT NULL, client_msg_id TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (chat_id, client_msg_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS participants (
        experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, chats INTEGER NOT NULL,
        PRIMARY KEY (experiment, session, participant)) WITHOUT ROWID""",
    # Tables of their own, not columns: an older file gains them on opening, without a migration.
    "CREATE TABLE IF NOT EXISTS allowlists (experiment TEXT PRIMARY KEY) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS allowlist (
        experiment TEXT NOT NULL, participant TEXT NOT NULL,
        PRIMARY KEY (experiment, participant)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS llm_breaker (
        id INTEGER PRIMARY KEY CHECK (id = 1), failures INTEGER NOT NULL, window_start REAL NOT NULL,
        open_until REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS studies (
        study TEXT PRIMARY KEY, definition TEXT NOT NULL, seed BLOB NOT NULL, key_sha256 TEXT NOT NULL,
        entries INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS assignments (
        study TEXT NOT NULL, participant TEXT NOT NULL, arm TEXT NOT NULL, place INTEGER NOT NULL,
        entered_at REAL NOT NULL, platform_ids TEXT NOT NULL,
        PRIMARY KEY (study, participant)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS controls (
        experiment TEXT PRIMARY KEY, paused INTEGER, token_budget INTEGER,
        tokens_used INTEGER NOT NULL DEFAULT 0)""",
)

#: From each version to the next, for files written by older code: columns added, as
#: (table, column definition). A table the file lacks is created whole by _SCHEMA instead.
_MIGRATIONS = {
    1: (
        ("connections", "rate_window INTEGER NOT NULL DEFAULT 0"),
        ("connections", "rate_count INTEGER NOT NULL DEFAULT 0"),
    ),
    2: (("chats", "lease_claimed INTEGER NOT NULL DEFAULT 0"),),
    # a reply's provenance; the replies stored before it have none (NULL)
    4: tuple(("messages", f"{name} TEXT") for name in PROVENANCE_FIELDS),
}
#: From each version to the next: tables dropped before _SCHEMA creates them anew, and how they are
#: filled again. Version 3 counted chats per experiment and participant; every chat is a row of
#: `chats`, so counting those rows per session is exact.
_REBUILDS = {
    3: (("participants", "INSERT INTO participants SELECT experiment, session, participant, count(*) FROM chats "
                         "GROUP BY experiment, session, participant"),),
}

_CHAT_COLUMNS = (
    "chat_id, participant, experiment, session, chat_key, bot, created_at, next_seq, user_messages, "
    "tokens_used, connection_id, lease_turn, lease_until, lease_seq, lease_claimed"
)
_CHAT_WIDTH = len(_CHAT_COLUMNS.split(", "))
_JOINED_CHAT_COLUMNS = ", ".join(f"c.{column}" for column in _CHAT_COLUMNS.split(", "))  #: chats AS c
#: The control items (`get_controls`, `read_for_send`): the experiment's row and its allowlist
#: flag, the service's row, the breaker's; NULL columns where a row is absent.
_CONTROL_COLUMNS = (
    "e.paused, e.token_budget, e.tokens_used, EXISTS (SELECT 1 FROM allowlists WHERE experiment = :experiment), "
    "s.paused, s.token_budget, s.tokens_used, b.id, b.failures, b.window_start, b.open_until"
)
_CONTROL_JOINS = (
    "LEFT JOIN controls AS e ON e.experiment = :experiment LEFT JOIN controls AS s ON s.experiment = :service "
    "LEFT JOIN llm_breaker AS b ON b.id = 1"
)
_MESSAGE_COLUMNS = (
    "chat_id, seq, role, text, created_at, client_msg_id, prompt_tokens, completion_tokens, model, latency_ms, "
    + ", ".join(PROVENANCE_FIELDS)
)
_ASSIGNMENT_COLUMNS = "study, participant, arm, place, entered_at, platform_ids"
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

#: Which file a path names: (device, inode); None when nothing is there.
FileIdentity = tuple[int, int] | None


class StoreFileLost(StoreError):
    """The store's file was deleted or replaced while it was open: nothing more is served from it."""


class SqliteStore:
    """The `Store` port on one SQLite file, shared by every thread of the process."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0,
        on_lost: Callable[[str], None] | None = None, same_as: FileIdentity = None,
    ) -> None:
        """`on_lost` is told (once, from the thread that found out, without blocking) when the file
        is lost; `same_as` is the file another process opened (the stack's, for its reply
        workers): only that file is opened, never a new one."""
        self.path = os.fspath(path)
        self._on_lost = on_lost
        self._lost: str | None = None  #: why nothing more is served, once the file is lost
        if same_as is not None and _identity(self.path) != same_as:
            raise StoreFileLost(self._lost_message())
        _keep_private(self.path)
        self._lock = threading.Lock()  # one write transaction at a time on the write connection
        #: held around each write transaction, so that writers of all processes queue in the kernel
        self._queue = os.open(f"{self.path}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self.identity = _identity(self.path)  #: the file opened: what the path must go on naming
        # Reads go through reader connections with no lock: in WAL mode readers never wait for
        # the writer. Sharing one connection (and its lock) made every reply's reads queue behind
        # every write; under load a thread holding the lock waited for the GIL. A read borrows an
        # idle reader for its one statement (`_reading`), so a thread's first read reuses one
        # whose statements are compiled: a new connection's first statements cost ~1.5 ms of CPU
        # (the schema read and compiled again), which every new reply thread used to pay.
        self._busy_timeout = busy_timeout
        self._readers: list[sqlite3.Connection] = []  #: every reader opened (closed with the store)
        self._idle: list[sqlite3.Connection] = []  #: readers not in use, the last returned on top
        self._closed = False
        try:
            self._db.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{self.path} has schema version {version}; this code knows {SCHEMA_VERSION}")
                if version == 0:  # a new file
                    for statement in _SCHEMA:
                        db.execute(statement)
                else:
                    rebuilt = [pair for step in range(version, SCHEMA_VERSION) for pair in _REBUILDS.get(step, ())]
                    for step in range(version, SCHEMA_VERSION):
                        for table, column in _MIGRATIONS.get(step, ()):
                            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                          (table,)).fetchone():
                                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                    for table, _ in rebuilt:
                        db.execute(f"DROP TABLE IF EXISTS {table}")
                    for statement in _SCHEMA:  # tables added since; all IF NOT EXISTS
                        db.execute(statement)
                    for _, fill in rebuilt:
                        db.execute(fill)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            os.close(self._queue)
            raise

    # -- plumbing ---------------------------------------------------------------
    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    def _new_reader(self) -> sqlite3.Connection:
        self._refuse_if_closed()
        self.check()
        reader = sqlite3.connect(f"{Path(os.path.abspath(self.path)).as_uri()}?mode=rw", uri=True,  # never creates
                                 timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._readers.append(reader)
        return reader

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A reader for one statement: the idle one used last, else a new one. (`list.pop` and
        `append` are atomic, so no lock: two threads never get the same reader.) One left inside a
        transaction by a failure is not lent again."""
        try:
            reader = self._idle.pop()
        except IndexError:
            reader = self._new_reader()
        try:
            yield reader
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # the store was closed meanwhile
                if not reader.in_transaction:
                    self._idle.append(reader)

    def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[tuple[Any, ...]]:
        if self._lost is not None:
            raise StoreFileLost(self._lost)
        with _throttled(), self._reading() as reader:
            return reader.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block returns (and the file is still there),
        rolled back if it raises."""
        with self._lock, _throttled(), self._queued():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                self.check()  # never commit (and acknowledge) into a file nobody will read again
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _queued(self) -> Iterator[None]:
        """This process's turn at the file's write lock, behind other processes' (the module says why)."""
        self._refuse_if_closed()  # its lock file's descriptor is closed, and the number may name another file
        fcntl.flock(self._queue, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(self._queue, fcntl.LOCK_UN)

    def check(self) -> None:
        """Raise StoreFileLost if the path no longer names the file opened (deleted or replaced)."""
        if self._lost is None and _identity(self.path) != self.identity:
            self._lost = self._lost_message()
            if self._on_lost is not None:
                self._on_lost(self._lost)
        if self._lost is not None:
            raise StoreFileLost(self._lost)

    def _lost_message(self) -> str:
        return (f"the store's file {self.path} was deleted or replaced while in use; "
                "nothing more is stored or served from it")

    def save_copy(self) -> Path:
        """Write what this store still holds (its open file, even deleted) to a new file beside the
        path, private like the store; its path. The directory is made again if it went too."""
        target = Path(f"{self.path}.saved-{time.strftime('%Y%m%d-%H%M%S')}")
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _keep_private(os.fspath(target))
        copy = sqlite3.connect(target)
        try:
            with self._lock:
                self._db.backup(copy)
        finally:
            copy.close()
        return target

    def close(self) -> None:
        """Close the file (after a transaction in progress); closing checkpoints the WAL into it."""
        with self._lock:
            if self._closed:  # once: the lock file's descriptor number may name another file by now
                return
            self._closed = True
            for reader in self._readers:
                reader.close()
            self._db.close()
            os.close(self._queue)

    # -- connections --------------------------------------------------------------
    def put_connection(self, connection: Connection) -> None:
        who = connection.identity
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO connections "
                "(connection_id, participant, experiment, session, connected_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (connection.connection_id, who.participant, who.experiment, who.session,
                 connection.connected_at, connection.expires_at),
            )

    def count_frame(self, connection_id: str, now: float, window: float) -> tuple[Connection, int] | None:
        current = int(now // window)
        with self._write() as db:
            row = db.execute(
                "UPDATE connections SET rate_count = CASE WHEN rate_window = ? THEN rate_count + 1 ELSE 1 END, "
                "rate_window = ? WHERE connection_id = ? AND expires_at > ? "
                "RETURNING participant, experiment, session, connected_at, expires_at, rate_count",
                (current, current, connection_id, now),
            ).fetchone()
        if row is None:
            return None
        participant, experiment, session, connected_at, expires_at, count = row
        return Connection(connection_id, Identity(participant, experiment, session), connected_at, expires_at), count

    def delete_connection(self, connection_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM connections WHERE connection_id = ?", (connection_id,))

    # -- controls ---------------------------------------------------------------------
    def get_controls(self, experiment: str) -> ControlItems:
        """The three items in one statement, as DynamoDB's adapter reads them in one BatchGetItem:
        every send and every enrolment reads them."""
        row = self._read(f"SELECT {_CONTROL_COLUMNS} FROM (SELECT 1) {_CONTROL_JOINS}",
                         {"experiment": experiment, "service": _SERVICE})[0]
        return _control_items(row)

    def on_allowlist(self, experiment: str, participant: str) -> bool:
        return bool(self._read("SELECT 1 FROM allowlist WHERE experiment = ? AND participant = ?",
                               (experiment, participant)))

    def _allowlist_on(self, experiment: str | None) -> bool:
        return bool(self._read("SELECT 1 FROM allowlists WHERE experiment = ?", (experiment,)))

    def read_breaker(self) -> BreakerState:
        rows = self._read("SELECT failures, window_start, open_until FROM llm_breaker WHERE id = 1", ())
        return BreakerState(*rows[0]) if rows else BreakerState()

    def replace_breaker(self, seen: BreakerState, new: BreakerState) -> None:
        with self._write() as db:
            row = db.execute("SELECT failures, window_start, open_until FROM llm_breaker WHERE id = 1").fetchone()
            if (BreakerState(*row) if row else BreakerState()) != seen:
                raise Conflict("the breaker changed meanwhile")
            db.execute("INSERT OR REPLACE INTO llm_breaker (id, failures, window_start, open_until) VALUES (1, ?, ?, ?)",
                       (new.failures, new.window_start, new.open_until))

    def set_controls(
        self, experiment: str | None, *, paused: bool | None = None, token_budget: int | None = None,
        clear_budget: bool = False,
    ) -> None:
        """What an operator writes to an `EXP#experiment` (or, with None, the `SERVICE`) CONTROL item.

        None leaves a field as it is, `clear_budget` removes the budget (TOKEN_BUDGET applies
        again); tokens_used is never touched. The service-wide item has only the pause switch
        (`controls.obeyed` takes no budget from it: TOKEN_BUDGET is that).
        """
        check_controls_change(experiment, token_budget, clear_budget)
        with self._write() as db:
            db.execute(
                "INSERT INTO controls (experiment, paused, token_budget) VALUES (?, ?, ?) "
                "ON CONFLICT (experiment) DO UPDATE SET paused = coalesce(excluded.paused, paused), "
                f"token_budget = {'NULL' if clear_budget else 'coalesce(excluded.token_budget, token_budget)'}",
                (_SERVICE if experiment is None else experiment, paused, token_budget),
            )

    # -- chats ------------------------------------------------------------------------
    def get_chat(self, chat_id: str) -> Chat | None:
        rows = self._read(f"SELECT {_CHAT_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,))
        return _chat(rows[0]) if rows else None

    def open_chat(self, chat: Chat, opening: Message | None, max_chats: int) -> Chat:
        who = chat.identity
        with self._write() as db:
            if db.execute("SELECT 1 FROM chats WHERE chat_id = ?", (chat.chat_id,)).fetchone():
                raise Conflict(f"open_chat: {chat.chat_id} exists")
            opened = db.execute(
                "SELECT chats FROM participants WHERE experiment = ? AND session = ? AND participant = ?",
                (who.experiment, who.session, who.participant),
            ).fetchone()
            if opened is not None and opened[0] >= max_chats:  # as on DynamoDB, a first chat is always allowed
                raise Conflict(f"open_chat: {who.participant} has {opened[0]} chats in {who.session}")
            db.execute(
                "INSERT INTO participants VALUES (?, ?, ?, 1) "
                "ON CONFLICT (experiment, session, participant) DO UPDATE SET chats = chats + 1",
                (who.experiment, who.session, who.participant),
            )
            db.execute(
                f"INSERT INTO chats ({_CHAT_COLUMNS}, bot_name) VALUES ({', '.join('?' * 16)})",
                (chat.chat_id, who.participant, who.experiment, who.session, chat.chat_key,
                 json.dumps(chat.bot.to_dict()), chat.created_at, chat.next_seq, 0, 0, chat.connection_id,
                 None, None, None, 0, chat.bot.name),
            )
            if opening is not None:
                try:
                    _insert_message(db, chat, opening)
                except sqlite3.IntegrityError:  # a message without its chat: refused as on DynamoDB
                    raise Conflict(f"open_chat: seq {opening.seq} of {chat.chat_id} is taken") from None
        return chat

    def bind_connection(self, chat_id: str, connection_id: str) -> None:
        with self._write() as db:
            bound = db.execute("UPDATE chats SET connection_id = ? WHERE chat_id = ?", (connection_id, chat_id))
            if bound.rowcount == 0:
                raise Conflict(f"no chat {chat_id}")

    # -- messages -------------------------------------------------------------------
    def messages(self, chat_id: str, after_seq: int = 0, limit: int | None = None) -> list[Message]:
        if limit is not None and limit < 1:  # DynamoDB refuses Limit < 1 as well
            raise ValueError("limit must be at least 1")
        rows = self._read(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (chat_id, after_seq, -1 if limit is None else limit),
        )
        return [_message(row) for row in rows]

    def get_message(self, chat_id: str, seq: int) -> Message | None:
        rows = self._read(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND seq = ?", (chat_id, seq))
        return _message(rows[0]) if rows else None

    def read_for_send(self, chat_id: str, client_msg_id: str, experiment: str) -> SendItems:
        row = self._read(
            f"SELECT {_JOINED_CHAT_COLUMNS}, m.seq, {_CONTROL_COLUMNS} FROM (SELECT 1) "
            "LEFT JOIN chats AS c ON c.chat_id = :chat_id "
            "LEFT JOIN client_messages AS m ON m.chat_id = :chat_id AND m.client_msg_id = :client_msg_id "
            + _CONTROL_JOINS,
            {"chat_id": chat_id, "client_msg_id": client_msg_id, "experiment": experiment, "service": _SERVICE},
        )[0]
        chat, (client_seq, *controls) = row[:_CHAT_WIDTH], row[_CHAT_WIDTH:]
        return SendItems(None if chat[0] is None else _chat(chat), client_seq, _control_items(controls))

    def find_client_message(self, chat_id: str, client_msg_id: str) -> int | None:
        rows = self._read(
            "SELECT seq FROM client_messages WHERE chat_id = ? AND client_msg_id = ?", (chat_id, client_msg_id)
        )
        return rows[0][0] if rows else None

    def append_user_message(
        self, chat: Chat, message: Message, lease: Lease, connection_id: str, max_user_messages: int, now: float
    ) -> None:
        seq = chat.next_seq
        assert message.seq == seq and message.client_msg_id
        with self._write() as db:
            advanced = db.execute(
                "UPDATE chats SET next_seq = ?, connection_id = ?, lease_turn = ?, lease_until = ?, lease_seq = ?, "
                "lease_claimed = 0, user_messages = user_messages + 1 "
                "WHERE chat_id = ? AND next_seq = ? AND user_messages < ? AND (lease_until IS NULL OR lease_until <= ?)",
                (seq + 1, connection_id, lease.turn_id, lease.until, lease.user_seq, chat.chat_id, seq,
                 max_user_messages, now),
            )
            if advanced.rowcount == 0:
                raise Conflict(f"append_user_message: {chat.chat_id} is no longer at seq {seq}, or is busy or full")
            try:  # the transaction rolls back if the id is stored, or the seq taken though META points at it
                _insert_message(db, chat, message)
                db.execute("INSERT INTO client_messages VALUES (?, ?, ?)", (chat.chat_id, message.client_msg_id, seq))
            except sqlite3.IntegrityError:
                raise Conflict(f"append_user_message: {message.client_msg_id} or seq {seq} is stored") from None

    def take_lease(self, chat: Chat, lease: Lease, connection_id: str, now: float) -> bool:
        with self._write() as db:
            taken = db.execute(
                "UPDATE chats SET connection_id = ?, lease_turn = ?, lease_until = ?, lease_seq = ?, lease_claimed = 0 "
                "WHERE chat_id = ? AND next_seq = ? AND (lease_until IS NULL OR lease_until <= ?)",
                (connection_id, lease.turn_id, lease.until, lease.user_seq, chat.chat_id, chat.next_seq, now),
            )
            return taken.rowcount == 1

    def claim_turn(self, chat_id: str, turn_id: str, until: float) -> Chat | None:
        with self._write() as db:
            row = db.execute(
                "UPDATE chats SET lease_claimed = 1, lease_until = ? WHERE chat_id = ? AND lease_turn = ? "
                f"AND lease_claimed = 0 RETURNING {_CHAT_COLUMNS}",
                (until, chat_id, turn_id),
            ).fetchone()
        return None if row is None else _chat(row)

    def finish_reply(self, chat: Chat, reply: Message, turn_id: str) -> bool:
        tokens = reply.prompt_tokens + reply.completion_tokens
        with self._write() as db:
            if db.execute("SELECT 1 FROM messages WHERE chat_id = ? AND seq = ?", (chat.chat_id, reply.seq)).fetchone():
                return False
            finished = db.execute(
                "UPDATE chats SET next_seq = ?, tokens_used = tokens_used + ?, "
                "lease_turn = NULL, lease_until = NULL, lease_seq = NULL, lease_claimed = 0 "
                "WHERE chat_id = ? AND next_seq = ? AND lease_turn = ?",
                (reply.seq + 1, tokens, chat.chat_id, reply.seq, turn_id),
            )
            if finished.rowcount == 0:
                return False
            _insert_message(db, chat, reply)
        return True

    def count_tokens(self, experiment: str, tokens: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO controls (experiment, tokens_used) VALUES (?, ?) "
                "ON CONFLICT (experiment) DO UPDATE SET tokens_used = tokens_used + excluded.tokens_used",
                (experiment, tokens),
            )

    def renew_lease(self, chat_id: str, turn_id: str, until: float) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE chats SET lease_until = ? WHERE chat_id = ? AND lease_turn = ?", (until, chat_id, turn_id)
            )
            return cursor.rowcount == 1

    def release_lease(self, chat_id: str, turn_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE chats SET lease_turn = NULL, lease_until = NULL, lease_seq = NULL, lease_claimed = 0 "
                "WHERE chat_id = ? AND lease_turn = ?",
                (chat_id, turn_id),
            )

    def release_all_leases(self) -> int:
        """Free every chat (the local stack at start): the jobs that held leases were queued in
        memory and died with the previous run, so nobody will write those replies. Returns how
        many chats were freed; their participants' retries regenerate the replies at once."""
        with self._write() as db:
            return db.execute(
                "UPDATE chats SET lease_turn = NULL, lease_until = NULL, lease_seq = NULL, lease_claimed = 0 "
                "WHERE lease_turn IS NOT NULL"
            ).rowcount

    # -- studies (enrolment.StudyStore, and StudyAdmin for the operator) ----------------------
    def get_study(self, study_id: str) -> StudyRecord | None:
        rows = self._read("SELECT definition, seed, key_sha256, entries FROM studies WHERE study = ?", (study_id,))
        if not rows:
            return None
        definition, seed, key_sha256, entries = rows[0]
        return StudyRecord(study_from_dict(json.loads(definition)), bytes(seed), key_sha256, entries)

    def take_place(self, study_id: str) -> int:
        with self._write() as db:
            row = db.execute("UPDATE studies SET entries = entries + 1 WHERE study = ? RETURNING entries",
                             (study_id,)).fetchone()
        if row is None:
            raise Conflict(f"no study {study_id}")
        return row[0] - 1

    def get_assignment(self, study_id: str, participant: str) -> Assignment | None:
        rows = self._read(f"SELECT {_ASSIGNMENT_COLUMNS} FROM assignments WHERE study = ? AND participant = ?",
                          (study_id, participant))
        return _assignment(rows[0]) if rows else None

    def put_assignment(self, assignment: Assignment) -> None:
        with self._write() as db:
            inserted = db.execute(
                f"INSERT OR IGNORE INTO assignments ({_ASSIGNMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (assignment.study, assignment.participant, assignment.arm, assignment.index, assignment.entered_at,
                 json.dumps(dict(assignment.platform_ids))),
            ).rowcount
        if not inserted:
            raise Conflict(f"{assignment.participant} has an assignment")

    def put_study(self, record: StudyRecord) -> None:
        with self._write() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO studies (study, definition, seed, key_sha256) VALUES (?, ?, ?, ?)",
                (record.study.id, json.dumps(study_to_dict(record.study)), record.seed, record.key_sha256),
            ).rowcount
        if not inserted:
            raise Conflict(f"study {record.study.id} exists")

    def replace_study_definition(self, study: Study) -> None:
        self._set_study(study.id, "definition", json.dumps(study_to_dict(study)))

    def set_study_key(self, study_id: str, key_sha256: str) -> None:
        self._set_study(study_id, "key_sha256", key_sha256)

    def _set_study(self, study_id: str, column: str, value: str) -> None:
        with self._write() as db:
            if not db.execute(f"UPDATE studies SET {column} = ? WHERE study = ?", (value, study_id)).rowcount:
                raise Conflict(f"no study {study_id}")

    def assignments(self, study_id: str, page_size: int = 500) -> Iterator[Assignment]:
        after = ""
        while True:  # keyset pages along the primary key
            rows = self._read(f"SELECT {_ASSIGNMENT_COLUMNS} FROM assignments WHERE study = ? AND participant > ? "
                              "ORDER BY participant LIMIT ?", (study_id, after, page_size))
            yield from map(_assignment, rows)
            if len(rows) < page_size:
                return
            after = rows[-1][1]

    # -- the operator's port (store.AdminStore): a process beside the stack, on the same file ------
    def read_controls(self, experiment: str | None) -> Controls:
        rows = self._read(
            "SELECT paused, token_budget, tokens_used FROM controls WHERE experiment = ?",
            (_SERVICE if experiment is None else experiment,),
        )
        return _controls(*(rows[0] if rows else (None, None, 0)), allowlist=self._allowlist_on(experiment))

    def add_to_allowlist(self, experiment: str, participants: Codes) -> None:
        check_allowlist_change(experiment, participants)
        if not participants:
            return
        with self._write() as db:  # one transaction: the flag and the codes together
            db.execute("INSERT OR IGNORE INTO allowlists VALUES (?)", (experiment,))
            db.executemany("INSERT OR IGNORE INTO allowlist VALUES (?, ?)", ((experiment, p) for p in participants))

    def remove_from_allowlist(self, experiment: str, participants: Codes) -> None:
        check_allowlist_change(experiment, participants)
        with self._write() as db:
            db.executemany("DELETE FROM allowlist WHERE experiment = ? AND participant = ?",
                           ((experiment, p) for p in participants))

    def allowlist(self, experiment: str, page_size: int = 500) -> Iterator[str]:
        after = ""
        while True:  # keyset pages along the primary key
            rows = self._read("SELECT participant FROM allowlist WHERE experiment = ? AND participant > ? "
                              "ORDER BY participant LIMIT ?", (experiment, after, page_size))
            yield from (row[0] for row in rows)
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def clear_allowlist(self, experiment: str) -> int:
        with self._write() as db:
            db.execute("DELETE FROM allowlists WHERE experiment = ?", (experiment,))
            return db.execute("DELETE FROM allowlist WHERE experiment = ?", (experiment,)).rowcount

    def experiment_chats(
        self, experiment: str, session: str | None = None, participant: str | None = None, page_size: int = 500
    ) -> Iterator[Chat]:
        where, params = _who("experiment = ?", (experiment,), session, participant)
        after: tuple[str, ...] = ("", "", "")
        while True:  # keyset pages along the chats_by_experiment index; each page is one short read
            rows = self._read(
                f"SELECT {_CHAT_COLUMNS} FROM chats WHERE {where} AND (session, participant, chat_key) > (?, ?, ?) "
                "ORDER BY session, participant, chat_key LIMIT ?",
                (*params, *after, page_size),
            )
            chats = [_chat(row) for row in rows]
            yield from chats
            if len(rows) < page_size:
                return
            last = chats[-1]
            after = (last.identity.session, last.identity.participant, last.chat_key)

    def connections(self, experiment: str | None = None) -> Iterator[Connection]:
        where, params = ("experiment = ?", (experiment,)) if experiment is not None else ("1", ())
        after = ""
        while True:
            rows = self._read(
                "SELECT connection_id, participant, experiment, session, connected_at, expires_at FROM connections "
                f"WHERE {where} AND connection_id > ? ORDER BY connection_id LIMIT 500",
                (*params, after),
            )
            for cid, participant, exp, session, connected_at, expires_at in rows:
                yield Connection(cid, Identity(participant, exp, session), connected_at, expires_at)
            if len(rows) < 500:
                return
            after = rows[-1][0]

    def delete_participant(self, experiment: str, participant: str, session: str | None = None) -> Deleted:
        where, params = _who("experiment = ?", (experiment,), session, participant)
        with self._write() as db:  # one transaction: all of it, or nothing
            deleted = _delete_chats(db, where, params)
            counters = db.execute(f"DELETE FROM participants WHERE {where}", params).rowcount  # other sessions' stay
            connections = db.execute(f"DELETE FROM connections WHERE {where}", params).rowcount
            if session is None:  # the participant is gone from the experiment: their code (and study arm) with them
                counters += db.execute("DELETE FROM allowlist WHERE experiment = ? AND participant = ?",
                                       (experiment, participant)).rowcount
                counters += db.execute("DELETE FROM assignments WHERE study = ? AND participant = ?",
                                       (experiment, participant)).rowcount
        return deleted + Deleted(connections=connections, records=counters)

    def delete_experiment(self, experiment: str) -> Deleted:
        with self._write() as db:
            deleted = _delete_chats(db, "experiment = ?", (experiment,))
            records = sum(
                db.execute(f"DELETE FROM {table} WHERE experiment = ?", (experiment,)).rowcount
                for table in ("participants", "allowlist")
            )
            controls, flag = (db.execute(f"DELETE FROM {table} WHERE experiment = ?", (experiment,)).rowcount
                              for table in ("controls", "allowlists"))
            records += max(controls, flag)  # on DynamoDB both are the one CONTROL item
            records += db.execute("DELETE FROM assignments WHERE study = ?", (experiment,)).rowcount  # definition stays
            connections = db.execute("DELETE FROM connections WHERE experiment = ?", (experiment,)).rowcount
        return deleted + Deleted(connections=connections, records=records)


def _identity(path: str) -> FileIdentity:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _keep_private(path: str) -> None:
    """Transcripts are personal data: the file is created readable by its owner only (SQLite would
    create it 0644 less the umask, and gives its -wal and -shm files the file's own mode), and a file,
    -wal or -shm that an older version left open to others is closed to them."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError, PermissionError):  # not ours to change: leave it
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


@contextlib.contextmanager
def _throttled() -> Iterator[None]:
    """The database stayed locked past the busy timeout: retryable, like DynamoDB's throttling."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF in _BUSY:  # primary code: SQLITE_BUSY_SNAPSHOT etc. too
            raise StoreThrottled(str(exc)) from exc
        raise


def _insert_message(db: sqlite3.Connection, chat: Chat, message: Message) -> None:
    who = chat.identity
    provenance = message.provenance or _NO_PROVENANCE
    db.execute(
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}, experiment, session, participant, chat_key, bot_name) "
        f"VALUES ({', '.join('?' * 19)})",
        (chat.chat_id, message.seq, message.role, message.text, message.created_at, message.client_msg_id,
         message.prompt_tokens, message.completion_tokens, message.model, message.latency_ms,
         *(getattr(provenance, name) for name in PROVENANCE_FIELDS),
         who.experiment, who.session, who.participant, chat.chat_key, chat.bot.name),
    )


_NO_PROVENANCE = Provenance()


def _message(row: tuple[Any, ...]) -> Message:
    """A row of _MESSAGE_COLUMNS: the message's own columns, then its provenance (all NULL: none)."""
    own, provenance = row[:-len(PROVENANCE_FIELDS)], row[-len(PROVENANCE_FIELDS):]
    return Message(*own, provenance=Provenance(*provenance) if any(v is not None for v in provenance) else None)


def _assignment(row: tuple[Any, ...]) -> Assignment:
    study, participant, arm, place, entered_at, platform_ids = row
    return Assignment(study, participant, arm, place, entered_at, json.loads(platform_ids))


def _controls(paused: int | None, budget: int | None, used: int | None, *, allowlist: bool) -> Controls:
    """A `controls` row's fields (None where the row is absent) as the record."""
    return Controls(bool(paused), budget, used or 0, allowlist=allowlist)


def _control_items(row: Sequence[Any]) -> ControlItems:
    """`ControlItems` from the `_CONTROL_COLUMNS` of a row."""
    e_paused, e_budget, e_used, allowlist, s_paused, s_budget, s_used, breaker, *state = row
    return ControlItems(
        _controls(e_paused, e_budget, e_used, allowlist=bool(allowlist)),
        _controls(s_paused, s_budget, s_used, allowlist=False),  # the service has no allowlist
        BreakerState() if breaker is None else BreakerState(*state),
    )


def _chat(row: tuple[Any, ...]) -> Chat:
    (chat_id, participant, experiment, session, chat_key, bot, created_at, next_seq, user_messages,
     tokens_used, connection_id, lease_turn, lease_until, lease_seq, lease_claimed) = row
    return Chat(
        chat_id=chat_id,
        identity=Identity(participant, experiment, session),
        chat_key=chat_key,
        bot=Bot.from_dict(json.loads(bot)),
        created_at=created_at,
        next_seq=next_seq,
        user_messages=user_messages,
        tokens_used=tokens_used,
        connection_id=connection_id,
        lease=None if lease_turn is None else Lease(lease_turn, lease_until, lease_seq, claimed=bool(lease_claimed)),
    )


def _who(where: str, params: tuple[Any, ...], session: str | None, participant: str | None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause narrowed to a session and a participant when they are given."""
    for column, value in (("session", session), ("participant", participant)):
        if value is not None:
            where, params = f"{where} AND {column} = ?", (*params, value)
    return where, params


def _delete_chats(db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> Deleted:
    """The chats matching `where`, with their messages and client message ids (inside a transaction)."""
    chosen = f"SELECT chat_id FROM chats WHERE {where}"
    messages = db.execute(f"DELETE FROM messages WHERE chat_id IN ({chosen})", params).rowcount
    records = db.execute(f"DELETE FROM client_messages WHERE chat_id IN ({chosen})", params).rowcount
    chats = db.execute(f"DELETE FROM chats WHERE {where}", params).rowcount
    return Deleted(chats=chats, messages=messages, records=records)
