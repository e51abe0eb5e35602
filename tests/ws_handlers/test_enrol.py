"""POST /studies/{study}/entry: HTTP API (payload 2.0) events into `enrol.handler`, on moto, and the
credentials it answers opening the arm's chat over the WebSocket routes."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from harness import ORIGIN as SOCKET_ORIGIN
from studies import KEY, ORIGIN, PROMPTS, register

from local_gateway.lambda_context import LambdaContext
from ws_handlers import enrol

WEBSOCKET_URL = "wss://abc123.execute-api.us-east-1.amazonaws.com/test"
#: what must never reach a participant's browser: arm and bot names, prompts, openings
SECRETS = ("warm", "strict", "ada_", "SECRET", "Hello from", *PROMPTS.values())


@pytest.fixture
def h(make_harness):
    return make_harness(WEBSOCKET_URL=WEBSOCKET_URL)


def event(body: str | bytes | None, *, study: str = "tutor", key: str | None = KEY, origin: str | None = None,
          content_type: str | None = "application/json", base64_body: bool = False, **headers: str) -> dict[str, Any]:
    """An HTTP API payload 2.0 event, as API Gateway sends it (header names in lower case)."""
    headers = {"host": "entry.example", "user-agent": "test"} | headers
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if origin is not None:
        headers["origin"] = origin
    if content_type is not None:
        headers["content-type"] = content_type
    if base64_body:
        body = base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode()
    path = f"/studies/{study}/entry"
    return {
        "version": "2.0", "routeKey": "POST /studies/{study}/entry", "rawPath": path, "rawQueryString": "",
        "headers": headers, "pathParameters": {"study": study}, "body": body, "isBase64Encoded": base64_body,
        "requestContext": {
            "accountId": "123456789012", "apiId": "entry", "domainName": "entry.example", "stage": "$default",
            "requestId": uuid.uuid4().hex, "routeKey": "POST /studies/{study}/entry", "timeEpoch": 0,
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "test"},
        },
    }


def enter(event_: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    answer = enrol.handler(event_, LambdaContext("enrol"))
    return answer["statusCode"], answer["headers"], json.loads(answer["body"])


def _json(participant: str = "P1", **ids: Any) -> str:
    return json.dumps({"participant": participant, **ids})


def link(participant: str, origin: str | None = ORIGIN, study: str = "tutor") -> tuple[int, dict[str, str], dict[str, Any]]:
    """A link entry as the survey page's form post makes it: no key, the id from the page's URL."""
    return enter(event(urlencode({"participant": participant}), study=study, key=None, origin=origin,
                       content_type="application/x-www-form-urlencoded"))


def test_a_server_entry_answers_the_three_strings_and_they_open_the_arms_chat(h):
    register(h.store)
    status, headers, body = enter(event(_json(ResponseID="R_abc", PROLIFIC_PID="5f0c")))
    assert status == 200 and set(body) == {"url", "token", "ticket", "min_messages"}
    assert body["url"] == WEBSOCKET_URL and body["min_messages"] == 2
    assert headers["cache-control"] == "no-store" and "access-control-allow-origin" not in headers
    assignment = h.store.get_assignment("tutor", "P1")
    assert dict(assignment.platform_ids) == {"ResponseID": "R_abc", "PROLIFIC_PID": "5f0c"}
    # the page's socket: the token admits, the ticket opens the chat with the arm's bot
    assert h.connect("c1", token=body["token"], origin=SOCKET_ORIGIN)["statusCode"] == 200
    frames = h.send("c1", {"action": "start", "ticket": body["ticket"]})
    assert frames[-1]["type"] == "chat"
    assert [m["text"] for m in frames[-1]["messages"]] == [f"Hello from {assignment.arm}-bot."]
    # a refresh enters again: same arm, same chat
    again = enter(event(_json()))[2]
    h.connect("c2", token=again["token"], origin=SOCKET_ORIGIN)
    assert h.send("c2", {"action": "start", "ticket": again["ticket"]})[-1]["chat_id"] == frames[-1]["chat_id"]


def test_nothing_the_browser_sees_names_the_arm_the_bot_or_the_prompt(h):
    register(h.store, entry="link")
    for i in range(4):  # both arms
        status, headers, body = link(f"P{i}")
        assert status == 200
        token_claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
        seen = json.dumps([headers, body, token_claims, base64.urlsafe_b64decode(body["ticket"] + "==").hex()])
        assert not [s for s in SECRETS if s in seen], seen
        assert token_claims["xp"] == "tutor" and token_claims["ses"] == enrol.SESSION
    assert {a.arm for a in h.store.assignments("tutor")} == {"warm", "strict"}


def test_a_link_entry_is_readable_only_by_the_studys_origins(h):
    register(h.store, entry="link")
    form = "application/x-www-form-urlencoded"
    status, headers, _ = enter(event("participant=P1&PROLIFIC_PID=5f0c", key=None, origin=ORIGIN, content_type=form))
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN and headers["vary"] == "Origin"
    assert h.store.get_assignment("tutor", "P1").platform_ids == {"PROLIFIC_PID": "5f0c"}
    status, headers, body = enter(event("participant=P2", key=None, origin="https://evil.example", content_type=form))
    assert (status, body) == (403, {"error": "origin_not_allowed"}) and "access-control-allow-origin" not in headers
    assert h.store.get_assignment("tutor", "P2") is None


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"body": "{not json"}, 400, "body_invalid"),
    ({"body": "[1, 2]"}, 400, "body_invalid"),
    ({"body": "[" * 2000 + "]" * 2000}, 400, "body_invalid"),
    ({"body": "%ZZ", "base64_body": False, "content_type": None}, 400, "participant_invalid"),
    ({"body": "not base64!", "base64_body": False, "isBase64Encoded": True}, 400, "body_invalid"),
    ({"body": json.dumps({"participant": 5})}, 400, "participant_invalid"),
    ({"body": json.dumps({"participant": "P 1"})}, 400, "participant_invalid"),
    ({"body": json.dumps({"participant": "a@b.org"}), "pattern": ".+"}, 400, "participant_invalid"),
    ({"body": json.dumps({"participant": "P1", "ResponseID": {"x": 1}})}, 400, "platform_ids_invalid"),
    ({"body": "&".join(f"id{i}=x" for i in range(20)) + "&participant=P1", "content_type": None},
     400, "platform_ids_invalid"),
    ({"body": json.dumps({"participant": "P1", "pad": "x" * 5000})}, 413, "body_too_large"),
    ({"body": _json(), "key": None}, 401, "study_key_invalid"),
    ({"body": _json(), "key": "wrong"}, 401, "study_key_invalid"),
    ({"body": _json(), "study": "nope"}, 404, "study_unknown"),
])
def test_bad_requests_get_a_code_and_assign_nothing(h, kwargs, status, code):
    register(h.store, **({"participant_pattern": kwargs.pop("pattern")} if "pattern" in kwargs else {}))
    flag = kwargs.pop("isBase64Encoded", None)
    event_ = event(kwargs.pop("body"), **kwargs)
    if flag is not None:
        event_["isBase64Encoded"] = flag
    got_status, headers, body = enter(event_)
    assert (got_status, body) == (status, {"error": code})
    assert h.store.get_study("tutor").entries == 0


def test_a_base64_body_and_a_form_without_content_type_are_read(h):
    register(h.store)
    assert enter(event(_json("P1"), base64_body=True))[0] == 200
    assert enter(event("participant=P2", content_type=None))[0] == 200
    assert enter(event("participant=P3&x=1", content_type="application/x-www-form-urlencoded; charset=UTF-8"))[0] == 200
    assert sorted(a.participant for a in h.store.assignments("tutor")) == ["P1", "P2", "P3"]


def test_paused_allowlisted_and_full_studies_refuse(h):
    register(h.store, max_entries=1)
    h.store.set_controls("tutor", paused=True)
    assert enter(event(_json()))[2] == {"error": "paused"}
    h.store.set_controls("tutor", paused=False)
    h.store.add_to_allowlist("tutor", ["P1", "P2"])
    assert enter(event(_json("P9")))[:3:2] == (403, {"error": "participant_not_allowed"})
    assert enter(event(_json("P1")))[0] == 200
    assert enter(event(_json("P2")))[:3:2] == (403, {"error": "study_full"})
    assert enter(event(_json("P1")))[0] == 200  # who entered may come back


def test_the_service_switch_pauses_every_study(h):
    register(h.store)
    h.store.set_controls(None, paused=True)
    assert enter(event(_json()))[:3:2] == (403, {"error": "paused"})


def test_without_websocket_url_nothing_is_assigned(make_harness):
    h = make_harness()
    register(h.store)
    with pytest.raises(Exception, match="WEBSOCKET_URL"):
        enrol.handler(event(_json()), LambdaContext("enrol"))
    assert h.store.get_study("tutor").entries == 0


def test_the_studys_own_pages_can_read_why_they_were_refused_others_cannot(h):
    """A refusal decided against the study carries Access-Control-Allow-Origin for the study's
    origins, so its survey page can show why (survey.js); never for another origin."""
    register(h.store, entry="link", max_entries=1)
    assert link("P1")[0] == 200
    status, headers, body = link("P2")
    assert (status, body) == (403, {"error": "study_full"})
    assert headers["access-control-allow-origin"] == ORIGIN and headers["vary"] == "Origin"
    status, headers, body = link("P 3")
    assert (status, body) == (400, {"error": "participant_invalid"}) and headers["access-control-allow-origin"] == ORIGIN
    for origin in ("https://evil.example", None):
        status, headers, body = link("P2", origin)
        assert (status, body) == (403, {"error": "origin_not_allowed"}) and "access-control-allow-origin" not in headers
    status, headers, body = link("P2", study="nope")
    assert (status, body) == (404, {"error": "study_unknown"}) and "access-control-allow-origin" not in headers


def _open_chat(h, participant: str, study: str = "tutor") -> tuple[str, str]:
    """Enter by link as `participant` and open the arm's chat on a socket of its own: (socket, chat id)."""
    status, _, body = link(participant, study=study)
    assert status == 200, body
    cid = f"{study}-{participant}"
    assert h.connect(cid, token=body["token"], origin=SOCKET_ORIGIN)["statusCode"] == 200
    frames = h.send(cid, {"action": "start", "ticket": body["ticket"]})
    assert frames[-1]["type"] == "chat", frames
    return cid, frames[-1]["chat_id"]


def _say(h, cid: str, chat_id: str, n: int) -> list[dict[str, Any]]:
    return h.send(cid, {"action": "send", "chat_id": chat_id, "client_msg_id": f"m{n}", "text": f"question {n}"})


def _spent(h, chats: list[tuple[str, str]]) -> int:
    """Tokens the study's stored replies used: what its budget must have counted."""
    return sum(m.prompt_tokens + m.completion_tokens for _, chat in chats for m in h.store.messages(chat))


def test_made_up_ids_are_bounded_by_the_budget(h, model):
    """A study is an experiment named by its id, so its token budget (`chat-ops budget tutor`)
    stops spending however many made-up ids enter below `max_entries`; another study's budget
    is its own, so it chats on."""
    register(h.store, entry="link", max_entries=50)
    register(h.store, "other", entry="link", max_entries=50)
    h.store.set_controls("tutor", token_budget=600)
    h.store.set_controls("other", token_budget=600)
    chats = [_open_chat(h, f"madeup{i}") for i in range(4)]
    refused, n = None, 0
    while refused is None:  # round after round, each made-up id sends once, until the budget refuses
        assert n < 30, "the budget never stopped the spending"
        for cid, chat in chats:
            frames = _say(h, cid, chat, n)
            if frames[-1]["type"] == "error":
                refused = frames
                break
            assert [f["type"] for f in frames][:2] == ["ack", "queued"] and frames[-1]["type"] == "message", frames
        n += 1
    assert [f["type"] for f in refused] == ["error"] and refused[0]["code"] == "budget_exhausted", refused
    used = h.store.get_controls("tutor").experiment.tokens_used
    assert used >= 600 and used == _spent(h, chats)
    for _, chat in chats:  # the opening, then each accepted message with its one reply; the refused one not stored
        roles = [m.role for m in h.store.messages(chat)]
        assert roles == ["assistant"] + ["user", "assistant"] * (len(roles) // 2) and len(roles) >= 3, roles
    stored = {chat: h.store.messages(chat) for _, chat in chats}
    requests = model.stats["requests"]

    # spent: every further send in the study is refused, from the ids that chatted and from a new one
    chats.append(_open_chat(h, "madeup9"))
    stored[chats[-1][1]] = h.store.messages(chats[-1][1])
    for cid, chat in chats:
        frames = _say(h, cid, chat, 99)
        assert [f["type"] for f in frames] == ["error"], frames
        assert frames[0]["code"] == "budget_exhausted" and frames[0]["retryable"] is False
    assert model.stats["requests"] == requests  # no reply generated
    assert {chat: h.store.messages(chat) for _, chat in chats} == stored  # none stored, none lost
    assert h.store.get_controls("tutor").experiment.tokens_used == used

    # the other study's budget is untouched: its participants chat on
    other = _open_chat(h, "P1", study="other")
    assert _say(h, *other, 0)[-1]["type"] == "message"
    assert h.store.get_controls("other").experiment.tokens_used == _spent(h, [other]) > 0
