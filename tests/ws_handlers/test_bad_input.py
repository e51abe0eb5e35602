"""Malformed frames and bad tickets: a clear error frame, nothing written, no stack trace."""

from __future__ import annotations

import json
import time

import pytest

from ws_handlers.bot import Bot
from ws_handlers.errors import CODES
from ws_handlers.tickets import Identity, mint_ticket


def _snapshot(harness):
    return sorted(json.dumps(i, sort_keys=True) for i in harness.table_items("chats"))


@pytest.fixture
def started(harness):
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    return harness, chat_id


def _one_error(frames):
    assert len(frames) == 1 and frames[0]["type"] == "error", frames
    error = frames[0]
    assert error["code"] in CODES and error["retryable"] == CODES[error["code"]].retryable
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    "body, code",
    [
        ("not json", "bad_frame"),
        ("", "bad_frame"),
        (None, "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('"start"', "bad_frame"),
        ("null", "bad_frame"),
        ("[" * 100_00 + "]" * 100_00, "bad_frame"),
        ('{"action": "delete_everything"}', "unknown_action"),
        ('{"no_action": 1}', "unknown_action"),
        ('{"action": 7}', "unknown_action"),
        ('{"action": "start"}', "invalid_field"),
        ('{"action": "start", "ticket": 12}', "invalid_field"),
        ('{"action": "send", "chat_id": "c_1", "client_msg_id": "m1"}', "invalid_field"),
        ('{"action": "send", "chat_id": "c_1", "client_msg_id": "m1", "text": ["hi"]}', "invalid_field"),
        ('{"action": "send", "chat_id": "c_1", "client_msg_id": "has space", "text": "hi"}', "invalid_field"),
        ('{"action": "send", "chat_id": "../../etc", "client_msg_id": "m1", "text": "hi"}', "invalid_field"),
        ('{"action": "send", "chat_id": "c_1", "client_msg_id": "m1", "text": "\\ud800"}', "invalid_field"),
        ('{"action": "send", "chat_id": true, "client_msg_id": "m1", "text": "hi"}', "invalid_field"),
        ('{"action": "history", "chat_id": "c_1", "after_seq": -1}', "invalid_field"),
        ('{"action": "history", "chat_id": "c_1", "after_seq": "3"}', "invalid_field"),
        ('{"action": "history", "chat_id": "c_1", "after_seq": true}', "invalid_field"),
        ('{"action": "history", "chat_id": "c_1", "after_seq": 1e400}', "invalid_field"),
        (json.dumps({"action": "send", "chat_id": "c_1", "client_msg_id": "m1", "text": "x" * 70_000}), "frame_too_large"),
    ],
)
def test_malformed_frames_get_an_error_and_write_nothing(started, body, code):
    harness, _ = started
    before = _snapshot(harness)
    response = harness.send_raw("c1", body)
    assert response == {"statusCode": 200}
    frames = harness.frames("c1")
    assert _one_error(frames[-1:])["code"] == code
    assert _snapshot(harness) == before


def _nested(depth, kind="array"):
    return "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "0" + "}" * depth


SEND = '{"action":"send","chat_id":"c_1","client_msg_id":"m1","text":"hi","x":%s}'


@pytest.mark.parametrize(
    "body, code",
    [
        # deep: beyond the parser's recursion limit, or parsed and over MAX_NESTING (32)
        *((_nested(depth), "too deep") for depth in (1_000, 5_000, 10_000)),
        *((_nested(depth, "object"), "too deep") for depth in (1_000, 5_000)),  # 10,000 would not fit a frame
        (SEND % _nested(5_000), "too deep"),
        ('{"action":"ping","x":%s}' % _nested(1_000, "object"), "too deep"),
        (SEND % _nested(32), "too deep"),  # the frame's own object makes 33
        ('{"action":"dance","x":%s}' % _nested(31), "unknown_action"),  # 32: parsed and read
        # wide but shallow: read like any frame
        ("[%s]" % ",".join(["0"] * 10_000), "bad_frame"),
        ("{%s}" % ",".join(f'"k{i}":0' for i in range(2_000)), "unknown_action"),
        ('{"action":"dance","x":[%s]}' % ",".join(["[]"] * 5_000), "unknown_action"),
    ],
)
def test_deep_and_wide_frames_get_a_documented_answer(started, body, code):
    harness, _ = started
    assert len(body.encode()) <= 32 * 1024  # one frame: these pass API Gateway
    before = _snapshot(harness)
    assert harness.send_raw("c1", body) == {"statusCode": 200}
    error = _one_error(harness.frames("c1")[-1:])
    if code == "too deep":  # said so, not "not a JSON object"
        assert error["code"] == "bad_frame" and "more than 32 deep" in error["message"]
    else:
        assert error["code"] == code
    assert _snapshot(harness) == before


@pytest.mark.parametrize("ticket", ["", "garbage", "gAAAAA" + "A" * 200, "x" * 70_000])
def test_garbage_tickets_are_refused(started, ticket):
    harness, _ = started
    before = _snapshot(harness)
    error = _one_error(harness.send("c1", {"action": "start", "ticket": ticket}))
    assert error["code"] in ("invalid_ticket", "frame_too_large")
    assert _snapshot(harness) == before


def test_a_tampered_ticket_is_refused(started):
    harness, _ = started
    ticket = harness.ticket()
    middle = len(ticket) // 2
    tampered = ticket[:middle] + ("A" if ticket[middle] != "A" else "B") + ticket[middle + 1 :]
    assert _one_error(harness.send("c1", {"action": "start", "ticket": tampered}))["code"] == "invalid_ticket"


def test_a_ticket_minted_with_another_secret_is_refused(started):
    harness, _ = started
    forged = mint_ticket("z" * 48, harness.identity(), "main", Bot("b", "m", "You obey me."))
    assert _one_error(harness.send("c1", {"action": "start", "ticket": forged}))["code"] == "invalid_ticket"


def test_an_expired_ticket_is_refused(started):
    harness, _ = started
    old = mint_ticket(harness.secret, harness.identity(), "late", Bot("b", "m", "p"), now=time.time() - 2 * 86400)
    before = _snapshot(harness)
    assert _one_error(harness.send("c1", {"action": "start", "ticket": old}))["code"] == "ticket_expired"
    assert _snapshot(harness) == before


def test_a_ticket_for_another_participant_is_refused(started):
    harness, _ = started
    theirs = harness.ticket("P2", chat_key="other")
    before = _snapshot(harness)
    assert _one_error(harness.send("c1", {"action": "start", "ticket": theirs}))["code"] == "ticket_mismatch"
    assert _snapshot(harness) == before


def test_a_ticket_for_another_session_is_refused(started):
    harness, _ = started
    other = mint_ticket(harness.secret, Identity("P1", "exp1", "sess2"), "main", Bot("b", "m", "p"))
    assert _one_error(harness.send("c1", {"action": "start", "ticket": other}))["code"] == "ticket_mismatch"


def test_another_participants_chat_id_is_not_found(started):
    harness, chat_id = started
    harness.connect("c2", participant="P2")
    before = _snapshot(harness)
    for frame in (
        {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "let me in"},
        {"action": "history", "chat_id": chat_id},
    ):
        assert _one_error(harness.send("c2", frame))["code"] == "chat_not_found"
    assert _snapshot(harness) == before


def test_an_unknown_chat_id_is_not_found(started):
    harness, _ = started
    frame = {"action": "send", "chat_id": "c_" + "0" * 32, "client_msg_id": "m1", "text": "hi"}
    error = _one_error(harness.send("c1", frame))
    assert error["code"] == "chat_not_found" and error["client_msg_id"] == "m1"


def test_an_unknown_connection_cannot_act(harness):
    error = _one_error(harness.send("ghost", {"action": "history", "chat_id": "c_1"}))
    assert error["code"] == "not_connected"
