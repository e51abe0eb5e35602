"""The contract every Store adapter keeps: each test runs on DynamoDB (moto) and on SQLite."""

from __future__ import annotations

from dataclasses import replace

import boto3
import pytest
from moto import mock_aws

from local_gateway.sqlite_store import SqliteStore

from ws_handlers.bot import Bot, Limits
from ws_handlers.dynamo_store import DynamoStore, create_tables
from ws_handlers.store import (
    Chat,
    ChatBusy,
    ChatLimitReached,
    Connection,
    Controls,
    DuplicateMessage,
    Lease,
    Message,
    MessageLimitReached,
    SeqConflict,
    chat_id_for,
)
from ws_handlers.tickets import Identity

WHO = Identity("P1", "exp1", "sess1")
BOT = Bot("tutor", "m", "prompt", limits=Limits(max_user_messages=3))
NOW = 1_800_000_000.0


@pytest.fixture(params=["dynamodb", "sqlite"])
def store(request, tmp_path):
    if request.param == "dynamodb":
        with mock_aws():
            client = boto3.client("dynamodb")
            create_tables(client, "conns", "chats")
            yield DynamoStore("conns", "chats", client=client)
    else:
        sqlite = SqliteStore(tmp_path / "store.sqlite3")
        yield sqlite
        sqlite.close()


def _chat(store, key="main", opening=True, max_chats=5) -> Chat:
    chat_id = chat_id_for(WHO, key)
    fresh = Chat(chat_id, WHO, key, BOT, NOW, next_seq=2 if opening else 1, connection_id="c1")
    first = Message(chat_id, 1, "assistant", "Hello.", NOW) if opening else None
    return store.open_chat(fresh, first, max_chats)


def _user(chat: Chat, cmid: str, text: str = "hi") -> Message:
    return Message(chat.chat_id, chat.next_seq, "user", text, NOW, client_msg_id=cmid)


def _lease(chat: Chat, turn: str = "t1", until: float = NOW + 60) -> Lease:
    return Lease(turn, until, chat.next_seq)


def _operator_sets(store, experiment: str | None, **fields) -> None:
    """What an operator writes: the CONTROL item (`SERVICE` when experiment is None), or set_controls."""
    if isinstance(store, SqliteStore):
        return store.set_controls(experiment, **fields)
    values = {f":{k}": {"BOOL": v} if isinstance(v, bool) else {"N": str(v)} for k, v in fields.items()}
    store._db.update_item(
        TableName=store.chats_table,
        Key={"pk": {"S": "SERVICE" if experiment is None else f"EXP#{experiment}"}, "sk": {"S": "CONTROL"}},
        UpdateExpression="SET " + ", ".join(f"{k} = :{k}" for k in fields),
        ExpressionAttributeValues=values,
    )


def test_connections_round_trip_and_expire(store):
    store.put_connection(Connection("c1", WHO, NOW, int(NOW) + 100))
    assert store.get_connection("c1", NOW).identity == WHO
    assert store.get_connection("c1", NOW + 101) is None  # expired records are absent, TTL or not
    store.delete_connection("c1")
    store.delete_connection("c1")  # idempotent
    assert store.get_connection("c1", NOW) is None


def test_open_chat_is_idempotent_and_stores_the_opening(store):
    chat = _chat(store)
    assert store.get_chat(chat.chat_id) == chat
    assert _chat(store) == chat
    assert [(m.seq, m.role, m.text) for m in store.messages(chat.chat_id)] == [(1, "assistant", "Hello.")]


def test_chats_per_participant(store):
    _chat(store, "a", max_chats=2)
    _chat(store, "b", max_chats=2)
    _chat(store, "a", max_chats=2)
    with pytest.raises(ChatLimitReached):
        _chat(store, "c", max_chats=2)
    assert store.get_chat(chat_id_for(WHO, "c")) is None


def test_append_assigns_sequence_and_takes_the_lease(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c2", 3, NOW)
    after = store.get_chat(chat.chat_id)
    assert after.next_seq == 3 and after.user_messages == 1 and after.connection_id == "c2"
    assert after.lease == Lease("t1", NOW + 60, 2) and after.replying(NOW)
    assert store.find_client_message(chat.chat_id, "m1") == 2
    assert store.get_message(chat.chat_id, 2).text == "hi"


def test_append_refusals_write_nothing(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    with pytest.raises(DuplicateMessage) as dup:
        store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)  # stale chat, same id
    assert dup.value.seq == 2
    current = store.get_chat(chat.chat_id)
    with pytest.raises(ChatBusy):
        store.append_user_message(current, _user(current, "m2"), _lease(current, "t2"), "c1", 3, NOW)
    with pytest.raises(SeqConflict):
        store.append_user_message(chat, _user(chat, "m3"), _lease(chat, "t3"), "c1", 3, NOW)
    assert [m.seq for m in store.messages(chat.chat_id)] == [1, 2]
    assert store.find_client_message(chat.chat_id, "m2") is None


def test_message_limit(store):
    chat = _chat(store, opening=False)
    for i in range(3):
        store.append_user_message(chat, _user(chat, f"m{i}"), _lease(chat, f"t{i}", NOW - 1), "c1", 3, NOW)
        chat = store.get_chat(chat.chat_id)
    with pytest.raises(MessageLimitReached):
        store.append_user_message(chat, _user(chat, "m9"), _lease(chat, "t9"), "c1", 3, NOW)


def test_finish_reply_counts_tokens_and_frees_the_chat(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    reply = Message(chat.chat_id, 3, "assistant", "answer", NOW, prompt_tokens=7, completion_tokens=5, model="m")
    assert not store.finish_reply(chat, reply, "someone-else")
    assert store.get_message(chat.chat_id, 3) is None
    assert store.finish_reply(chat, reply, "t1")
    assert not store.finish_reply(chat, reply, "t1")  # exactly once
    after = store.get_chat(chat.chat_id)
    assert after.next_seq == 4 and after.tokens_used == 12 and after.lease is None
    assert store.get_message(chat.chat_id, 3) == reply
    assert store.get_controls("exp1").tokens_used == 12
    assert store.get_controls("other").tokens_used == 0


def test_release_and_retake_the_lease(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    current = store.get_chat(chat.chat_id)
    assert not store.take_lease(current, Lease("t2", NOW + 60, 2), "c1", NOW)  # still held
    store.release_lease(chat.chat_id, "not-mine")
    assert store.get_chat(chat.chat_id).lease is not None
    store.release_lease(chat.chat_id, "t1")
    assert store.get_chat(chat.chat_id).lease is None
    assert store.take_lease(current, Lease("t2", NOW + 60, 2), "c9", NOW)
    assert store.get_chat(chat.chat_id).connection_id == "c9"
    assert store.take_lease(current, Lease("t3", NOW + 60, 2), "c9", NOW + 61)  # lapsed leases can be taken


def test_messages_after_seq_limit_and_pages(store):
    chat = _chat(store, opening=False)
    for i in range(120):
        store.append_user_message(chat, _user(chat, f"m{i}", "x" * 3000), _lease(chat, f"t{i}", NOW - 1), "c1", 500, NOW)
        chat = store.get_chat(chat.chat_id)
    assert [m.seq for m in store.messages(chat.chat_id)] == list(range(1, 121))  # > 1 MB: several pages
    assert [m.seq for m in store.messages(chat.chat_id, after_seq=117)] == [118, 119, 120]
    assert [m.seq for m in store.messages(chat.chat_id, limit=2)] == [1, 2]


def test_controls_default_and_bind(store):
    assert store.get_controls("exp1").paused is False and store.get_controls("exp1").token_budget is None
    chat = _chat(store)
    store.bind_connection(chat.chat_id, "c7")
    assert store.get_chat(chat.chat_id).connection_id == "c7"


def test_refused_chats_are_not_counted(store):
    _chat(store, "a", max_chats=1)
    with pytest.raises(ChatLimitReached):
        _chat(store, "b", max_chats=1)
    _chat(store, "b", max_chats=2)  # the refusal did not count
    with pytest.raises(ChatLimitReached):
        _chat(store, "c", max_chats=2)


def test_controls_service_pause_experiment_budget_and_tokens(store):
    _operator_sets(store, "exp1", token_budget=100)
    _operator_sets(store, None, paused=True)
    assert store.get_controls("exp1") == Controls(paused=True, token_budget=100, tokens_used=0)
    assert store.get_controls("exp2") == Controls(paused=True)  # the service-wide switch pauses everyone
    _operator_sets(store, None, paused=False)
    _operator_sets(store, "exp2", paused=True)
    assert store.get_controls("exp1").paused is False and store.get_controls("exp2").paused is True
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    reply = Message(chat.chat_id, 3, "assistant", "answer", NOW, prompt_tokens=30, completion_tokens=12, model="m")
    assert store.finish_reply(chat, reply, "t1")
    _operator_sets(store, "exp1", paused=True)  # the operator's writes keep the count, the count keeps the budget
    assert store.get_controls("exp1") == Controls(paused=True, token_budget=100, tokens_used=42)


def test_take_lease_needs_the_chat_as_it_was_read(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, until=NOW - 1), "c1", 3, NOW)  # lapsed at once
    assert not store.take_lease(chat, Lease("t2", NOW + 60, 2), "c2", NOW)  # read at next_seq 2, now at 3
    assert not store.take_lease(replace(chat, chat_id="c_missing"), Lease("t2", NOW + 60, 2), "c2", NOW)
    assert store.get_chat("c_missing") is None
    after = store.get_chat(chat.chat_id)
    assert after.lease.turn_id == "t1" and after.connection_id == "c1"


def test_a_late_reply_is_stored_unless_another_turn_took_the_lease(store):
    chat = _chat(store, "late")
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, "t1", NOW + 5), "c1", 3, NOW)
    late = Message(chat.chat_id, 3, "assistant", "late", NOW + 9, None, 1, 2, model="m", latency_ms=9000)
    assert store.finish_reply(chat, late, "t1")  # lapsed, but nobody took over: the reply is kept
    assert store.messages(chat.chat_id, after_seq=1) == [_user(chat, "m1"), late]

    chat = _chat(store, "retaken")
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, "t1", NOW + 5), "c1", 3, NOW)
    assert store.take_lease(store.get_chat(chat.chat_id), Lease("t2", NOW + 70, 2), "c2", NOW + 10)
    assert not store.finish_reply(chat, replace(late, chat_id=chat.chat_id), "t1")
    assert store.get_message(chat.chat_id, 3) is None
    assert store.finish_reply(chat, replace(late, chat_id=chat.chat_id, text="fresh"), "t2")
    assert store.get_message(chat.chat_id, 3).text == "fresh"
    assert store.get_controls("exp1").tokens_used == 6


def test_writes_to_a_missing_chat_create_nothing(store):
    with pytest.raises(Exception):  # DynamoDB: ConditionalCheckFailedException; SQLite: StoreError
        store.bind_connection("c_missing", "c1")
    store.release_lease("c_missing", "t1")
    assert store.get_chat("c_missing") is None


def test_a_lease_lapses_exactly_at_its_until(store):
    chat = _chat(store, opening=False)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, "t1", NOW), "c1", 3, NOW - 1)
    current = store.get_chat(chat.chat_id)
    assert not current.replying(NOW)
    store.append_user_message(current, _user(current, "m2"), _lease(current, "t2"), "c1", 3, NOW)  # not busy


def test_the_llm_breaker_opens_after_failures_within_a_window(store):
    assert store.get_controls("exp1").llm_paused_until == 0
    assert not store.record_llm_failure(NOW, 3, 30, 20)
    assert not store.record_llm_failure(NOW + 1, 3, 30, 20)
    assert store.record_llm_failure(NOW + 2, 3, 30, 20)  # the third within 30 s opens it
    assert store.get_controls("any-experiment").llm_paused_until == NOW + 22
    assert not store.record_llm_failure(NOW + 3, 3, 30, 20)  # counting starts again


def test_the_llm_breaker_forgets_old_failures(store):
    store.record_llm_failure(NOW, 2, 30, 20)
    assert not store.record_llm_failure(NOW + 31, 2, 30, 20)  # outside the window: a new one starts
    assert store.get_controls("exp1").llm_paused_until == 0
    assert store.record_llm_failure(NOW + 32, 2, 30, 20)


def test_frames_are_counted_per_connection_and_window(store):
    assert store.count_frame("nobody", NOW, 10) is None
    store.put_connection(Connection("c1", WHO, NOW, int(NOW) + 100))
    counts = [store.count_frame("c1", NOW + t, 10)[1] for t in (0, 1, 2)]
    assert counts == [1, 2, 3]
    connection, count = store.count_frame("c1", NOW + 10, 10)  # the next window starts again
    assert count == 1 and connection.identity == WHO
    assert store.count_frame("c1", NOW + 101, 10) is None  # expired


def test_renew_lease_only_for_its_holder(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, "t1", NOW + 5), "c1", 3, NOW)
    assert store.renew_lease(chat.chat_id, "t1", NOW + 100)
    assert store.get_chat(chat.chat_id).lease.until == NOW + 100
    assert not store.renew_lease(chat.chat_id, "t2", NOW + 200)
    store.release_lease(chat.chat_id, "t1")
    assert not store.renew_lease(chat.chat_id, "t1", NOW + 300)
    assert store.get_chat(chat.chat_id).lease is None
