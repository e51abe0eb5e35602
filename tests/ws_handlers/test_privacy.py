"""Privacy: what the handlers log and what the browser receives during a whole chat.

Logs carry ids, codes, sizes and timings, never a participant's words, a reply, the
treatment (system prompt, opening message), a ticket, a token, the ticket secret or the
API key. Frames carry the conversation, never the treatment: no system prompt, model,
temperature or bot name, in any frame type, nor a reply's provenance (the model snapshot, the
parameters, the system prompt's hash), which only the store and the exports hold.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from harness import Harness
from waiting import wait_for
from local_gateway.management_api import RecordingRegistry, management_app
from local_gateway.threaded import serve_in_thread
from ws_handlers import tickets

#: docs/protocol.md, "Server to client": the fields each frame type may carry.
FRAME_FIELDS = {
    "chat": {"type", "chat_id", "messages", "more", "replying", "limits"},
    "history": {"type", "chat_id", "messages", "more", "replying"},
    "ack": {"type", "chat_id", "client_msg_id", "seq", "duplicate"},
    "queued": {"type", "chat_id", "seq", "client_msg_id"},
    "delta": {"type", "chat_id", "seq", "index", "offset", "text"},
    "message": {"type", "chat_id", "seq", "role", "text", "created_at", "client_msg_id", "usage"},
    "error": {"type", "code", "message", "retryable", "chat_id", "client_msg_id", "seq", "field"},
    "pong": {"type"},
}
MESSAGE_FIELDS = {"seq", "role", "text", "created_at", "client_msg_id", "usage"}
TREATMENT_KEYS = {"system_prompt", "model", "temperature", "bot", "bot_name", "name", "max_tokens", "opening_message",
                  "prompt", "treatment", "system", "provenance", "model_snapshot", "system_fingerprint", "parameters",
                  "system_prompt_sha256"}



@pytest.fixture
def emulated_with_key(secret, model, dynamodb_tables) -> Iterator[Harness]:
    """conftest's `emulated` (the local Management API, which can answer 410), with an API key
    unique to this test, so that finding it in the logs would mean something."""
    registry = RecordingRegistry()
    api_key = "sk-privacy-" + uuid.uuid4().hex
    with mock_aws(), serve_in_thread(management_app(registry, "test")) as served:
        h = Harness(secret, model.url, {"WEBSOCKET_ENDPOINT": f"{served.url}/test", "OPENAI_API_KEY": api_key},
                    registry=registry, tables=dynamodb_tables)
        h.api_key = api_key  # type: ignore[attr-defined]
        yield h
        h.close()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif value is not None:
        yield str(value)


def _haystack(*texts: str) -> str:
    """The raw text, plus every string of every JSON line decoded (so escapes hide nothing)."""
    parts = list(texts)
    for text in texts:
        for line in text.splitlines():
            try:
                parts.extend(_strings(json.loads(line)))
            except ValueError:
                continue
    return "\n".join(parts)


def _windows(secret: str, size: int) -> set[str]:
    """Every chunk of `size` characters (step size/2): a truncated secret is still a leak."""
    step = max(1, size // 2)
    return {secret[i : i + size] for i in range(0, max(1, len(secret) - size + 1), step)} | {secret[-size:]}


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


def test_a_whole_chat_logs_no_text_or_secret_and_frames_show_no_treatment(emulated_with_key, model, logs, caplog, capfd):
    h = emulated_with_key
    tag = uuid.uuid4().hex[:12]
    system_prompt = f"You are Ada, a patient maths tutor. Treatment arm B. SYSMARK{tag} keep this hidden."
    opening = f"Welcome! I am here for your questions. OPENMARK{tag}"
    bot = {"name": f"botname{tag}", "model": f"modelname{tag}", "system_prompt": system_prompt,
           "temperature": 1.234567, "max_tokens": 300, "opening_message": opening}
    texts = {
        "m1": f"Could you explain prime numbers to me? USERMARKONE{tag}",
        "m2": f"And what about composite numbers, please? USERMARKTWO{tag}",
        "m3": f"Why does factorisation matter for cryptography? USERMARKTHREE{tag}",
        "long": (f"LONGMARK{tag} " * 200).strip(),
    }
    token1, token2 = h.token("P1"), h.token("P1", ttl=7200)
    ticket = h.ticket(**bot)
    tampered_ticket = ticket[:40] + ("A" if ticket[40] != "A" else "B") + ticket[41:]
    tampered_token = token1[:-6] + ("AAAAAA" if not token1.endswith("AAAAAA") else "BBBBBB")

    def send(cid: str, cmid: str, text: str, wait: bool = True) -> list[dict[str, Any]]:
        return h.send(cid, {"action": "send", "chat_id": chat_id, "client_msg_id": cmid, "text": text}, wait=wait)

    # connect (and one refused connection), start with the bot
    assert h.connect("c1", token=token1) == {"statusCode": 200}
    assert h.connect("c-refused", token=tampered_token)["statusCode"] == 401
    [chat] = h.send("c1", {"action": "start", "ticket": ticket})
    assert chat["type"] == "chat" and chat["messages"][0]["text"] == opening
    chat_id = chat["chat_id"]
    [refused] = h.send("c1", {"action": "start", "ticket": tampered_ticket})
    assert refused["code"] == "invalid_ticket"

    # two sends answered by the offline model; the second loses its socket (410) mid-reply
    first = send("c1", "m1", texts["m1"])
    assert first[0]["type"] == "ack" and first[-1]["type"] == "message"
    model.add_faults([{"kind": "stall", "after_tokens": 2, "seconds": model.hold.SECONDS}])
    send("c1", "m2", texts["m2"], wait=False)
    assert wait_for(lambda: any(json.loads(p)["type"] == "delta" and json.loads(p)["seq"] == 5
                                 for p in h.registry.posts("c1")))
    h.registry.mark_gone("c1")
    model.hold.release()
    assert h.queue.wait_idle(60)
    assert not h.has_connection("c1")  # the 410 removed it; the reply is stored anyway
    assert h.connect("c2", token=token2) == {"statusCode": 200}
    [history] = h.send("c2", {"action": "history", "chat_id": chat_id, "after_seq": 0})
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3, 4, 5]

    # the model fails: refused (400), then cut off mid-stream, then a retry succeeds
    model.add_faults([{"kind": "status", "status": 400, "times": 1}])
    failed = send("c2", "m3", texts["m3"])
    assert failed[-1]["type"] == "error" and failed[-1]["code"] == "llm_error"
    model.add_faults([{"kind": "cut", "after_tokens": 4}])
    cut = send("c2", "m3", texts["m3"])
    assert cut[-1]["type"] == "error" and cut[-1]["code"] == "reply_interrupted"
    retried = send("c2", "m3", texts["m3"])
    assert retried[0]["duplicate"] is True and retried[-1]["type"] == "message"

    # a refused message, a ping that reached the function (API Gateway answers the others), goodbye
    [too_long] = send("c2", "m4", texts["long"])
    assert too_long["code"] == "message_too_long"
    [stray] = h.send("c2", {"action": "ping"})
    assert stray["code"] == "bad_frame"
    h.disconnect("c2")
    h.disconnect("c1")
    assert h.queue.wait_idle(60)

    # -- what was logged -------------------------------------------------------------------
    out, err = capfd.readouterr()  # Powertools metrics (EMF) and anything printed
    logged = _haystack(logs.getvalue(), caplog.text, out, err)
    records = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    messages = {r.get("message") for r in records}
    for expected in ("connected", "connection refused", "refused", "reply stored", "connection gone during reply",
                     "reply failed", "disconnected"):
        assert expected in messages, f"the capture missed {expected!r}: {sorted(map(str, messages))}"
    assert any(r.get("code") == "invalid_ticket" for r in records)
    assert any(r.get("code") == "llm_error" for r in records) and any(r.get("code") == "reply_interrupted" for r in records)

    stored = h.store.messages(chat_id)
    replies = [m.text for m in stored if m.role == "assistant" and m.seq > 1]
    assert len(replies) == 3 and all(len(r) > 40 for r in replies)
    [provenance] = {m.provenance for m in stored if m.role == "assistant" and m.seq > 1}
    assert provenance.model_snapshot == f"modelname{tag}-2025-01-01"
    provenance_shown = {"model snapshot": provenance.model_snapshot, "fingerprint": provenance.system_fingerprint,
                        "parameters": provenance.parameters, "prompt hash": provenance.system_prompt_sha256}
    pieces = [f["text"] for f in map(json.loads, h.registry.posts("c1") + h.registry.posts("c2")) if f["type"] == "delta"]
    forbidden: dict[str, str] = {
        "system prompt": system_prompt,
        "system prompt marker": f"SYSMARK{tag}",
        "opening message": opening,
        "opening marker": f"OPENMARK{tag}",
        "ticket secret": h.secret,
        "API key": h.api_key,
        "token key": base64.urlsafe_b64encode(tickets._keys(h.secret.encode()).token).decode(),
    }
    for name, text in texts.items():
        forbidden[f"message {name}"] = text
    for marker in ("USERMARKONE", "USERMARKTWO", "USERMARKTHREE", "LONGMARK"):
        forbidden[marker] = marker + tag
    forbidden |= provenance_shown  # logs say which reply was stored, never what produced it
    for i, piece in enumerate(p for p in pieces if len(p) >= 16):  # streamed pieces, the cut reply's included
        forbidden[f"delta {i}"] = piece
    for i, reply in enumerate(replies):
        forbidden[f"reply {i}"] = reply
        for j, sentence in enumerate(s for s in re.split(r"(?<=[.!?])\s+", reply) if len(s) >= 24):
            forbidden[f"reply {i} sentence {j}"] = sentence
    credentials = {"ticket": ticket, "tampered ticket": tampered_ticket}
    # a JWT's first segment is the same public header for every token: its claims and signature are what matter
    credentials |= {name: jwt.split(".", 1)[1] for name, jwt in
                    {"token 1": token1, "token 2": token2, "tampered token": tampered_token}.items()}
    for name, credential in credentials.items():
        for k, window in enumerate(_windows(credential, 24)):
            forbidden[f"{name} [{k}]"] = window
    for name, text in (("system prompt", system_prompt), ("opening message", opening)):
        for k, window in enumerate(_windows(text, 20)):  # any part of the treatment, not just all of it
            forbidden[f"{name} [{k}]"] = window
    for k, window in enumerate(_windows(h.secret, 16)):
        forbidden[f"secret [{k}]"] = window
    leaks = sorted(name for name, text in forbidden.items() if text and text in logged)
    assert not leaks, f"found in the logs: {leaks}"

    # -- what the browser received -----------------------------------------------------------
    frames = [json.loads(p) for cid in ("c1", "c2", "c-refused") for p in h.registry.posts(cid)]
    # every frame type the service sends (`pong` is API Gateway's own, from the template)
    assert {f["type"] for f in frames} == set(FRAME_FIELDS) - {"pong"}, {f["type"] for f in frames}
    hidden = {"system prompt": system_prompt, "treatment marker": f"SYSMARK{tag}", "bot name": bot["name"],
              "model": bot["model"], "temperature": "1.234567", "treatment words": "Treatment arm B",
              **provenance_shown}
    for frame in frames:
        assert set(frame) <= FRAME_FIELDS[frame["type"]], frame
        for message in frame.get("messages", []):
            assert set(message) <= MESSAGE_FIELDS, message
        assert not (set(_keys(frame)) & TREATMENT_KEYS), frame
        text = json.dumps(frame, ensure_ascii=False) + json.dumps(frame)
        shown = sorted(name for name, value in hidden.items() if value in text)
        assert not shown, (shown, frame)


@pytest.mark.parametrize(("status", "times", "code", "error_type"), [
    (400, 1, "llm_error", "BadRequestError/request_echoed"),
    (429, 3, "llm_rate_limited", "RateLimitError/request_echoed"),
    (503, 3, "llm_unavailable", "InternalServerError/request_echoed"),  # after the SDK's two retries
])
def test_a_provider_error_that_echoes_the_request_is_logged_by_status_type_and_length_only(
    emulated_with_key, model, logs, caplog, capfd, status, times, code, error_type
):
    h = emulated_with_key
    tag = uuid.uuid4().hex[:12]
    system_prompt = f"You are Ada. Treatment arm C. SYSMARK{tag} never say this."
    text = f"Here is my private answer, USERMARK{tag}."
    assert h.connect("c1") == {"statusCode": 200}
    chat_id = h.start("c1", system_prompt=system_prompt)["chat_id"]
    model.add_faults([{"kind": "status", "status": status, "times": times, "echo": True}])
    frames = h.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": text})
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == code

    out, err = capfd.readouterr()
    logged = _haystack(logs.getvalue(), caplog.text, out, err)
    leaks = [marker for marker in (f"SYSMARK{tag}", f"USERMARK{tag}", "Treatment arm C", "private answer")
             if marker in logged or marker in json.dumps(frames)]
    assert not leaks, f"the provider's error body reached the logs or the socket: {leaks}"
    [failed] = [r for r in map(json.loads, logs.getvalue().splitlines()) if r.get("message") == "reply failed"]
    assert (failed["code"], failed["status"], failed["error_type"]) == (code, status, error_type)
    assert failed["body_bytes"] > len(system_prompt) + len(text)  # the echo was there, and only its size was kept
