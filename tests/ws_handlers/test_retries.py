"""Exactly once: retries with the same client_msg_id, duplicates, and concurrent sends."""

from __future__ import annotations

import dataclasses
import time

from waiting import wait_for

from ws_handlers.bot import Limits
from ws_handlers import turn
from ws_handlers.store import Lease, Message


def _send_frame(chat_id, client_msg_id, text="Is 7 a prime?"):
    return {"action": "send", "chat_id": chat_id, "client_msg_id": client_msg_id, "text": text}


def _started(harness, cid="c1"):
    harness.connect(cid)
    return harness.start(cid)["chat_id"]


def test_a_retry_after_the_reply_is_acked_again_and_gets_the_stored_reply(harness, model):
    chat = _started(harness)
    first = harness.send("c1", _send_frame(chat, "m1"))
    requests = model.stats["requests"]
    again = harness.send("c1", _send_frame(chat, "m1"))
    assert [f["type"] for f in again] == ["ack", "message"]
    assert again[0]["duplicate"] is True and again[0]["seq"] == 1
    assert again[1] == first[-1]
    assert model.stats["requests"] == requests  # no second model call
    assert [m.seq for m in harness.store.messages(chat)] == [1, 2]


def test_a_retry_with_different_text_is_still_the_same_message(harness):
    chat = _started(harness)
    harness.send("c1", _send_frame(chat, "m1", "first words"))
    again = harness.send("c1", _send_frame(chat, "m1", "other words"))
    assert again[0]["duplicate"] is True
    assert harness.store.get_message(chat, 1).text == "first words"


def test_a_retry_from_a_new_socket_while_the_reply_streams_moves_the_stream_there(harness, model, monkeypatch):
    monkeypatch.setattr(turn, "REBIND_INTERVAL", 1.0)  # the service's 5 s, shortened: the test waits it out
    chat = _started(harness)
    model.add_faults([{"kind": "stall", "after_tokens": 2, "seconds": model.hold.SECONDS}])
    harness.send("c1", _send_frame(chat, "m1"), wait=False)
    assert wait_for(lambda: any(f["type"] == "delta" for f in harness.frames("c1")))
    streaming_since = time.monotonic()
    harness.connect("c2")
    harness.send("c2", _send_frame(chat, "m1"), wait=False)
    # The old socket stays open (no 410): the turn looks at the chat's binding again at its first
    # delta REBIND_INTERVAL after it began, so the stall ends once that much has passed.
    assert wait_for(lambda: time.monotonic() > streaming_since + turn.REBIND_INTERVAL)
    model.hold.release()
    assert harness.queue.wait_idle(60)
    again = harness.frames("c2")
    assert again[0]["type"] == "ack" and again[0]["duplicate"] is True
    final = again[-1]
    assert final["type"] == "message" and final["seq"] == 2
    deltas = [f for f in again if f["type"] == "delta"]
    assert [d["index"] for d in deltas] == list(range(len(deltas)))  # counted on this socket, from 0
    assert any(f["type"] == "delta" for f in harness.frames("c1"))  # the old socket had deltas of its own
    assembled = ""
    for d in deltas:
        assert d["offset"] <= len(assembled)
        assembled = assembled[: d["offset"]] + d["text"]
    assert assembled == final["text"]
    assert [m.seq for m in harness.store.messages(chat)] == [1, 2]


def test_two_concurrent_sends_to_one_chat_one_waits(harness, model):
    chat = _started(harness)
    model.add_faults([{"kind": "delay", "seconds": model.hold.SECONDS}])  # until both sends are answered
    harness.send_at_once([("c1", _send_frame(chat, f"m{i}", f"text m{i}")) for i in (1, 2)], wait=False)
    model.hold.release()
    assert harness.queue.wait_idle(60)
    frames = harness.frames("c1")[1:]  # after the chat frame
    acks = [f for f in frames if f["type"] == "ack"]
    errors = [f for f in frames if f["type"] == "error"]
    assert len(acks) == 1 and len(errors) == 1
    assert errors[0]["code"] == "reply_in_progress" and errors[0]["retryable"] is True
    assert errors[0]["client_msg_id"] != acks[0]["client_msg_id"]
    stored = harness.store.messages(chat)
    assert [(m.seq, m.role) for m in stored] == [(1, "user"), (2, "assistant")]
    # the refused one goes through once the reply is done
    retry = harness.send("c1", _send_frame(chat, errors[0]["client_msg_id"]))
    assert retry[0]["type"] == "ack" and retry[0]["seq"] == 3 and retry[-1]["seq"] == 4


def test_the_same_message_sent_twice_at_once_is_stored_once(harness):
    chat = _started(harness)
    harness.connect("c2")
    harness.send_at_once([(cid, _send_frame(chat, "m1")) for cid in ("c1", "c2")])
    acks = [f for cid in ("c1", "c2") for f in harness.frames(cid) if f["type"] == "ack"]
    assert sorted(a["duplicate"] for a in acks) == [False, True]
    assert {a["seq"] for a in acks} == {1}
    stored = harness.store.messages(chat)
    assert [(m.seq, m.role) for m in stored] == [(1, "user"), (2, "assistant")]


def test_a_send_whose_read_missed_its_own_id_stored_from_another_socket_is_acked_not_refused(harness, monkeypatch):
    """DynamoDB's BatchGetItem reads each item committed, not the batch as one: while another socket
    appends the same client message id, a send may read the chat with that append in it (its reply
    queued) and the id's record from before it. Neither local store tears a read so (SQLite's is one
    statement, moto applies a transaction at once), so the first read is torn here as DynamoDB may."""
    chat_id = _started(harness)
    chat = harness.store.get_chat(chat_id)
    lease = Lease("t-other-socket", time.time() + 300, chat.next_seq)
    harness.store.append_user_message(chat, Message(chat_id, chat.next_seq, "user", "Is 7 a prime?", time.time(),
                                                    client_msg_id="m1"), lease, "c1", 10, time.time())
    real, reads = harness.store.read_for_send, []

    def torn(*args):
        read = real(*args)
        reads.append(read)
        return dataclasses.replace(read, client_seq=None) if len(reads) == 1 else read

    monkeypatch.setattr(harness.store, "read_for_send", torn)
    harness.connect("c2")
    frames = harness.send("c2", _send_frame(chat_id, "m1"))
    assert reads[0].client_seq == chat.next_seq  # the id was stored: only the read missed it
    assert [f["type"] for f in frames] == ["ack", "queued"], frames  # not reply_in_progress
    assert frames[0]["duplicate"] is True and frames[0]["seq"] == chat.next_seq
    assert [m.client_msg_id for m in harness.store.messages(chat_id)] == ["m1"]


def test_limit_counts_stored_messages_not_attempts(harness):
    harness.connect("c1")
    chat = harness.start("c1", limits=Limits(max_user_messages=1))["chat_id"]
    for _ in range(3):
        assert harness.send("c1", _send_frame(chat, "m1"))[0]["type"] == "ack"
    assert harness.store.get_chat(chat).user_messages == 1
