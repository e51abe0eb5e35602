"""The entry points' shell (ws_handlers/entry.py): logs that say which invocation and frame they
belong to, and what each route's caller gets when its handler fails."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError


def _lines(logs) -> list[dict]:
    return [json.loads(line) for line in logs.getvalue().splitlines()]


def test_log_lines_carry_their_invocation_and_frame_and_nothing_of_the_one_before(harness, logs):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    [refusal] = harness.send("c1", {"action": "send", "chat_id": chat, "client_msg_id": "m1", "text": " "})
    assert refusal["code"] == "empty_message"
    harness.disconnect("c1")
    by_message = {line["message"]: line for line in _lines(logs)}
    refused, gone = by_message["refused"], by_message["disconnected"]
    assert refused["function_name"] == "message" and refused["function_request_id"]
    assert (refused["connection_id"], refused["participant"], refused["action"], refused["code"]) == (
        "c1", "P1", "send", "empty_message")
    # the same warm container (this process) ran $disconnect next: none of the frame's keys remain
    assert gone["function_name"] == "disconnect" and gone["function_request_id"] != refused["function_request_id"]
    assert "participant" not in gone and "action" not in gone


def test_a_handshake_that_fails_for_another_reason_than_a_refusal_is_a_lambda_error(harness):
    """Lambda records the error (ConnectErrorsAlarm) and API Gateway answers the handshake 500,
    without detail; a refusal stays a status of its own."""
    assert harness.connect("c1", token="not-a-token")["statusCode"] == 401
    harness.ddb.delete_table(TableName=harness.settings.connections_table)  # a broken deployment
    with pytest.raises(ClientError):
        harness.connect("c1")
    with pytest.raises(ClientError):  # $disconnect too: best effort, and counted
        harness.disconnect("c1")


def test_a_caller_whose_socket_closed_before_its_answer_is_forgotten_and_its_message_kept(emulated, model):
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    emulated.push_faults.append(410)  # the ack finds the socket closed
    emulated.send("c1", {"action": "send", "chat_id": chat, "client_msg_id": "m1", "text": "Hello?"})
    [unknown] = emulated.send("c1", {"action": "history", "chat_id": chat})
    assert unknown["code"] == "not_connected"  # the 410 removed the connection
    emulated.connect("c2")
    history = emulated.send("c2", {"action": "history", "chat_id": chat})[-1]
    assert [(m["seq"], m["role"]) for m in history["messages"]] == [(1, "user"), (2, "assistant")]
