"""Faults around a turn: 410 Gone, dropped sockets, model errors and timeouts. Nothing is lost."""

from __future__ import annotations

import time

import pytest

from waiting import Hold, wait_for

from local_gateway.offline_model import OfflineModel
from local_gateway.threaded import serve_in_thread
from ws_handlers.errors import CODES
from ws_handlers import turn


def _send_frame(chat_id, client_msg_id="m1", text="Why is the sky blue?"):
    return {"action": "send", "chat_id": chat_id, "client_msg_id": client_msg_id, "text": text}



def _assemble(frames, seq):
    text = ""
    for d in (f for f in frames if f["type"] == "delta" and f["seq"] == seq):
        assert d["offset"] <= len(text), "a gap in the stream"
        text = text[: d["offset"]] + d["text"]
    return text


def _transcript(harness, chat_id):
    return [(m.seq, m.role) for m in harness.store.messages(chat_id)]


# -- the socket -----------------------------------------------------------------------
def test_410_during_a_reply_removes_the_connection_and_the_reply_is_still_stored(emulated, model):
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    model.add_faults([{"kind": "stall", "after_tokens": 2, "seconds": model.hold.SECONDS}])
    emulated.send("c1", _send_frame(chat), wait=False)
    assert wait_for(lambda: any(f["type"] == "delta" for f in emulated.frames("c1")))
    emulated.registry.mark_gone("c1")  # the participant's Wi-Fi drops, no $disconnect
    model.hold.release()
    assert emulated.queue.wait_idle(60)
    assert not emulated.has_connection("c1")
    assert _transcript(emulated, chat) == [(1, "user"), (2, "assistant")]
    # the participant comes back and gets the reply through history
    emulated.connect("c2")
    [history] = emulated.send("c2", {"action": "history", "chat_id": chat, "after_seq": 1})
    assert [m["seq"] for m in history["messages"]] == [2]
    assert history["messages"][0]["text"] == emulated.store.get_message(chat, 2).text


def test_reconnecting_in_the_middle_of_a_reply_resumes_without_gap_or_duplicate(emulated, model, monkeypatch):
    monkeypatch.setattr(turn, "REBIND_INTERVAL", 1.0)  # the service's 5 s, shortened: the test waits it out
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    # the model stalls after 3 tokens; the socket drops and the participant is back within it
    model.add_faults([{"kind": "stall", "after_tokens": 3, "seconds": model.hold.SECONDS}])
    emulated.send("c1", _send_frame(chat), wait=False)
    assert wait_for(lambda: any(f["type"] == "delta" for f in emulated.frames("c1")))
    emulated.registry.mark_gone("c1")
    emulated.connect("c2")
    resumed = emulated.send("c2", {"action": "start", "ticket": emulated.ticket()}, wait=False)
    bound = time.monotonic()
    [chat_frame] = [f for f in resumed if f["type"] == "chat"]
    assert chat_frame["replying"] == 2  # the reply is still being written
    # The turn may have met c1's 410 before c2 was bound: it looks at the chat's binding again
    # REBIND_INTERVAL after its last look, so the stall ends once that much has passed.
    assert wait_for(lambda: time.monotonic() > bound + turn.REBIND_INTERVAL)
    model.hold.release()
    assert emulated.queue.wait_idle(60)
    on_c2 = emulated.frames("c2")
    final = on_c2[-1]
    assert final["type"] == "message" and final["seq"] == 2
    assert _assemble(on_c2, 2) == final["text"]
    # what c1 saw before it dropped is a prefix of the reply: the client shows no duplicate
    assert final["text"].startswith(_assemble(emulated.frames("c1"), 2))
    assert _transcript(emulated, chat) == [(1, "user"), (2, "assistant")]


def test_a_socket_gone_before_the_ack_still_gets_its_message_stored_and_answered(emulated):
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    emulated.registry.mark_gone("c1")
    emulated.send("c1", _send_frame(chat))
    assert _transcript(emulated, chat) == [(1, "user"), (2, "assistant")]
    emulated.connect("c2")
    again = emulated.send("c2", _send_frame(chat))  # the client retries on its new socket
    assert [f["type"] for f in again] == ["ack", "message"] and again[0]["duplicate"] is True


# -- the model ----------------------------------------------------------------------------
def test_429_is_retried_with_backoff_before_the_first_token(harness, model):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    model.add_faults([{"kind": "status", "status": 429, "times": 2}])
    frames = harness.send("c1", _send_frame(chat))
    assert frames[-1]["type"] == "message"
    assert model.stats["by_status"]["429"] == 2
    assert _transcript(harness, chat) == [(1, "user"), (2, "assistant")]


@pytest.mark.parametrize(
    "faults, code",
    [
        ([{"kind": "status", "status": 500, "times": 5}], "llm_unavailable"),
        ([{"kind": "status", "status": 503, "times": 5}], "llm_unavailable"),
        ([{"kind": "status", "status": 429, "times": 5}], "llm_rate_limited"),
        ([{"kind": "status", "status": 400, "times": 1}], "llm_error"),
        ([{"kind": "cut", "after_tokens": 4}], "reply_interrupted"),  # never retried: text had flowed
        # stalls and delays the client's timeout ends (the model's fixture releases them afterwards)
        ([{"kind": "stall", "after_tokens": 4, "seconds": Hold.SECONDS}], "reply_interrupted"),
        ([{"kind": "delay", "seconds": Hold.SECONDS}] * 2, "llm_timeout"),  # the first attempt and its one retry
    ],
)
def test_model_failures_become_error_frames_and_a_retry_regenerates(make_harness, model, faults, code):
    harness = make_harness(LLM_TIMEOUT_SECONDS="1", LLM_MAX_RETRIES="1")
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    model.add_faults(faults)
    frames = harness.send("c1", _send_frame(chat))
    assert frames[0]["type"] == "ack"
    error = frames[-1]
    assert error["type"] == "error" and error["code"] == code
    assert error["retryable"] is CODES[code].retryable
    assert error["seq"] == 2 and error["client_msg_id"] == "m1" and error["chat_id"] == chat
    assert "500" not in error["message"] and "Traceback" not in error["message"]
    assert not any(f["type"] == "message" for f in frames)  # no half reply shown as complete
    assert _transcript(harness, chat) == [(1, "user")]
    assert harness.store.get_chat(chat).lease is None  # the chat is free again

    model.faults.clear()
    retry = harness.send("c1", _send_frame(chat))
    assert retry[0] == {**frames[0], "duplicate": True}
    assert retry[-1]["type"] == "message" and retry[-1]["seq"] == 2
    assert _transcript(harness, chat) == [(1, "user"), (2, "assistant")]


def test_a_wrong_api_key_is_not_retryable_and_leaks_nothing(secret, make_harness):
    guarded = OfflineModel(ttft=0, tokens_per_second=0, api_key="the-right-key")
    with serve_in_thread(guarded.app()) as served:
        harness = make_harness(OPENAI_BASE_URL=served.url + "/v1", OPENAI_API_KEY="sk-wrong-key-12345")
        harness.connect("c1")
        chat = harness.start("c1")["chat_id"]
        frames = harness.send("c1", _send_frame(chat))
        error = frames[-1]
        assert error["code"] == "llm_error" and error["retryable"] is False
        assert "sk-wrong" not in str(frames) and "401" not in str(frames)


def test_a_crashed_turn_frees_the_chat_after_its_lease(make_harness, model):
    """A reply function that dies mid-turn leaves a lease; once it lapses a retry regenerates."""
    harness = make_harness(REPLY_LEASE_SECONDS="5")
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    chat = harness.store.get_chat(chat_id)
    from ws_handlers.store import Lease, Message

    now = time.time()
    message = Message(chat_id, 1, "user", "hello?", now - 10, client_msg_id="m1")
    harness.store.append_user_message(chat, message, Lease("dead-turn", now - 1, 1), "c1", 30, now - 10)
    retry = harness.send("c1", _send_frame(chat_id))
    assert retry[0]["duplicate"] is True and retry[-1]["type"] == "message"
    assert _transcript(harness, chat_id) == [(1, "user"), (2, "assistant")]


def test_an_unexpected_failure_is_an_internal_error_without_details(harness):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    harness.ddb.delete_table(TableName=harness.settings.chats_table)  # a broken deployment
    [error] = harness.send("c1", _send_frame(chat))
    assert error["type"] == "error" and error["code"] == "internal" and error["retryable"] is True
    assert "Resource" not in error["message"] and "Traceback" not in error["message"]


def test_dynamodb_throttling_is_a_retryable_error_and_writes_nothing(harness):
    """Throttling injected at the SDK's edge (botocore answers before any request is sent)."""
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    client = harness.store._db
    throttled = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"},
                 "ResponseMetadata": {"HTTPStatusCode": 400}}

    def throttle(**_):
        from botocore.awsrequest import AWSResponse

        return AWSResponse("https://dynamodb", 400, {}, None), throttled

    client.meta.events.register("before-call.dynamodb.TransactWriteItems", throttle, unique_id="throttle")
    try:
        [error] = harness.send("c1", _send_frame(chat))
    finally:
        client.meta.events.unregister("before-call.dynamodb.TransactWriteItems", unique_id="throttle")
    assert error["code"] == "throttled" and error["retryable"] is True
    assert _transcript(harness, chat) == []
    retry = harness.send("c1", _send_frame(chat))
    assert retry[0]["type"] == "ack" and retry[-1]["type"] == "message"


def test_long_replies_renew_their_leases_so_no_retry_races_them(make_harness, model):
    """Two replies stall at once: the process's one lease keeper renews both."""
    harness = make_harness(REPLY_LEASE_SECONDS="5", LLM_TIMEOUT_SECONDS="60")  # renewed every ~1.7 s
    chats = {}
    for conn, participant in (("c1", "P1"), ("c2", "P2")):
        harness.connect(conn, participant)
        chats[conn] = harness.start(conn, participant)["chat_id"]
    # the model falls silent mid-reply, until the test has seen the leases renewed
    model.add_faults([{"kind": "stall", "after_tokens": 2, "seconds": model.hold.SECONDS}] * 2)
    for conn, chat in chats.items():
        harness.send(conn, _send_frame(chat), wait=False)
    for conn in chats:  # the turns hold the chats
        assert wait_for(lambda: any(f["type"] == "delta" for f in harness.frames(conn)))
    harness.clock.advance(6)  # past the first lease, without waiting for it: only a renewal keeps the chat
    for chat in chats.values():
        assert wait_for(lambda: harness.store.get_chat(chat).lease.until > harness.clock())
    for conn, chat in chats.items():
        busy = harness.send(conn, _send_frame(chat, "m2"), wait=False)
        assert busy[-1]["code"] == "reply_in_progress"
    model.hold.release()
    assert harness.queue.wait_idle(60)
    for chat in chats.values():
        assert _transcript(harness, chat) == [(1, "user"), (2, "assistant")]


def test_management_api_errors_lose_no_text(emulated, model):
    """500s from the Management API: the SDK retries, the turn re-sends from the last offset
    delivered, so the participant's stream has no gap and the reply is stored once."""
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    model.add_faults([{"kind": "stall", "after_tokens": 1, "seconds": 0.3}])
    emulated.push_faults.extend([500] * 7)  # the ack's post and the first delta's attempts fail
    emulated.send("c1", _send_frame(chat))
    assert not emulated.push_faults
    frames = emulated.frames("c1")
    stored = emulated.store.get_message(chat, 2)
    assert _transcript(emulated, chat) == [(1, "user"), (2, "assistant")]
    assert "ack" not in [f["type"] for f in frames]  # lost after the SDK's 3 attempts: the client will resend
    assert frames[-1]["type"] == "message" and frames[-1]["text"] == stored.text
    assert _assemble(frames, 2) == stored.text  # the stream resumed from the last offset delivered: no gap
