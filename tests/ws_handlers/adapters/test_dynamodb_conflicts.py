"""DynamoStore under DynamoDB's concurrency, as the strict emulation reproduces it.

These tests state what the store must survive on AWS, where requests really overlap: each
failed before the store was fixed (the experiment's counter in every reply's transaction,
conflicts turned into refusals, unprocessed keys read as absent).
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
import pytest
from waiting import wait_for
from moto import mock_aws

from local_gateway.strict_dynamodb import StrictDynamoDB
from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.bot import Bot
from ws_handlers.identity import Identity
from ws_handlers.store import Chat, Lease, Message, StoreThrottled, chat_id_for

BOT = Bot("tutor", "m", "prompt")
NOW = 1_800_000_000.0


@pytest.fixture
def new_store(dynamodb_tables):
    """new_store() inside mock_aws: a DynamoStore on template.yaml's tables."""

    def make() -> DynamoStore:
        dynamodb_tables(boto3.client("dynamodb"), "conns", "chats")
        return DynamoStore("conns", "chats")

    return make


def _replying_chat(store: DynamoStore, participant: str) -> tuple[Chat, Message]:
    """A chat of experiment exp1 whose turn t-<participant> holds the lease, and that turn's reply."""
    who = Identity(participant, "exp1", "sess1")
    chat_id = chat_id_for(who, "main")
    chat = store.open_chat(Chat(chat_id, who, "main", BOT, NOW, next_seq=2), Message(chat_id, 1, "assistant", "Hi.", NOW), 5)
    turn = f"t-{participant}"
    store.append_user_message(chat, Message(chat_id, 2, "user", "hello", NOW, client_msg_id="m1"),
                              Lease(turn, NOW + 60, 2), "c1", 10, NOW)
    reply = Message(chat_id, 3, "assistant", "Hello!", NOW, prompt_tokens=7, completion_tokens=5)
    return chat, reply


def test_two_replies_finishing_at_once_in_one_experiment_both_commit(strict_dynamodb: StrictDynamoDB, new_store):
    strict_dynamodb.configure(hold_seconds=0)  # holding() below makes the two commits overlap for certain
    with mock_aws():
        store = new_store()
        turns = [_replying_chat(store, p) for p in ("P1", "P2")]
        outcomes: list[Any] = [None, None]
        barrier = threading.Barrier(2)

        def finish(i: int) -> None:
            chat, reply = turns[i]
            barrier.wait()
            try:
                outcomes[i] = store.finish_reply(chat, reply, f"t-{chat.identity.participant}")
            except StoreThrottled as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
        with strict_dynamodb.holding():
            for thread in threads:
                thread.start()
            # both commits in flight at once, or one cancelled by the other, or (a store that no
            # longer commits in a transaction) both done: then the held ones may go
            wait_for(lambda: strict_dynamodb.counters.held == 2 or strict_dynamodb.counters.transaction_conflicts > 0
                     or not any(t.is_alive() for t in threads), timeout=60)
        for thread in threads:
            thread.join(60)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        assert outcomes == [True, True]
        assert [store.get_message(chat.chat_id, 3) for chat, _ in turns] == [reply for _, reply in turns]


def test_controls_read_while_dynamodb_leaves_keys_unprocessed_still_see_the_pause(strict_dynamodb: StrictDynamoDB,
                                                                                    new_store):
    with mock_aws():
        store = new_store()
        store.set_controls("exp1", paused=True)
        # under seed 1, the one throttled BatchGetItem leaves EXP#exp1/CONTROL among its unprocessed keys
        strict_dynamodb.configure(seed=1)
        with strict_dynamodb.throttling(first=1, operations=frozenset({"BatchGetItem"})):
            controls = store.get_controls("exp1").experiment
        assert strict_dynamodb.counters.unprocessed_keys > 0
        assert controls.paused


def test_controls_that_stay_unprocessed_fail_closed(strict_dynamodb: StrictDynamoDB, monkeypatch, new_store):
    monkeypatch.setattr("ws_handlers.adapters.dynamodb.time.sleep", lambda _s: None)  # the backoffs, not their length
    with mock_aws():
        store = new_store()
        store.set_controls("exp1", paused=True)
        with strict_dynamodb.throttling(rate=1.0, unprocessed=1.0, operations=frozenset({"BatchGetItem"})):
            with pytest.raises(StoreThrottled):  # never "not paused": the send is refused as throttled
                store.get_controls("exp1")
        assert store.get_controls("exp1").experiment.paused


def test_a_sends_reads_left_unprocessed_are_read_again_or_fail_closed(strict_dynamodb: StrictDynamoDB, monkeypatch,
                                                                      new_store):
    """A send's one BatchGetItem: an item DynamoDB leaves unread is never taken for an absent one
    (a stored client message id for a new message, a paused experiment for an open one)."""
    monkeypatch.setattr("ws_handlers.adapters.dynamodb.time.sleep", lambda _s: None)  # the backoffs, not their length
    with mock_aws():
        store = new_store()
        chat, _ = _replying_chat(store, "P1")
        store.set_controls("exp1", paused=True)
        whole = store.read_for_send(chat.chat_id, "m1", "exp1")
        assert whole.chat is not None and whole.client_seq == 2 and whole.controls.experiment.paused
        with strict_dynamodb.throttling(first=1, operations=frozenset({"BatchGetItem"})):  # half its keys left
            assert store.read_for_send(chat.chat_id, "m1", "exp1") == whole
        assert strict_dynamodb.counters.unprocessed_keys > 0
        with strict_dynamodb.throttling(rate=1.0, unprocessed=1.0, operations=frozenset({"BatchGetItem"})):
            with pytest.raises(StoreThrottled):
                store.read_for_send(chat.chat_id, "m1", "exp1")


@pytest.mark.parametrize("error", ["ThrottlingException", "ProvisionedThroughputExceededException"])
def test_a_reply_cancelled_for_capacity_is_retried_and_stored(strict_dynamodb: StrictDynamoDB, error: str, new_store):
    with mock_aws():
        store = new_store()
        chat, reply = _replying_chat(store, "P1")
        with strict_dynamodb.throttling(first=2, error=error, operations=frozenset({"TransactWriteItems"})):
            assert store.finish_reply(chat, reply, "t-P1")
        assert strict_dynamodb.counters.throttled_transactions == 2
        assert store.get_message(chat.chat_id, 3) == reply


def test_a_reply_throttled_past_the_retries_raises_and_writes_nothing(strict_dynamodb: StrictDynamoDB, monkeypatch,
                                                                      new_store):
    monkeypatch.setattr("ws_handlers.adapters.dynamodb.time.sleep", lambda _s: None)
    with mock_aws():
        store = new_store()
        chat, reply = _replying_chat(store, "P1")
        with strict_dynamodb.throttling(rate=1.0, operations=frozenset({"TransactWriteItems"})):
            with pytest.raises(StoreThrottled):
                store.finish_reply(chat, reply, "t-P1")
        assert store.get_message(chat.chat_id, 3) is None
        assert store.get_chat(chat.chat_id).lease.turn_id == "t-P1"  # still the turn's: it can free or retry


def test_a_write_that_meets_a_transaction_in_flight_is_retried_not_refused(strict_dynamodb: StrictDynamoDB, new_store):
    strict_dynamodb.configure(hold_seconds=0)
    with mock_aws():
        store = new_store()
        chat, reply = _replying_chat(store, "P1")
        done = threading.Event()

        def finish() -> None:
            store.finish_reply(chat, reply, "t-P1")
            done.set()

        with strict_dynamodb.holding():
            thread = threading.Thread(target=finish)
            thread.start()
            assert strict_dynamodb.wait_for(lambda c: c.held == 1, timeout=60)
            binder = threading.Thread(target=store.bind_connection, args=(chat.chat_id, "c9"))
            binder.start()  # meets the transaction holding META: TransactionConflictException, retried
            assert strict_dynamodb.wait_for(lambda c: c.write_conflicts > 0, timeout=60)
        thread.join(60)
        binder.join(60)
        assert done.is_set() and not binder.is_alive()
        assert store.get_chat(chat.chat_id).connection_id == "c9"


def test_many_replies_of_one_experiment_finishing_together_are_all_stored(strict_dynamodb: StrictDynamoDB, new_store):
    with mock_aws():
        store = new_store()
        turns = [_replying_chat(store, f"P{n}") for n in range(12)]
        barrier = threading.Barrier(len(turns))
        outcomes: dict[int, Any] = {}

        def finish(n: int) -> None:
            chat, reply = turns[n]
            barrier.wait()
            store.count_tokens("exp1", 12)
            outcomes[n] = store.finish_reply(chat, reply, f"t-{chat.identity.participant}")

        threads = [threading.Thread(target=finish, args=(n,)) for n in range(len(turns))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert outcomes == {n: True for n in range(len(turns))}
        assert store.read_controls("exp1").tokens_used == 12 * len(turns)
