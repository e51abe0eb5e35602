"""The contract every Store adapter keeps. Issue 3 adds the embedded adapter to `store`'s params."""

from __future__ import annotations


import boto3
import pytest
from moto import mock_aws

from ws_handlers.bot import Bot, Limits
from ws_handlers.dynamo_store import DynamoStore, create_tables
from ws_handlers.store import (
    Chat,
    ChatBusy,
    ChatLimitReached,
    Connection,
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


@pytest.fixture(params=["dynamodb"])
def store(request):
    if request.param == "dynamodb":
        with mock_aws():
            client = boto3.client("dynamodb")
            create_tables(client, "conns", "chats")
            yield DynamoStore("conns", "chats", client=client)


def _chat(store, key="main", opening=True, max_chats=5) -> Chat:
    chat_id = chat_id_for(WHO, key)
    fresh = Chat(chat_id, WHO, key, BOT, NOW, next_seq=2 if opening else 1, connection_id="c1")
    first = Message(chat_id, 1, "assistant", "Hello.", NOW) if opening else None
    return store.open_chat(fresh, first, max_chats)


def _user(chat: Chat, cmid: str, text: str = "hi") -> Message:
    return Message(chat.chat_id, chat.next_seq, "user", text, NOW, client_msg_id=cmid)


def _lease(chat: Chat, turn: str = "t1", until: float = NOW + 60) -> Lease:
    return Lease(turn, until, chat.next_seq)


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
