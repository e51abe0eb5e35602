"""otree_app/chat/service.py reads what the service's stores wrote: SQLite (local) and DynamoDB.

service.py imports only the standard library (boto3 lazily), so it is loaded here by path,
in the service's venv, and checked against the real store adapters writing a real chat.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.adapters.sqlite import SqliteStore
from ws_handlers.bot import Bot
from ws_handlers.identity import Identity
from ws_handlers.model import PROVENANCE_FIELDS, Provenance
from ws_handlers.store import Chat, Lease, Message, chat_id_for, legacy_chat_id_for

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("otree_chat_service", ROOT / "otree_app" / "chat" / "service.py")
service = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(service)

BOT = Bot(name="ada_friendly", model="gpt-4o-mini", system_prompt="You are Ada.", opening_message="Hi, I'm Ada.")
WHO = Identity("p1abcdef", "otree", "s1abcdef")
#: The second reply's provenance; the first reply has none, as replies stored before it was recorded.
PROVENANCE = Provenance(
    model_snapshot="gpt-4o-mini-2024-07-18", system_fingerprint="fp_44709d6fcb",
    parameters='{"max_tokens":300,"model":"gpt-4o-mini","temperature":0.7}',
    system_prompt_sha256=hashlib.sha256(BOT.system_prompt.encode()).hexdigest(),
)


def write_chat(store) -> str:
    chat_id = chat_id_for(WHO, "chat-r1")
    now = time.time()
    chat = Chat(chat_id, WHO, "chat-r1", BOT, created_at=now, next_seq=2)
    store.open_chat(chat, Message(chat_id, 1, "assistant", BOT.opening_message, now), max_chats=5)
    for text, provenance in (("Hello", None), ("And fractions?", PROVENANCE)):
        chat = store.get_chat(chat_id)
        seq = chat.next_seq
        lease = Lease(f"t{seq}", time.time() + 60, seq)
        store.append_user_message(chat, Message(chat_id, seq, "user", text, time.time(), client_msg_id=f"m{seq}"),
                                  lease, "conn", 30, time.time())
        reply = Message(chat_id, seq + 1, "assistant", f"Answer to {text}", time.time(),
                        prompt_tokens=12, completion_tokens=7, model=BOT.model, latency_ms=250,
                        provenance=provenance)
        assert store.finish_reply(store.get_chat(chat_id), reply, lease.turn_id)
    return chat_id


def check(reader, store, chat_id):
    stored = store.messages(chat_id)
    read = reader.messages(chat_id)
    assert [(m["seq"], m["role"], m["text"], m["model"], m["latency_ms"]) for m in read] == [
        (m.seq, m.role, m.text, m.model, m.latency_ms) for m in stored
    ]
    assert {m["bot_name"] for m in read} == {BOT.name}
    assert read[2]["completion_tokens"] == 7 and abs(read[-1]["created_at"] - stored[-1].created_at) < 1e-3
    progress = reader.progress([chat_id, "c_unknown"])
    assert progress == {chat_id: {"user_messages": 2, "messages": 5, "last_activity": pytest.approx(stored[-1].created_at)}}
    assert reader.messages("c_unknown") == []
    check_provenance(read)


def check_provenance(read):
    """Only the reply stored with provenance has it: not the opening, the participant's messages, or
    the reply stored before provenance was recorded."""
    assert [tuple(m[f] for f in PROVENANCE_FIELDS) for m in read] == [
        (None,) * 4, (None,) * 4, (None,) * 4, (None,) * 4, tuple(vars(PROVENANCE)[f] for f in PROVENANCE_FIELDS)
    ]


def test_the_readers_name_the_provenance_the_service_stores():
    """service.py names the fields itself (it imports only the standard library): the same as the service's."""
    assert service.PROVENANCE_FIELDS == PROVENANCE_FIELDS


def test_sqlite_reader_reads_a_file_from_before_provenance(tmp_path):
    """A file the stack has not opened since provenance was recorded has no provenance columns; the
    read-only reader reads its transcript, provenance empty, and leaves the file as it was."""
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path)
    try:
        chat_id = write_chat(store)
        expected = [(m.seq, m.role, m.text) for m in store.messages(chat_id)]
    finally:
        store.close()
    db = sqlite3.connect(path)
    for name in PROVENANCE_FIELDS:
        db.execute(f"ALTER TABLE messages DROP COLUMN {name}")
    db.close()
    read = service.SqliteReader(path).messages(chat_id)
    assert [(m["seq"], m["role"], m["text"]) for m in read] == expected
    assert {m[f] for m in read for f in PROVENANCE_FIELDS} == {None}
    db = sqlite3.connect(path)
    assert not {name for (name,) in db.execute("SELECT name FROM pragma_table_info('messages')")} & set(PROVENANCE_FIELDS)
    db.close()


def check_identities(reader, store):
    """A chat's stored identity, read by id, so the app can tell the player's chat from a chat of the
    same participant code in another session (the ids chats had before ids named the session)."""
    mine = write_chat(store)
    reused = Identity(WHO.participant, WHO.experiment, "s2other")
    old = store.open_chat(Chat(legacy_chat_id_for(reused, "chat-r1"), reused, "chat-r1", BOT, time.time()), None, 5)
    assert reader.identities([mine, old.chat_id, "c_unknown", mine]) == {
        mine: ("otree", WHO.session, WHO.participant, "chat-r1"),
        old.chat_id: ("otree", "s2other", WHO.participant, "chat-r1"),
    }
    assert reader.identities([]) == {}


def test_sqlite_reader_reads_the_local_stacks_file(tmp_path, monkeypatch):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    try:
        chat_id = write_chat(store)
        monkeypatch.setenv("CHAT_STORE", str(tmp_path / "chat.sqlite3"))
        check(service.store(), store, chat_id)  # read-only, while the store keeps its connection open
    finally:
        store.close()
    assert service.SqliteReader(tmp_path / "missing.sqlite3").progress(["c_x"]) == {}
    assert service.SqliteReader(tmp_path / "missing.sqlite3").identities(["c_x"]) == {}


def test_sqlite_reader_reads_who_a_chat_belongs_to(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    try:
        check_identities(service.SqliteReader(tmp_path / "chat.sqlite3"), store)
    finally:
        store.close()


def test_dynamo_reader_reads_who_a_chat_belongs_to(dynamodb_tables):
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb_tables(client, "conns", "chats")
        check_identities(service.DynamoReader("chats", client=client), DynamoStore("conns", "chats", client=client))


def test_dynamo_reader_reads_the_chats_table(monkeypatch, dynamodb_tables):
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb_tables(client, "conns", "chats")
        store = DynamoStore("conns", "chats", client=client)
        chat_id = write_chat(store)
        monkeypatch.setenv("CHAT_STORE", "dynamodb:chats")
        reader = service.store()
        assert isinstance(reader, service.DynamoReader) and reader.table == "chats"
        check(reader, store, chat_id)


def test_settings_have_safe_local_defaults(monkeypatch, tmp_path):
    for name in ("CHAT_WS_URL", "CHAT_TICKET_SECRET", "CHAT_STORE", "CHAT_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    assert service.ws_url() == "ws://127.0.0.1:8787/local"
    assert service.experiment() == "otree"
    assert service.store().path == ROOT / ".local" / "chat.sqlite3"
    monkeypatch.setattr(service, "DEFAULT_SECRET_FILE", tmp_path / "ticket-secret")
    with pytest.raises(RuntimeError, match="make dev"):
        service.ticket_secret()
    (tmp_path / "ticket-secret").write_text("s" * 48 + "\n")
    assert service.ticket_secret() == "s" * 48
    monkeypatch.setenv("CHAT_TICKET_SECRET", "x" * 40)
    assert service.ticket_secret() == "x" * 40
