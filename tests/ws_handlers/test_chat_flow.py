"""The happy paths of the message route: start, send with a streamed reply, history."""

from __future__ import annotations

import hashlib
import json

from harness import ORIGIN

from ws_handlers.model import Provenance


def test_a_ping_is_never_answered_by_the_function(harness):
    """API Gateway answers `ping` itself (a MOCK integration: tests/local_gateway/test_stack_e2e.py).
    A ping reaches the function only when API Gateway read the frame as another route (duplicate
    keys, a byte order mark): the frame is ambiguous, and refused as such."""
    harness.connect("c1")
    for body in ('{"action":"send","action":"ping"}', '\ufeff{"action":"ping"}'):
        before = len(harness.frames("c1"))
        assert harness.send_raw("c1", body) == {"statusCode": 200}
        [refused] = harness.frames("c1")[before:]
        assert (refused["type"], refused["code"], refused["retryable"]) == ("error", "bad_frame", False)


def test_start_opens_a_chat_with_the_opening_message_and_no_treatment(harness):
    harness.connect("c1")
    chat = harness.start("c1", opening_message="Hello, I am here to help.")
    assert chat["chat_id"].startswith("c_")
    assert [m["role"] for m in chat["messages"]] == ["assistant"]
    assert chat["messages"][0]["text"] == "Hello, I am here to help."
    assert chat["messages"][0]["seq"] == 1
    assert chat["limits"] == {"max_chars": 1000, "max_user_messages": 30, "user_messages": 0}
    assert chat["replying"] is None
    frame_text = str(chat)
    assert "SECRET-TREATMENT-MARKER" not in frame_text and "offline-tutor" not in frame_text


def test_send_acks_streams_deltas_and_stores_the_reply(harness):
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    frames = harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "What is a prime?"})
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["ack", "queued"] and kinds[-1] == "message" and set(kinds[2:-1]) == {"delta"}
    ack, queued, deltas, final = frames[0], frames[1], frames[2:-1], frames[-1]
    assert ack == {"type": "ack", "chat_id": chat_id, "client_msg_id": "m1", "seq": 1, "duplicate": False}
    assert queued == {"type": "queued", "chat_id": chat_id, "seq": 2, "client_msg_id": "m1"}
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    assert all(d["seq"] == 2 and d["chat_id"] == chat_id for d in deltas)
    text = ""
    for d in deltas:  # offsets make the stream resumable: each delta continues where the last ended
        assert d["offset"] == len(text)
        text += d["text"]
    assert final["seq"] == 2 and final["role"] == "assistant" and final["text"] == text
    assert final["usage"]["completion_tokens"] > 0 and final["usage"]["prompt_tokens"] > 0
    for f in frames:
        assert "SECRET-TREATMENT-MARKER" not in str(f) and "offline-tutor" not in str(f)

    stored = harness.store.messages(chat_id)
    assert [(m.seq, m.role) for m in stored] == [(1, "user"), (2, "assistant")]
    assert stored[0].text == "What is a prime?" and stored[0].client_msg_id == "m1"
    assert stored[1].text == text and stored[1].model == "offline-tutor"
    chat = harness.store.get_chat(chat_id)
    assert chat.lease is None and chat.next_seq == 3 and chat.user_messages == 1
    assert chat.tokens_used == final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]
    assert harness.store.read_controls("exp1").tokens_used == chat.tokens_used


def test_each_reply_is_stored_once_with_its_provenance_which_no_frame_carries(harness):
    """The queue delivers every job twice: one reply is stored, with the snapshot the model
    answered as, the parameters sent and the system prompt's hash; the browser sees none of it."""
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    for cmid, text in (("m1", "What is a prime?"), ("m2", "And 9?")):
        frames = harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": cmid, "text": text})
        assert frames[-1]["type"] == "message"
    assert harness.queue.wait_idle(60)
    stored = harness.store.messages(chat_id)
    assert [(m.seq, m.role) for m in stored] == [(1, "user"), (2, "assistant"), (3, "user"), (4, "assistant")]
    bot = harness.store.get_chat(chat_id).bot
    prompt_hash = hashlib.sha256(bot.system_prompt.encode()).hexdigest()
    for reply in (stored[1], stored[3]):
        assert reply.provenance == Provenance(
            "offline-tutor-2025-01-01", "fp_offline", '{"max_tokens":120,"model":"offline-tutor","temperature":0.2}',
            prompt_hash)
    assert stored[0].provenance is None and stored[2].provenance is None
    [history] = harness.send("c1", {"action": "history", "chat_id": chat_id, "after_seq": 0})
    shown = json.dumps(harness.frames("c1") + [history])
    for hidden in ("2025-01-01", "fp_offline", "temperature", prompt_hash, "parameters", "snapshot", "sha256"):
        assert hidden not in shown


def test_the_model_sees_the_system_prompt_and_the_conversation(harness, model):
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Tell me about volcanoes"})
    second = harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": "m2", "text": "And glaciers?"})
    assert second[0]["seq"] == 3 and second[-1]["seq"] == 4
    # the second prompt carried the whole conversation: more prompt tokens than the first
    first_usage = harness.store.get_message(chat_id, 2)
    assert second[-1]["usage"]["prompt_tokens"] > first_usage.prompt_tokens


def test_start_again_resumes_the_same_chat_with_its_history(harness):
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Hi"})
    harness.disconnect("c1")
    harness.connect("c2")
    again = harness.start("c2")
    assert again["chat_id"] == chat_id
    assert [m["seq"] for m in again["messages"]] == [1, 2]
    assert again["limits"]["user_messages"] == 1
    assert harness.store.get_chat(chat_id).connection_id == "c2"


def test_history_after_seq(harness):
    harness.connect("c1")
    chat_id = harness.start("c1", opening_message="Welcome.")["chat_id"]
    harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Hi"})
    frames = harness.send("c1", {"action": "history", "chat_id": chat_id, "after_seq": 1})
    assert frames == [
        {"type": "history", "chat_id": chat_id, "messages": frames[0]["messages"], "more": False, "replying": None}
    ]
    assert [m["seq"] for m in frames[0]["messages"]] == [2, 3]
    assert frames[0]["messages"][0]["client_msg_id"] == "m1"


def test_each_chat_key_is_its_own_chat(harness):
    harness.connect("c1")
    a = harness.start("c1", chat_key="round1")["chat_id"]
    b = harness.start("c1", chat_key="round2")["chat_id"]
    assert a != b


def test_disconnect_removes_the_connection(harness):
    harness.connect("c1")
    assert harness.has_connection("c1")
    assert harness.disconnect("c1") == {"statusCode": 200}
    assert not harness.has_connection("c1")
    assert harness.send("c1", {"action": "history", "chat_id": "c_x"})[0]["code"] == "not_connected"


def test_origin_header_is_case_insensitive(harness):
    event_origin = ORIGIN
    assert harness.connect("c1", origin=event_origin)["statusCode"] == 200


def test_a_paced_bot_tells_the_page_its_pace_and_nothing_else_of_the_bot(harness):
    from ws_handlers.bot import Pace

    harness.connect("c1")
    assert "pace" not in harness.start("c1", chat_key="plain")
    chat = harness.start("c1", chat_key="paced", pace=Pace(words_per_minute=180, jitter=0.25))
    assert chat["pace"] == {"words_per_minute": 180, "jitter": 0.25}
    assert "SECRET-TREATMENT-MARKER" not in str(chat) and "offline-tutor" not in str(chat)
