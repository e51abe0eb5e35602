"""The contract every Store adapter keeps: each test runs on DynamoDB (moto) and on SQLite (the
`store` fixture, tests/ws_handlers/conftest.py)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from ws_handlers import breaker
from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.bot import Bot, Limits
from ws_handlers.controls import obeyed
from ws_handlers.identity import Identity
from ws_handlers.model import Provenance
from ws_handlers.store import (
    BreakerState,
    Chat,
    Conflict,
    Connection,
    ControlItems,
    Controls,
    Deleted,
    Lease,
    Message,
    SendItems,
    chat_id_for,
    legacy_chat_id_for,
    message_pages,
)

WHO = Identity("P1", "exp1", "sess1")
BOT = Bot("tutor", "m", "prompt", limits=Limits(max_user_messages=3))
NOW = 1_800_000_000.0


def _chat(store, key="main", opening=True, max_chats=5) -> Chat:
    chat_id = chat_id_for(WHO, key)
    fresh = Chat(chat_id, WHO, key, BOT, NOW, next_seq=2 if opening else 1, connection_id="c1")
    first = Message(chat_id, 1, "assistant", "Hello.", NOW) if opening else None
    return store.open_chat(fresh, first, max_chats)


def _user(chat: Chat, cmid: str, text: str = "hi") -> Message:
    return Message(chat.chat_id, chat.next_seq, "user", text, NOW, client_msg_id=cmid)


def _lease(chat: Chat, turn: str = "t1", until: float = NOW + 60) -> Lease:
    return Lease(turn, until, chat.next_seq)


def _obeyed(store, experiment: str) -> Controls:
    """What the request paths obey: the items `get_controls` reads, merged by the domain."""
    return obeyed(store.get_controls(experiment))


def test_connections_round_trip_and_expire(store):
    connection = Connection("c1", WHO, NOW, int(NOW) + 100)
    store.put_connection(connection)
    assert store.count_frame("c1", NOW, 10) == (connection, 1)
    assert store.count_frame("c1", NOW + 101, 10) is None  # expired records are absent, TTL or not
    store.delete_connection("c1")
    store.delete_connection("c1")  # idempotent
    assert store.count_frame("c1", NOW, 10) is None and list(store.connections()) == []


def test_open_chat_stores_the_opening_and_a_second_open_conflicts(store):
    chat = _chat(store)
    assert store.get_chat(chat.chat_id) == chat
    with pytest.raises(Conflict):  # a concurrent start opened it: the domain reads it instead
        _chat(store)
    assert store.get_chat(chat.chat_id) == chat
    assert [(m.seq, m.role, m.text) for m in store.messages(chat.chat_id)] == [(1, "assistant", "Hello.")]


def test_chats_per_participant(store):
    _chat(store, "a", max_chats=2)
    with pytest.raises(Conflict):  # opening it again counts nothing
        _chat(store, "a", max_chats=2)
    _chat(store, "b", max_chats=2)
    with pytest.raises(Conflict):
        _chat(store, "c", max_chats=2)
    assert store.get_chat(chat_id_for(WHO, "c")) is None


def test_chats_are_counted_per_session(store):
    """A participant code reused in another session is another person, with an allowance of their own."""
    _chat(store, "a", max_chats=1)
    again = Identity(WHO.participant, WHO.experiment, "sess2")
    fresh = Chat(chat_id_for(again, "a"), again, "a", BOT, NOW)
    assert store.open_chat(fresh, None, 1) == fresh
    with pytest.raises(Conflict):
        store.open_chat(Chat(chat_id_for(again, "b"), again, "b", BOT, NOW), None, 1)
    with pytest.raises(Conflict):
        _chat(store, "b", max_chats=1)


def test_a_chat_stored_under_its_old_id_stays_readable_listed_and_deletable(store):
    """Chats opened before ids named the session keep their ids: the store reads them by id as ever."""
    old = store.open_chat(Chat(legacy_chat_id_for(WHO, "main"), WHO, "main", BOT, NOW, next_seq=2),
                          Message(legacy_chat_id_for(WHO, "main"), 1, "assistant", "Hello.", NOW), 5)
    store.append_user_message(old, _user(old, "m1"), _lease(old), "c1", 3, NOW)
    assert store.get_chat(old.chat_id).identity == WHO and len(store.messages(old.chat_id)) == 2
    new = _chat(store, "second")
    assert [c.chat_id for c in store.experiment_chats("exp1", session=WHO.session)] == [old.chat_id, new.chat_id]
    dynamodb = isinstance(store, DynamoStore)

    def old_counter(participant: str) -> None:  # the experiment-wide counter of old (SQLite's is migrated away)
        if dynamodb:
            store._db.put_item(TableName="chats", Item={"pk": {"S": f"PART#exp1#{participant}"}, "sk": {"S": "META"}})

    old_counter("P1")
    deleted = store.delete_participant("exp1", "P1")
    assert (deleted.chats, deleted.records) == (2, 1 + 1 + dynamodb)  # a client message id, the counters
    assert store.get_chat(old.chat_id) is None and store.messages(old.chat_id) == []
    _chat(store, "third")
    old_counter("P1")
    assert store.delete_experiment("exp1").records == 1 + dynamodb
    if dynamodb:
        assert not [i for i in store._db.scan(TableName="chats")["Items"] if i["pk"]["S"].startswith("PART#")]


def test_append_assigns_sequence_and_takes_the_lease(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c2", 3, NOW)
    after = store.get_chat(chat.chat_id)
    assert after.next_seq == 3 and after.user_messages == 1 and after.connection_id == "c2"
    assert after.lease == Lease("t1", NOW + 60, 2) and after.replying(NOW)
    assert store.find_client_message(chat.chat_id, "m1") == 2
    assert store.get_message(chat.chat_id, 2).text == "hi"


def test_a_send_reads_its_chat_its_client_message_and_the_controls_in_one_request(store):
    store.set_controls("exp1", token_budget=100)
    assert store.read_for_send("c_missing", "m1", "exp1") == SendItems(None, None, store.get_controls("exp1"))
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    read = store.read_for_send(chat.chat_id, "m1", "exp1")
    assert read == SendItems(store.get_chat(chat.chat_id), 2, store.get_controls("exp1"))
    assert read.controls.experiment.token_budget == 100
    assert store.read_for_send(chat.chat_id, "m2", "exp2") == SendItems(store.get_chat(chat.chat_id), None,
                                                                         store.get_controls("exp2"))


def test_append_conflicts_write_nothing(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    after = store.get_chat(chat.chat_id)
    with pytest.raises(Conflict):  # stale chat, same id: the domain finds m1 stored and acknowledges it
        store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    with pytest.raises(Conflict):  # the chat as it is, but t1 holds the lease: reply_in_progress
        store.append_user_message(after, _user(after, "m2"), _lease(after, "t2"), "c1", 3, NOW)
    with pytest.raises(Conflict):  # the chat moved on since it was read
        store.append_user_message(chat, _user(chat, "m3"), _lease(chat, "t3"), "c1", 3, NOW)
    store.release_lease(chat.chat_id, "t1")
    freed = store.get_chat(chat.chat_id)
    with pytest.raises(Conflict):  # a free chat at its seq, but the id is stored already
        store.append_user_message(freed, _user(freed, "m1"), _lease(freed, "t4"), "c1", 3, NOW)
    assert [m.seq for m in store.messages(chat.chat_id)] == [1, 2]
    assert store.find_client_message(chat.chat_id, "m2") is None and store.get_chat(chat.chat_id) == freed


def test_message_limit(store):
    chat = _chat(store, opening=False)
    for i in range(3):
        store.append_user_message(chat, _user(chat, f"m{i}"), _lease(chat, f"t{i}", NOW - 1), "c1", 3, NOW)
        chat = store.get_chat(chat.chat_id)
    with pytest.raises(Conflict):
        store.append_user_message(chat, _user(chat, "m9"), _lease(chat, "t9"), "c1", 3, NOW)
    assert store.get_chat(chat.chat_id) == chat


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
    # the experiment's counter is not in the reply's transaction (a hot item): the turn adds to it
    assert store.read_controls("exp1").tokens_used == 0
    store.count_tokens("exp1", 12)
    store.count_tokens("exp1", 3)
    assert store.read_controls("exp1").tokens_used == 15
    assert store.read_controls("other").tokens_used == 0


def test_a_reply_is_stored_with_its_provenance_once_and_a_participant_message_without(store):
    """The reply's provenance is part of the reply's own write: stored with it, exactly once, read
    back as written (a system fingerprint may be absent); participants' messages have none."""
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    provenance = Provenance("m-2024-07-18", None, '{"max_tokens":400,"model":"m","temperature":0.7}', "ab" * 32)
    reply = Message(chat.chat_id, 3, "assistant", "answer", NOW, None, 7, 5, "m", 80, provenance)
    assert store.finish_reply(chat, reply, "t1")
    again = replace(reply, text="again", provenance=replace(provenance, model_snapshot="m-2025-01-01"))
    assert not store.finish_reply(chat, again, "t1")  # a second delivery's write stores nothing
    assert store.get_message(chat.chat_id, 3) == reply
    opening, question, answer = store.messages(chat.chat_id)
    assert answer.provenance == provenance and opening.provenance is None and question.provenance is None
    assert next(message_pages(store, chat.chat_id))[-1].provenance == provenance  # as the export reads it


def test_a_turn_is_claimed_exactly_once(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, "t1", NOW + 300), "c1", 3, NOW)
    assert store.get_chat(chat.chat_id).lease == Lease("t1", NOW + 300, 2, claimed=False)
    assert store.claim_turn(chat.chat_id, "someone-else", NOW + 60) is None
    claimed = store.claim_turn(chat.chat_id, "t1", NOW + 60)  # the first delivery: the lease shortens to the turn's
    assert claimed.lease == Lease("t1", NOW + 60, 2, claimed=True)
    assert claimed == store.get_chat(chat.chat_id)  # the chat as the claim left it, in the same request
    assert not store.claim_turn(chat.chat_id, "t1", NOW + 90)  # a duplicate delivery does nothing
    assert store.get_chat(chat.chat_id).lease.until == NOW + 60
    assert not store.claim_turn("c_missing", "t1", NOW + 60) and store.get_chat("c_missing") is None


def test_a_retaken_lease_is_claimable_again_and_the_old_job_is_not(store):
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat, "t1", NOW + 5), "c1", 3, NOW)
    assert store.claim_turn(chat.chat_id, "t1", NOW + 5)  # then its function died; the lease lapses
    assert store.take_lease(store.get_chat(chat.chat_id), Lease("t2", NOW + 300, 2), "c2", NOW + 6)
    assert store.get_chat(chat.chat_id).lease == Lease("t2", NOW + 300, 2, claimed=False)
    assert not store.claim_turn(chat.chat_id, "t1", NOW + 66)  # the old job, delivered again
    assert store.claim_turn(chat.chat_id, "t2", NOW + 66)
    store.release_lease(chat.chat_id, "t2")
    store.append_user_message(store.get_chat(chat.chat_id), _user(store.get_chat(chat.chat_id), "m2"),
                              Lease("t3", NOW + 300, 4), "c2", 3, NOW + 7)
    assert store.claim_turn(chat.chat_id, "t3", NOW + 70)  # a new message's lease starts unclaimed


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
    """1.2 MB of messages: DynamoDB answers a Query with at most 1 MB, so reading them all, or
    four of them, takes two pages (three messages, then one)."""
    chat = _chat(store, opening=False)
    for i in range(4):
        store.append_user_message(chat, _user(chat, f"m{i}", str(i) * 300_000), _lease(chat, f"t{i}", NOW - 1),
                                  "c1", 500, NOW)
        chat = store.get_chat(chat.chat_id)
    everything = store.messages(chat.chat_id)
    assert [(m.seq, m.text) for m in everything] == [(i + 1, str(i) * 300_000) for i in range(4)]
    assert [m.seq for m in store.messages(chat.chat_id, limit=4)] == [1, 2, 3, 4]
    assert [m.seq for m in store.messages(chat.chat_id, after_seq=2)] == [3, 4]
    assert [m.seq for m in store.messages(chat.chat_id, limit=2)] == [1, 2]
    assert [m.seq for m in store.messages(chat.chat_id, after_seq=1, limit=2)] == [2, 3]


def test_controls_default_and_bind(store):
    assert store.get_controls("exp1") == ControlItems(Controls(), Controls(), BreakerState())
    chat = _chat(store)
    store.bind_connection(chat.chat_id, "c7")
    assert store.get_chat(chat.chat_id).connection_id == "c7"


def test_the_request_paths_read_every_control_item_as_the_operator_wrote_it(store):
    """`get_controls` (every send and enrolment, in one request) and the operator's reads agree,
    each field set, with another experiment's items beside them."""
    store.set_controls("exp1", paused=True, token_budget=100)
    store.set_controls("exp2", token_budget=5)
    store.set_controls(None, paused=True)
    store.add_to_allowlist("exp1", ["P1"])
    store.count_tokens("exp1", 42)
    breaker.record_failure(store, NOW, 1, 30, 20)
    assert store.get_controls("exp1") == ControlItems(
        Controls(paused=True, token_budget=100, tokens_used=42, allowlist=True), Controls(paused=True),
        BreakerState(0, NOW, NOW + 20),  # opened (its count starts again)
    ) == ControlItems(store.read_controls("exp1"), store.read_controls(None), store.read_breaker())
    assert store.get_controls("exp3").experiment == Controls()


def test_refused_chats_are_not_counted(store):
    _chat(store, "a", max_chats=1)
    with pytest.raises(Conflict):
        _chat(store, "b", max_chats=1)
    _chat(store, "b", max_chats=2)  # the refusal did not count
    with pytest.raises(Conflict):
        _chat(store, "c", max_chats=2)


def test_controls_service_pause_experiment_budget_and_tokens(store):
    store.set_controls("exp1", token_budget=100)
    store.set_controls(None, paused=True)
    assert store.get_controls("exp1") == ControlItems(Controls(token_budget=100), Controls(paused=True), BreakerState())
    assert _obeyed(store, "exp1") == Controls(paused=True, token_budget=100, tokens_used=0)
    assert _obeyed(store, "exp2") == Controls(paused=True)  # the service-wide switch pauses everyone
    store.set_controls(None, paused=False)
    store.set_controls("exp2", paused=True)
    assert _obeyed(store, "exp1").paused is False and _obeyed(store, "exp2").paused is True
    chat = _chat(store)
    store.append_user_message(chat, _user(chat, "m1"), _lease(chat), "c1", 3, NOW)
    reply = Message(chat.chat_id, 3, "assistant", "answer", NOW, prompt_tokens=30, completion_tokens=12, model="m")
    assert store.finish_reply(chat, reply, "t1")
    store.count_tokens("exp1", 42)
    store.set_controls("exp1", paused=True)  # the operator's writes keep the count, the count keeps the budget
    assert _obeyed(store, "exp1") == Controls(paused=True, token_budget=100, tokens_used=42)


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
    assert store.get_chat(chat.chat_id).tokens_used == 3


def test_writes_to_a_missing_chat_create_nothing(store):
    with pytest.raises(Conflict):
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
    assert store.read_breaker() == BreakerState() and _obeyed(store, "exp1").llm_paused_until == 0
    assert not breaker.record_failure(store, NOW, 3, 30, 20)
    assert not breaker.record_failure(store, NOW + 1, 3, 30, 20)
    assert breaker.record_failure(store, NOW + 2, 3, 30, 20)  # the third within 30 s opens it
    assert _obeyed(store, "any-experiment").llm_paused_until == NOW + 22
    assert not breaker.record_failure(store, NOW + 3, 3, 30, 20)  # counting starts again
    assert store.read_breaker() == BreakerState(failures=1, window_start=NOW + 2, open_until=NOW + 22)


def test_the_llm_breaker_forgets_old_failures(store):
    breaker.record_failure(store, NOW, 2, 30, 20)
    assert not breaker.record_failure(store, NOW + 31, 2, 30, 20)  # outside the window: a new one starts
    assert _obeyed(store, "exp1").llm_paused_until == 0
    assert breaker.record_failure(store, NOW + 32, 2, 30, 20)


def test_a_failure_after_the_window_expired_starts_a_new_window_and_counts_in_it(store):
    """With a threshold of 1 every counted failure opens the breaker, the first of a new window too."""
    assert breaker.record_failure(store, NOW, 1, 30, 20)
    assert store.get_controls("exp1").breaker.open_until == NOW + 20
    assert breaker.record_failure(store, NOW + 31, 1, 30, 20)  # the window of the first has expired
    assert store.get_controls("exp1").breaker.open_until == NOW + 51


def test_the_breaker_is_replaced_only_as_it_was_read(store):
    first = BreakerState(failures=1, window_start=NOW)
    with pytest.raises(Conflict):  # nothing stored yet: only the initial state may be replaced
        store.replace_breaker(first, BreakerState(failures=2, window_start=NOW))
    store.replace_breaker(BreakerState(), first)
    with pytest.raises(Conflict):  # another instance counted first
        store.replace_breaker(BreakerState(), BreakerState(failures=1, window_start=NOW + 1))
    opened = BreakerState(failures=0, window_start=NOW + 0.1, open_until=NOW + 20.1)
    store.replace_breaker(first, opened)
    assert store.read_breaker() == opened
    store.replace_breaker(opened, BreakerState(failures=1, window_start=NOW + 0.1, open_until=NOW + 20.1))
    assert store.get_controls("exp1").breaker.failures == 1


def test_concurrent_failures_are_each_counted_and_open_the_breaker_once(store):
    failures = 6
    start, opened = threading.Barrier(failures), []

    def fail() -> None:
        start.wait()
        opened.append(breaker.record_failure(store, NOW, failures, 30, 20))

    threads = [threading.Thread(target=fail) for _ in range(failures)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(opened) == [False] * (failures - 1) + [True]
    assert store.read_breaker() == BreakerState(failures=0, window_start=NOW, open_until=NOW + 20)


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


# -- the operator's port (store.AdminStore) ------------------------------------------------------

def _seed_chat(store, who: Identity, key: str = "main", replies: int = 1) -> Chat:
    """A chat with its opening and `replies` turns (user message and reply), as the domain writes them."""
    chat = store.open_chat(
        Chat(chat_id_for(who, key), who, key, BOT, NOW, next_seq=2, connection_id="c1"),
        Message(chat_id_for(who, key), 1, "assistant", "Hello.", NOW), 5,
    )
    for i in range(replies):
        chat = store.get_chat(chat.chat_id)
        store.append_user_message(chat, _user(chat, f"{key}-m{i}", f"question {i}"), _lease(chat, f"t{i}"), "c1", 500, NOW)
        reply = Message(chat.chat_id, chat.next_seq + 1, "assistant", f"answer {i}", NOW + 1, None, 3, 2, "m", 40)
        assert store.finish_reply(chat, reply, f"t{i}")
        store.count_tokens(who.experiment, 5)
    return store.get_chat(chat.chat_id)


def test_operator_controls_are_read_as_written_and_cleared(store):
    assert store.read_controls(None) == Controls() and store.read_controls("exp1") == Controls()
    store.set_controls(None, paused=True)
    store.set_controls("exp1", token_budget=500)
    assert store.read_controls(None).paused is True
    assert store.read_controls("exp1") == Controls(paused=False, token_budget=500)  # not merged with the service's
    assert _obeyed(store, "exp1").paused is True  # what the domain obeys is merged
    _seed_chat(store, WHO)
    store.set_controls("exp1", clear_budget=True)
    assert store.read_controls("exp1") == Controls(token_budget=None, tokens_used=5)
    store.set_controls("exp1", paused=True, token_budget=0)  # 0: no budget for this experiment, whatever TOKEN_BUDGET says
    store.set_controls("exp1")  # nothing to write
    assert store.read_controls("exp1") == Controls(paused=True, token_budget=0, tokens_used=5)
    for bad in ({"token_budget": -1}, {"token_budget": 5, "clear_budget": True}):
        with pytest.raises(ValueError):
            store.set_controls("exp1", **bad)
    with pytest.raises(ValueError):
        store.set_controls(None, token_budget=5)
    assert store.read_controls("exp1").token_budget == 0


def test_experiment_chats_in_order_by_session_participant_and_key_in_pages(store):
    expected = []
    for session in ("s1", "s2"):
        for participant in ("P1", "P2", "P3"):
            for key in ("a", "b"):
                expected.append(_seed_chat(store, Identity(f"{session}{participant}", "exp1", session), key, replies=0))
    _seed_chat(store, Identity("s1P1", "other", "s1"), replies=0)
    listed = list(store.experiment_chats("exp1", page_size=4))
    assert listed == expected
    assert [c.chat_key for c in store.experiment_chats("exp1", session="s2", participant="s2P2", page_size=1)] == ["a", "b"]
    assert len(list(store.experiment_chats("exp1", participant="s1P3"))) == 2
    assert len(list(store.experiment_chats("exp1", session="s1"))) == 6
    assert list(store.experiment_chats("nobody")) == []


def test_message_pages_honour_the_page_size(store):
    chat = _seed_chat(store, WHO, replies=5)  # 11 messages
    pages = list(message_pages(store, chat.chat_id, page_size=4))
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [m for p in pages for m in p] == store.messages(chat.chat_id)
    assert [m.seq for p in message_pages(store, chat.chat_id, after_seq=9) for m in p] == [10, 11]
    assert list(message_pages(store, chat.chat_id, after_seq=11)) == []


def test_connections_are_listed_by_experiment(store):
    store.put_connection(Connection("c1", WHO, NOW, int(NOW) + 100))
    store.put_connection(Connection("c2", Identity("P2", "exp2", "s"), NOW, int(NOW) - 1))  # expired, still listed
    assert {c.connection_id for c in store.connections()} == {"c1", "c2"}
    assert [c.identity for c in store.connections("exp1")] == [WHO]


def _everything(store, experiment: str) -> tuple:
    chats = list(store.experiment_chats(experiment))
    return (
        [(c.identity, c.chat_key, [m for p in message_pages(store, c.chat_id) for m in p]) for c in chats],
        sorted(c.connection_id for c in store.connections(experiment)),
    )


def test_delete_participant_leaves_nothing_of_them_and_the_others_intact(store):
    p1, p2 = Identity("P1", "exp1", "s1"), Identity("P2", "exp1", "s1")
    gone = [_seed_chat(store, p1, "a", 2), _seed_chat(store, p1, "b", 1)]
    _seed_chat(store, p2, "a", 1)
    _seed_chat(store, Identity("P1", "exp2", "s1"), "a", 1)  # the same code in another experiment
    for cid, who in (("k1", p1), ("k2", p1), ("k3", p2)):
        store.put_connection(Connection(cid, who, NOW, int(NOW) + 100))
    before_p2, before_exp2 = _everything(store, "exp1")[0][2:], _everything(store, "exp2")

    deleted = store.delete_participant("exp1", "P1")
    assert (deleted.chats, deleted.messages, deleted.connections) == (2, 5 + 3, 2)
    assert deleted.records == 3 + 1  # client message ids, the chats-per-participant counter
    for chat in gone:
        assert store.get_chat(chat.chat_id) is None and store.messages(chat.chat_id) == []
        assert store.find_client_message(chat.chat_id, "a-m0") is None
    assert _everything(store, "exp1") == (before_p2, ["k3"])
    assert _everything(store, "exp2") == before_exp2
    assert store.delete_participant("exp1", "P1") == Deleted()  # idempotent
    # the counter went with the chats: P1 may open max_chats again, as a new participant would
    _chat(store, "x", max_chats=1)


def test_delete_participant_of_one_session_keeps_the_others_and_their_count(store):
    s1, s2 = Identity("P1", "exp1", "s1"), Identity("P1", "exp1", "s2")
    _seed_chat(store, s1, "a", 1)
    kept = _seed_chat(store, s2, "b", 1)
    store.put_connection(Connection("k1", s1, NOW, int(NOW) + 100))
    store.put_connection(Connection("k2", s2, NOW, int(NOW) + 100))
    deleted = store.delete_participant("exp1", "P1", session="s1")
    assert (deleted.chats, deleted.messages, deleted.connections, deleted.records) == (1, 3, 1, 1 + 1)
    assert [c.chat_id for c in store.experiment_chats("exp1")] == [kept.chat_id]
    assert [c.connection_id for c in store.connections()] == ["k2"]
    with pytest.raises(Conflict):  # s2 keeps its chat, so with max 1 its limit still holds
        store.open_chat(Chat(chat_id_for(s2, "c"), s2, "c", BOT, NOW), None, 1)
    assert store.open_chat(Chat(chat_id_for(s1, "c"), s1, "c", BOT, NOW), None, 1).chat_key == "c"  # s1's went


def test_delete_experiment_removes_everything_of_it_and_only_it(store):
    for participant in ("P1", "P2", "P3"):
        _seed_chat(store, Identity(participant, "exp1", "s1"), "a", 1)
        store.put_connection(Connection(f"k{participant}", Identity(participant, "exp1", "s1"), NOW, int(NOW) + 9))
    store.set_controls("exp1", paused=True, token_budget=99)
    other = _everything(store, "exp2") if _seed_chat(store, Identity("P1", "exp2", "s1"), "a", 1) else None
    deleted = store.delete_experiment("exp1")
    assert (deleted.chats, deleted.messages, deleted.connections) == (3, 9, 3)
    assert deleted.records == 3 + 3 + 1  # client message ids, counters, the experiment's controls
    assert _everything(store, "exp1") == ([], [])
    assert store.read_controls("exp1") == Controls()
    assert _everything(store, "exp2") == other
    assert store.read_controls("exp2").tokens_used == 5
    assert store.delete_experiment("exp1") == Deleted()


# -- allowlists: a flag on the CONTROL item, one item per code ------------------------------------------
def test_an_allowlist_is_off_until_a_code_is_added_then_admits_only_its_codes(store):
    assert _obeyed(store, "exp1").allowlist is False and store.read_controls("exp1").allowlist is False
    assert not store.on_allowlist("exp1", "P1")
    store.add_to_allowlist("exp1", [])  # nothing to add: still off
    assert _obeyed(store, "exp1").allowlist is False
    store.add_to_allowlist("exp1", ["P1", "P2", "P1"])
    assert _obeyed(store, "exp1").allowlist is True and store.read_controls("exp1").allowlist is True
    assert store.on_allowlist("exp1", "P1") and store.on_allowlist("exp1", "P2")
    assert not store.on_allowlist("exp1", "P3")
    assert not store.on_allowlist("exp2", "P1") and _obeyed(store, "exp2").allowlist is False  # per experiment
    store.add_to_allowlist("exp1", ["P2", "P3"])  # a code already on it stays once
    assert list(store.allowlist("exp1", page_size=2)) == ["P1", "P2", "P3"]
    store.remove_from_allowlist("exp1", ["P1", "P9"])  # a code not on it: nothing to remove
    assert list(store.allowlist("exp1")) == ["P2", "P3"] and not store.on_allowlist("exp1", "P1")
    store.remove_from_allowlist("exp1", ["P2", "P3"])
    assert list(store.allowlist("exp1")) == [] and _obeyed(store, "exp1").allowlist is True  # on, empty: nobody


def test_the_allowlist_flag_keeps_the_other_controls_and_the_service_pause(store):
    store.set_controls("exp1", paused=True, token_budget=7)
    store.add_to_allowlist("exp1", ["P1"])
    store.set_controls(None, paused=True)
    assert store.read_controls("exp1") == Controls(paused=True, token_budget=7, allowlist=True)
    assert _obeyed(store, "exp1") == Controls(paused=True, token_budget=7, allowlist=True)
    assert _obeyed(store, "exp2") == Controls(paused=True)  # the service's pause is not an allowlist
    store.set_controls("exp1", paused=False, clear_budget=True)  # the operator's switches leave the flag alone
    assert store.read_controls("exp1") == Controls(allowlist=True)


def test_clearing_an_allowlist_removes_every_code_and_the_flag_and_creates_nothing(store):
    store.set_controls("exp1", token_budget=7)
    codes = [f"P{i:03d}" for i in range(60)]  # DynamoDB writes 25 a request: more than two batches
    store.add_to_allowlist("exp1", codes)
    assert list(store.allowlist("exp1", page_size=7)) == codes
    assert store.clear_allowlist("exp1") == 60
    assert store.read_controls("exp1") == Controls(token_budget=7)
    assert list(store.allowlist("exp1")) == [] and not store.on_allowlist("exp1", "P001")
    assert store.clear_allowlist("exp1") == 0  # idempotent
    assert store.clear_allowlist("never") == 0
    assert store.delete_experiment("never") == Deleted()  # clearing wrote no CONTROL item


@pytest.mark.parametrize("experiment, codes", [("exp1", ["P 1"]), ("exp1", ["x" * 65]), ("exp1", [""]),
                                               ("", ["P1"]), ("exp#1", ["P1"])])
def test_codes_no_token_could_carry_are_refused(store, experiment, codes):
    for change in (store.add_to_allowlist, store.remove_from_allowlist):
        with pytest.raises(ValueError):
            change(experiment, codes)
    assert store.read_controls("exp1") == Controls() and list(store.allowlist("exp1")) == []


def test_deletions_take_the_allowlist_codes_with_them(store):
    store.set_controls("exp1", paused=True)
    store.add_to_allowlist("exp1", ["P1", "P2"])
    store.add_to_allowlist("exp2", ["P1"])
    assert store.delete_participant("exp1", "P2", session="s1") == Deleted()  # one session: the code stays
    assert store.on_allowlist("exp1", "P2")
    assert store.delete_participant("exp1", "P2") == Deleted(records=1)
    assert list(store.allowlist("exp1")) == ["P1"]
    assert store.delete_experiment("exp1") == Deleted(records=1 + 1)  # its code, its CONTROL item
    assert store.read_controls("exp1") == Controls() and list(store.allowlist("exp1")) == []
    assert list(store.allowlist("exp2")) == ["P1"] and _obeyed(store, "exp2").allowlist is True
