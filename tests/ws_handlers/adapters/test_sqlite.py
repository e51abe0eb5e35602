"""What is SQLite's own: durability, concurrency from threads, crash recovery, schema, indexes.

The semantics both adapters share are in tests/ws_handlers/test_store_contract.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from waiting import at_once

from ws_handlers.adapters.sqlite import SCHEMA_VERSION, SqliteStore, StoreFileLost
from ws_handlers.bot import Bot, Limits
from ws_handlers.controls import obeyed
from ws_handlers.identity import Identity
from ws_handlers.store import (
    Chat,
    Conflict,
    Connection,
    Controls,
    Lease,
    Message,
    StoreError,
    StoreThrottled,
    chat_id_for,
)

ROOT = Path(__file__).resolve().parents[3]
BOT = Bot("tutor", "m", "prompt", limits=Limits(max_user_messages=1000))
NOW = 1_800_000_000.0


def _open(store: SqliteStore, participant: str = "P1", key: str = "main", max_chats: int = 5) -> Chat:
    who = Identity(participant, "exp1", "s1")
    chat_id = chat_id_for(who, key)
    fresh = Chat(chat_id, who, key, BOT, NOW, next_seq=2, connection_id="c1")
    return store.open_chat(fresh, Message(chat_id, 1, "assistant", "Hello.", NOW), max_chats)


def _append(store: SqliteStore, chat: Chat, cmid: str) -> int:
    """Append as the domain does: on Conflict read the chat again and retry. Returns the seq."""
    while True:
        seq = chat.next_seq
        message = Message(chat.chat_id, seq, "user", f"text of {cmid}", NOW, client_msg_id=cmid)
        try:  # the lease lapses at once, so concurrent appends never find the chat busy
            store.append_user_message(chat, message, Lease(cmid, NOW - 1, seq), "c1", 1000, NOW)
            return seq
        except Conflict:
            chat = store.get_chat(chat.chat_id)


def test_everything_survives_closing_and_reopening(tmp_path):
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path)
    chat = _open(store, max_chats=1)
    _append(store, chat, "m1")
    reply = Message(chat.chat_id, 3, "assistant", "answer", NOW + 1, None, 7, 5, model="m", latency_ms=120)
    assert store.finish_reply(chat, reply, "m1")
    store.count_tokens("exp1", 12)
    store.set_controls("exp1", token_budget=500)
    store.set_controls(None, paused=True)
    store.put_connection(Connection("c1", chat.identity, NOW, int(NOW) + 100))
    before = (store.get_chat(chat.chat_id), store.messages(chat.chat_id), store.get_controls("exp1"))
    store.close()

    again = SqliteStore(path)
    assert (again.get_chat(chat.chat_id), again.messages(chat.chat_id), again.get_controls("exp1")) == before
    assert before[0].next_seq == 4 and before[0].tokens_used == 12 and before[1][-1] == reply
    assert obeyed(before[2]) == Controls(paused=True, token_budget=500, tokens_used=12)
    assert again.find_client_message(chat.chat_id, "m1") == 2
    assert [c.identity for c in again.connections()] == [chat.identity]
    with pytest.raises(Conflict):  # the chats-per-participant counter survived too
        _open(again, key="second", max_chats=1)
    again.close()


def test_schema_is_versioned_idempotent_and_durable_mode(tmp_path):
    path = tmp_path / "chat.sqlite3"
    SqliteStore(path).close()
    SqliteStore(path).close()  # CREATE ... IF NOT EXISTS: opening again is harmless
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # written by a newer version of the code
    raw.close()
    with pytest.raises(StoreError, match="schema version"):
        SqliteStore(path)


def test_reads_use_the_keys_and_rows_carry_the_export_fields(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    chat = _open(store)
    _append(store, chat, "m1")
    raw = sqlite3.connect(tmp_path / "chat.sqlite3")

    def plan(sql: str) -> str:
        return " ".join(row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?")))

    assert "USING INDEX" in plan("SELECT * FROM messages WHERE chat_id = ? AND seq > ? ORDER BY seq")
    assert "USING PRIMARY KEY" in plan("SELECT seq FROM client_messages WHERE chat_id = ? AND client_msg_id = ?")
    assert "USING INDEX" in plan("SELECT * FROM chats WHERE chat_id = ?")
    assert "chats_by_experiment" in plan(
        "SELECT * FROM chats WHERE experiment = ? ORDER BY session, participant, chat_key"
    )
    row = raw.execute(
        "SELECT experiment, session, participant, chat_key, bot_name, role, client_msg_id FROM messages WHERE seq = 2"
    ).fetchone()
    assert row == ("exp1", "s1", "P1", "main", "tutor", "user", "m1")
    raw.close()
    store.close()


def test_concurrent_appends_to_distinct_chats(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    chats = [_open(store, f"P{i}") for i in range(16)]

    def append_20(i: int) -> list[int]:
        return [_append(store, store.get_chat(chats[i].chat_id), f"m{i}-{k}") for k in range(20)]

    assert at_once(16, append_20) == [list(range(2, 22))] * 16
    for chat in chats:
        messages = store.messages(chat.chat_id)
        assert [m.seq for m in messages] == list(range(1, 22))
        assert store.get_chat(chat.chat_id).next_seq == 22 and store.get_chat(chat.chat_id).user_messages == 20
    store.close()


def test_concurrent_appends_to_one_chat_win_one_seq_each(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    chat = _open(store)

    def append_10(i: int) -> list[int]:
        return [_append(store, store.get_chat(chat.chat_id), f"m{i}-{k}") for k in range(10)]

    won = [seq for seqs in at_once(16, append_10) for seq in seqs]
    assert sorted(won) == list(range(2, 162))  # one winner per seq
    messages = store.messages(chat.chat_id)
    assert [m.seq for m in messages] == list(range(1, 162))  # no gaps, no duplicates
    assert len({m.client_msg_id for m in messages[1:]}) == 160
    for m in messages[1:]:
        assert store.find_client_message(chat.chat_id, m.client_msg_id) == m.seq
    after = store.get_chat(chat.chat_id)
    assert after.next_seq == 162 and after.user_messages == 160
    store.close()


def test_one_client_message_id_from_8_threads_is_stored_once(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    chat = _open(store)

    def send(i: int) -> None:
        message = Message(chat.chat_id, 2, "user", f"try {i}", NOW, client_msg_id="same")
        store.append_user_message(chat, message, Lease(f"t{i}", NOW + 60, 2), "c1", 1000, NOW)

    results = at_once(8, send)
    assert results.count(None) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not None)
    assert store.find_client_message(chat.chat_id, "same") == 2
    assert [m.seq for m in store.messages(chat.chat_id)] == [1, 2]
    assert store.get_chat(chat.chat_id).user_messages == 1
    store.close()


def _open_files(path: Path) -> int:
    """How many file descriptors of this process name `path`."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(path))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_threads_that_come_and_go_share_readers_instead_of_opening_the_file_each(tmp_path):
    """A thread pool's threads come and go (the stack's, the reply workers'); each used to keep a
    connection of its own, opened on its first read at ~1.5 ms of CPU and kept until the store
    closed. Reads now borrow an idle reader; as many stay open as were ever in use at once."""
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path)
    chat = _open(store)
    before = _open_files(path)
    for k in range(40):  # one after another: one reader serves them all
        thread = threading.Thread(target=lambda: store.messages(chat.chat_id))
        thread.start()
        thread.join()
    assert _open_files(path) == before + 1

    def read_while_another_appends(i: int) -> list[int]:  # at once: each read sees whole transactions
        if i == 0:
            return [_append(store, store.get_chat(chat.chat_id), f"m{k}") for k in range(30)]
        seen = []
        for _ in range(60):
            messages, after = store.messages(chat.chat_id), store.get_chat(chat.chat_id)
            assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
            assert after.next_seq >= len(messages) + 1
            seen.append(len(messages))
        return seen

    results = at_once(8, read_while_another_appends)
    assert results[0] == list(range(2, 32)) and all(r == sorted(r) for r in results[1:])
    assert _open_files(path) <= before + 8  # no more readers than threads reading at once
    store.close()
    assert _open_files(path) == 0


def test_a_writer_from_another_process_past_the_busy_timeout_is_throttling(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3", busy_timeout=0.1)
    chat = _open(store)
    other = sqlite3.connect(tmp_path / "chat.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an operator tool holding the write lock
    with pytest.raises(StoreThrottled):
        _append(store, chat, "m1")
    assert [m.seq for m in store.messages(chat.chat_id)] == [1]  # reads go on meanwhile (WAL)
    other.execute("ROLLBACK")
    assert _append(store, chat, "m1") == 2
    other.close()
    store.close()


_COUNTER = textwrap.dedent(
    """
    import sys
    from ws_handlers.adapters.sqlite import SqliteStore
    from ws_handlers.store import StoreThrottled

    store = SqliteStore(sys.argv[1], busy_timeout=0.001)
    print("ready", flush=True)
    sys.stdin.readline()  # all at once
    refused = 0
    for _ in range(int(sys.argv[2])):
        try:
            store.count_tokens("exp1", 1)
        except StoreThrottled:
            refused += 1
    print(refused, flush=True)
    store.close()
    """
)


def test_writers_of_several_processes_queue_for_the_file_instead_of_sleeping_or_failing(tmp_path):
    """The stack and its reply workers write to one file. Each store queues for the file's write
    lock in the kernel (a `flock` beside it), so a writer waits exactly as long as the one before
    it holds the lock: none needs SQLite's busy handler, whose sleeps grow to tens of ms while
    the lock is free. With a busy timeout of 1 ms, three processes writing at once are never
    refused (with SQLite's handler alone, many of their writes were)."""
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path, busy_timeout=0.001)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", _COUNTER, str(path), "1000"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, cwd=ROOT) for _ in range(2)]
    for writer in writers:
        assert writer.stdout.readline() == b"ready\n"
    for writer in writers:
        writer.stdin.write(b"go\n")
        writer.stdin.flush()
    refused = 0
    for _ in range(1000):
        try:
            store.count_tokens("exp1", 1)
        except StoreThrottled:
            refused += 1
    answers = [int(w.communicate(timeout=120)[0]) for w in writers]
    assert [refused, *answers] == [0, 0, 0]
    assert store.get_controls("exp1").experiment.tokens_used == 3000
    store.close()


def test_a_writer_of_another_process_that_dies_holding_the_lock_holds_nobody(tmp_path):
    """The kernel releases a dead process's `flock` with its files, as it does SQLite's own lock."""
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom ws_handlers.adapters.sqlite import SqliteStore\n"
         "store = SqliteStore(sys.argv[1])\nwith store._write():\n    print('holding', flush=True)\n"
         "    sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        assert holder.stdout.readline() == b"holding\n"
    finally:
        holder.kill()
        holder.wait(60)
        holder.stdin.close()
        holder.stdout.close()
    done = threading.Thread(target=store.count_tokens, args=("exp1", 5))
    done.start()
    done.join(60)
    assert not done.is_alive()
    assert store.get_controls("exp1").experiment.tokens_used == 5
    store.close()


_WRITER = textwrap.dedent(
    """
    import sys, threading
    from ws_handlers.adapters.sqlite import SqliteStore
    from ws_handlers.bot import Bot
    from ws_handlers.identity import Identity
    from ws_handlers.store import Chat, Lease, Message, chat_id_for

    store = SqliteStore(sys.argv[1])
    bot = Bot("tutor", "m", "prompt")
    NOW = 1_800_000_000.0

    def write(worker):
        for n in range(10**6):
            who = Identity(f"P{worker}", "exp1", "s1")
            chat_id = chat_id_for(who, f"{sys.argv[2]}-{n}")
            chat = store.open_chat(Chat(chat_id, who, f"{sys.argv[2]}-{n}", bot, NOW, next_seq=2),
                                   Message(chat_id, 1, "assistant", "Hello.", NOW), 10**9)
            for k in range(3):
                seq = chat.next_seq
                store.append_user_message(chat, Message(chat_id, seq, "user", "x" * 500, NOW, client_msg_id=f"m{k}"),
                                          Lease(f"t{k}", NOW + 60, seq), "c1", 1000, NOW)
                chat = store.get_chat(chat_id)
                reply = Message(chat_id, seq + 1, "assistant", "y" * 2000, NOW, None, 10, 5, model="m")
                store.count_tokens("exp1", 15)  # as a turn does: spent tokens first, then the reply
                assert store.finish_reply(chat, reply, f"t{k}")
                chat = store.get_chat(chat_id)
            if worker == 0 and n == 5:
                print("writing", flush=True)

    for worker in range(4):
        threading.Thread(target=write, args=(worker,)).start()
    """
)


def _chats(path: Path) -> int:
    """The chats committed so far, read beside a writer (WAL: a reader never blocks it)."""
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as raw:
        return raw.execute("SELECT count(*) FROM chats").fetchone()[0]


def _check_consistent(path: Path, kills: int) -> int:
    """Every invariant a committed transaction keeps, after the writer was killed `kills` times;
    the number of chats."""
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    chats = raw.execute("SELECT chat_id, next_seq, user_messages, tokens_used, lease_turn FROM chats").fetchall()
    for chat_id, next_seq, user_messages, tokens_used, lease_turn in chats:
        rows = raw.execute(
            "SELECT seq, role, client_msg_id, prompt_tokens + completion_tokens FROM messages WHERE chat_id = ? "
            "ORDER BY seq",
            (chat_id,),
        ).fetchall()
        assert [r[0] for r in rows] == list(range(1, next_seq))  # META's next_seq agrees with the messages
        users = {r[2]: r[0] for r in rows if r[1] == "user"}
        assert len(users) == user_messages
        cmids = raw.execute("SELECT client_msg_id, seq FROM client_messages WHERE chat_id = ?", (chat_id,))
        assert dict(cmids) == users
        assert sum(r[3] for r in rows) == tokens_used
        assert (lease_turn is None) == (rows[-1][1] == "assistant")  # a user message without its reply holds the lease
    total_chat_tokens = raw.execute("SELECT coalesce(sum(tokens_used), 0) FROM chats").fetchone()[0]
    used = raw.execute("SELECT coalesce(sum(tokens_used), 0) FROM controls").fetchone()[0]
    # counted before each reply is stored: each kill can leave the reply each of the 4 writers had in
    # hand counted and never stored, and those counts stay
    assert total_chat_tokens <= used <= total_chat_tokens + kills * 4 * 15
    counted = raw.execute("SELECT session, participant, chats FROM participants ORDER BY 1, 2").fetchall()
    assert counted == raw.execute("SELECT session, participant, count(*) FROM chats GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    raw.close()
    return len(chats)


def test_a_killed_writer_leaves_only_whole_transactions(tmp_path):
    path = tmp_path / "chat.sqlite3"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    chats = 0
    # each run writes on top of the file the last one left, and is killed once that many more chats are in
    for run, more in enumerate((10, 30, 60)):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"run{run}"], stdout=subprocess.PIPE, env=env, cwd=ROOT
        )
        try:
            assert writer.stdout.readline() == b"writing\n"
            deadline = time.monotonic() + 60
            while _chats(path) < chats + more:  # killed mid-write: four threads are in transactions
                assert time.monotonic() < deadline, "the writer stopped writing"
                time.sleep(0.01)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(60)
            writer.stdout.close()
        now_chats = _check_consistent(path, kills=run + 1)
        assert now_chats > chats
        chats = now_chats
    store = SqliteStore(path)  # and the store opens it and goes on
    chat = store.get_chat(chat_id_for(Identity("P0", "exp1", "s1"), "run0-0"))
    assert [m.seq for m in store.messages(chat.chat_id)] == list(range(1, 8))
    store.close()


@contextlib.contextmanager
def _migrated(tmp_path, version: int, statements: tuple[str, ...]):
    """The store opened on a file an older version of the code left: these tables and rows, that user_version."""
    path = tmp_path / f"v{version}.sqlite3"
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        yield store
    finally:
        store.close()


def test_a_version_1_file_is_migrated_and_keeps_its_data(tmp_path):
    from ws_handlers.identity import Identity
    from ws_handlers.store import Connection

    with _migrated(tmp_path, 1, (
        "CREATE TABLE connections (connection_id TEXT PRIMARY KEY, participant TEXT NOT NULL, experiment TEXT NOT NULL, "
        "session TEXT NOT NULL, connected_at REAL NOT NULL, expires_at INTEGER NOT NULL)",
        "INSERT INTO connections VALUES ('c1', 'P1', 'exp1', 'sess1', 1.0, 9999999999)",
    )) as store:
        connection, count = store.count_frame("c1", 100.0, 10)
        assert connection.identity == Identity("P1", "exp1", "sess1") and count == 1
        store.put_connection(Connection("c2", connection.identity, 2.0, 9999999999))
        assert store.count_frame("c2", 100.0, 10)[1] == 1


def test_a_version_2_file_gains_the_allowlist_tables_and_keeps_its_controls(tmp_path):
    from ws_handlers.store import Controls

    with _migrated(tmp_path, 2, (
        "CREATE TABLE controls (experiment TEXT PRIMARY KEY, paused INTEGER, token_budget INTEGER, "
        "tokens_used INTEGER NOT NULL DEFAULT 0)",
        "INSERT INTO controls VALUES ('exp1', 1, 500, 42)",
    )) as store:
        assert store.read_controls("exp1") == Controls(paused=True, token_budget=500, tokens_used=42)
        store.add_to_allowlist("exp1", ["P1"])
        assert store.read_controls("exp1").allowlist and store.on_allowlist("exp1", "P1")


def test_a_version_3_file_counts_the_chats_it_holds_per_session(tmp_path):
    """Version 3 counted chats per experiment and participant; the migration counts each session's
    chats (every chat is a row), so a session in progress keeps its limit and a new one starts at 0."""
    columns = ("chat_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, session TEXT NOT NULL, participant TEXT NOT NULL, "
               "chat_key TEXT NOT NULL, bot TEXT NOT NULL, bot_name TEXT NOT NULL, created_at REAL NOT NULL, "
               "next_seq INTEGER NOT NULL, user_messages INTEGER NOT NULL, tokens_used INTEGER NOT NULL, "
               "connection_id TEXT, lease_turn TEXT, lease_until REAL, lease_seq INTEGER, "
               "lease_claimed INTEGER NOT NULL DEFAULT 0")
    bot = json.dumps(BOT.to_dict()).replace("'", "''")
    chats = [("c_old1", "s1", "a"), ("c_old2", "s1", "b"), ("c_old3", "s0", "a")]
    with _migrated(tmp_path, 3, (
        f"CREATE TABLE chats ({columns})",
        *(f"INSERT INTO chats VALUES ('{cid}', 'exp1', '{session}', 'P1', '{key}', '{bot}', 'tutor', 1.0, 1, 0, 0, "
          "NULL, NULL, NULL, NULL, 0)" for cid, session, key in chats),
        "CREATE TABLE participants (experiment TEXT NOT NULL, participant TEXT NOT NULL, chats INTEGER NOT NULL, "
        "PRIMARY KEY (experiment, participant)) WITHOUT ROWID",
        "INSERT INTO participants VALUES ('exp1', 'P1', 3)",
    )) as store:
        assert store.get_chat("c_old1").identity == Identity("P1", "exp1", "s1")
        with pytest.raises(Conflict):  # s1 holds two chats
            _open(store, key="third", max_chats=2)
        assert _open(store, key="third", max_chats=3).chat_key == "third"
        other = Identity("P1", "exp1", "s2")
        assert store.open_chat(Chat(chat_id_for(other, "a"), other, "a", BOT, NOW), None, 1).identity == other
        assert store.delete_participant("exp1", "P1").records == 3  # the counters of s0, s1 and s2


def test_a_version_4_file_keeps_its_replies_without_provenance_and_stores_it_for_new_ones(tmp_path):
    """A file the code before provenance wrote (its dump, data/store-v4.sql): its messages read as
    they were, with no provenance, and the chat goes on with replies that have one."""
    from ws_handlers.model import Provenance

    dump = (Path(__file__).parent / "data" / "store-v4.sql").read_text()
    statements = tuple(s for s in dump.split(";\n") if s.strip() and not s.lstrip().startswith(("--", "BEGIN", "COMMIT")))
    chat_id = chat_id_for(Identity("P1", "exp1", "s1"), "main")
    with _migrated(tmp_path, 4, statements) as store:
        old = store.messages(chat_id)
        assert [(m.seq, m.role, m.text, m.model, m.latency_ms) for m in old] == [
            (1, "assistant", "Hello.", None, None), (2, "user", "What is a prime?", None, None),
            (3, "assistant", "A number with two divisors.", "gpt-4o-mini", 850)]
        assert all(m.provenance is None for m in old) and old[2].prompt_tokens == 12
        chat = store.get_chat(chat_id)
        assert chat.next_seq == 4 and chat.tokens_used == 19
        store.append_user_message(chat, Message(chat_id, 4, "user", "And 9?", NOW, client_msg_id="m2"),
                                  Lease("t2", NOW + 60, 4), "c1", 30, NOW)
        provenance = Provenance("gpt-4o-mini-2024-07-18", "fp_1", '{"model":"gpt-4o-mini"}', "0" * 64)
        reply = Message(chat_id, 5, "assistant", "No: 3 divides it.", NOW, None, 20, 6, "gpt-4o-mini", 700, provenance)
        assert store.finish_reply(store.get_chat(chat_id), reply, "t2")
    again = SqliteStore(tmp_path / "v4.sqlite3")  # migrated once: opening again changes nothing
    assert again.messages(chat_id)[:3] == old and again.get_message(chat_id, 5) == reply
    again.close()


def test_the_store_and_the_secret_are_private_to_their_owner_in_a_private_data_directory(tmp_path):
    """Transcripts are personal data: the data directory is created 0700, the store, its -wal,
    -shm and -lock files and the dev secret 0600, whatever the umask; a store file an older version left
    readable by others is closed to them when opened."""
    from local_gateway.stack import Stack, StackConfig

    def mode(path: Path) -> int:
        return os.stat(path).st_mode & 0o777

    umask = os.umask(0)  # the most permissive: nothing here may rely on the user's umask
    try:
        data = tmp_path / "fresh" / ".local"
        store, _ = Stack(StackConfig(data_dir=data))._open_store(None)  # as `make dev` opens it
        _append(store, _open(store), "m1")  # the WAL and its index are open now
        files = [data / name for name in ("chat.sqlite3", "chat.sqlite3-wal", "chat.sqlite3-shm", "chat.sqlite3-lock",
                                          "ticket-secret")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files} and mode(data) == 0o700
        store.close()

        old = tmp_path / "old.sqlite3"
        sqlite3.connect(old).close()  # as SQLite creates it: 0644 less the umask
        assert mode(old) == 0o644
        SqliteStore(old).close()
        assert mode(old) == 0o600
    finally:
        os.umask(umask)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_whose_file_is_deleted_or_replaced_refuses_everything_and_saves_what_it_held(tmp_path, how):
    """The file deleted (or another put in its place) while the stack ran: SQLite wrote on into the
    unlinked file, new connections opened an empty one, and every request got `internal` for ever.
    Now the first write or new connection after it raises StoreFileLost, naming the file; nothing
    is written or created at the path; the stack is told once; and what the store still holds can
    be saved beside it."""
    path = tmp_path / "chat.sqlite3"
    told: list[str] = []
    store = SqliteStore(path, on_lost=told.append)
    chat = _open(store)
    _append(store, chat, "m1")
    if how == "deleted":
        path.unlink()
    else:
        SqliteStore(tmp_path / "other.sqlite3").close()
        os.replace(tmp_path / "other.sqlite3", path)
    with pytest.raises(StoreFileLost, match=str(path)):
        _append(store, store.get_chat(chat.chat_id), "m2")
    with pytest.raises(StoreFileLost):  # refused from then on, reads too, whatever the thread
        store.get_chat(chat.chat_id)
    failure: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(failure, store.messages, chat.chat_id))
    reader.start()
    reader.join(60)
    assert isinstance(failure[0], StoreFileLost)
    assert len(told) == 1 and str(path) in told[0]
    assert path.exists() == (how == "replaced")  # no empty file made at the path
    saved = store.save_copy()
    assert saved.parent == tmp_path and saved.stat().st_mode & 0o077 == 0
    store.close()
    rows = sqlite3.connect(saved).execute("SELECT seq, client_msg_id FROM messages ORDER BY seq").fetchall()
    assert rows == [(1, None), (2, "m1")]  # everything committed before, and nothing after


def test_a_process_that_must_share_the_stacks_file_refuses_another(tmp_path):
    """A reply worker started after the file was deleted or replaced would make or open another:
    it opens only the very file the stack opened."""
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path)
    SqliteStore(path, same_as=store.identity).close()
    path.unlink()
    with pytest.raises(StoreFileLost, match=str(path)):
        SqliteStore(path, same_as=store.identity)
    assert not path.exists()
    store.close()


def _catch(failure: list[BaseException], call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:
        failure.append(exc)
