"""Every client frame, fuzzed: the parser only ever refuses by a documented code, and the
message handler never raises, answers once, leaks no internals and writes nothing unless
the frame was a valid `start`, `send` or `history` (and then only what they document).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _hypothesis_event
from hypothesis import strategies as st

from ws_handlers import protocol
from ws_handlers.errors import CODES, ChatError
from ws_handlers.identity import Identity
from ws_handlers.protocol import History, Send, Start
from ws_handlers.store import chat_id_for

from harness import EXPERIMENT, SESSION

ACTIONS = ("start", "send", "history", "ping")  #: ping: answered by API Gateway, never by the function
FIELDS = ("ticket", "chat_id", "client_msg_id", "text", "after_seq")
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
#: What an error message must never show: a stack trace, a file, an exception's class.
_LEAK = re.compile(r"Traceback|File \"|\b[A-Z]\w*(Error|Exception)\b|ws_handlers|botocore|boto3|0x[0-9a-f]{6,}")


def event(label: str) -> None:
    """Hypothesis statistics (`--hypothesis-show-statistics`); a no-op outside a @given test."""
    try:
        _hypothesis_event(label)
    except Exception:  # InvalidArgument: not inside a Hypothesis test
        pass


# -- placeholders: values known only at run time (the real chat id, a valid ticket) ------------
class _Ref:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


CHAT_ID = _Ref("chat_id")  #: the participant's started chat
TICKET = _Ref("ticket")  #: the ticket that started it
OTHER_TICKET = _Ref("new_chat_ticket")  #: a valid ticket for a second chat of the same participant
FOREIGN_TICKET = _Ref("foreign_ticket")  #: a valid ticket of another participant


def _render(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, _Ref):
        return refs[value.name]
    if isinstance(value, list):
        return [_render(v, refs) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, refs) for k, v in value.items()}
    return value


# -- strategies --------------------------------------------------------------------------------
ODD = [
    "\ud800", "\udfff", "\udc80", "\ud83d",  # lone surrogates (what "\ud800" escapes decode to)
    "\u202e", "\u200f", "\u200e", "\u2066",  # bidi overrides and marks
    "\x00", "\x1f", "\x7f", "\ufeff", "\ufffe", "\uffff", "\U0010ffff",
    "\U0001f600", "\U0001f469\u200d\U0001f4bb", "\U0001f1eb\U0001f1f7",  # emoji, ZWJ, flags
    "e\u0301", "\u0301\u0302\u0303\u0304", "Z\u0336\u0337\u0338",  # combining marks
    "\u2028", "\u2029", "\r\n", "\t", " ", "\u00a0", "\u3000",
    "İ", "ı", "ß", "ﬃ", "Ω", "\u0130",  # case-mapping oddities
    '"', "\\", "\\u0000", "\\ud800", "</script>", "${x}", "%s", "{0}",
]
odd_text = st.lists(
    st.one_of(st.sampled_from(ODD), st.characters(), st.characters(categories=["Cs"])), max_size=24
).map("".join)
any_text = st.one_of(st.text(max_size=40), odd_text)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and ±inf become NaN/Infinity, which Python's json accepts
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.one_of(st.sampled_from(FIELDS + ("action",)), any_text), inner, max_size=4),
    max_leaves=16,
)
good_ids = st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)
bad_ids = st.one_of(
    st.just(""), st.just("x" * 65), st.sampled_from(["../../etc", "a b", "a/b", "c_1\n", "ｃ_1", "c_1\x00", "*"]), any_text
)
huge = st.sampled_from([999, 1000, 1001, 3999, 4000, 4001, 30_000, 65_000, 65_536, 70_000]).flatmap(
    lambda n: st.sampled_from(["x", "é", "\U0001f600", " "]).map(lambda c: c * n)
)
deep = st.integers(min_value=1, max_value=40_000).flatmap(
    lambda d: st.sampled_from(["[" * d + "]" * d, '{"a":' * d + "1" + "}" * d, "[" * d, '{"a":[' * d])
)


def _action_names() -> st.SearchStrategy[Any]:
    variants = st.sampled_from(ACTIONS).flatmap(
        lambda a: st.sampled_from(
            [a, a.upper(), a.title(), " " + a, a + " ", a + "\n", "\t" + a, a + "\x00", "\u200b" + a,
             a.replace("i", "ı").replace("s", "ſ"), a + "s", "$" + a, a[:-1]]
        )
    )
    return st.one_of(variants, st.sampled_from(ACTIONS), st.sampled_from(["$default", "$connect", "sendmessage", ""]),
                     json_values)


field_values = st.one_of(
    json_values,
    good_ids,
    bad_ids,
    huge,
    st.sampled_from([CHAT_ID, TICKET, OTHER_TICKET, FOREIGN_TICKET]),
    st.integers(min_value=-2, max_value=10**10 + 1),
    st.sampled_from([True, False, 1.0, 0.5, -0.0, float("inf"), 10**10, 10**10 - 1, [0], {"$gt": 0}]),
)
frames = st.fixed_dictionaries(
    {"action": _action_names()},
    optional={name: field_values for name in FIELDS} | {"extra": json_values, "__proto__": json_values},
)
#: Frames that are mostly right: the right action and fields, one of them possibly wrong.
@st.composite
def _near_valid_send(draw: st.DrawFn) -> dict[str, Any]:
    """A valid send, then at most one field dropped or replaced by anything."""
    frame: dict[str, Any] = {
        "action": "send",
        "chat_id": CHAT_ID,
        "client_msg_id": draw(good_ids),
        "text": draw(st.one_of(st.text(min_size=1, max_size=60), odd_text, huge)),
    }
    wrong = draw(st.sampled_from([None, None, "chat_id", "client_msg_id", "text", "drop"]))
    if wrong == "drop":
        del frame[draw(st.sampled_from(["chat_id", "client_msg_id", "text"]))]
    elif wrong is not None:
        frame[wrong] = draw(field_values)
    return frame


near_valid = st.one_of(
    _near_valid_send(),  # twice: sends are the frames with the most to get wrong
    st.fixed_dictionaries({"action": st.just("ping")}, optional={"extra": json_values}),
    st.fixed_dictionaries(
        {"action": st.just("start"),
         "ticket": st.one_of(st.sampled_from([TICKET, OTHER_TICKET, FOREIGN_TICKET]), field_values)}
    ),
    st.fixed_dictionaries(
        {"action": st.just("history"), "chat_id": st.one_of(st.just(CHAT_ID), field_values)},
        optional={"after_seq": st.one_of(st.integers(min_value=0, max_value=40), field_values)},
    ),
    _near_valid_send(),
)


def json_bodies(source: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple]:
    """A JSON text of a drawn value, with or without \\u escapes; placeholders rendered later."""
    return st.tuples(st.just("json"), source, st.booleans())


def _raw(prefix: str) -> st.SearchStrategy[Any]:
    return st.tuples(st.just(prefix), st.one_of(st.text(max_size=200), odd_text, st.binary(max_size=200)))


ODD_BODIES = [
    None, "", " ", "null", "[]", "{}", '"ping"', "1e999", "NaN", "\ufeff{}",
    '{"action":"ping"', '{"action":"ping"}{"action":"ping"}',  # cut short; two frames in one
    '{"action":"ping","action":"send"}', '{"action":"send","action":"ping"}',  # duplicate keys
    b'\xef\xbb\xbf{"action":"ping"}', '{"action":"ping"}'.encode("utf-16"),  # BOM, UTF-16
    b"\xff\xfe\xfd", b"\xc0\xaf", b"\xed\xa0\x80", b'{"action":"ping"}\x80',  # invalid and overlong UTF-8
]
bodies = st.one_of(
    json_bodies(near_valid),
    json_bodies(frames),
    json_bodies(json_values),
    _raw("raw"),
    st.tuples(st.just("raw"), deep),
    st.tuples(st.just("nested_in_frame"), deep),
    st.tuples(st.just("big_int"), st.integers(min_value=1, max_value=6000)),
    st.tuples(st.just("truncated"), near_valid, st.integers(min_value=0, max_value=200)),
    st.tuples(st.just("raw"), st.sampled_from(ODD_BODIES)),
)


def materialise(spec: tuple, refs: dict[str, str], as_str: bool) -> str | bytes | None:
    """The frame body a drawn spec stands for (a str as API Gateway hands it, or bytes)."""
    kind = spec[0]
    if kind == "json":
        body: Any = json.dumps(_render(spec[1], refs), ensure_ascii=spec[2])
    elif kind == "raw":
        body = spec[1]
    elif kind == "nested_in_frame":
        body = '{"action":"send","chat_id":"%s","client_msg_id":"m1","text":"hi","x":%s}' % (refs["chat_id"], spec[1])
    elif kind == "big_int":
        body = '{"action":"history","chat_id":"%s","after_seq":%s}' % (refs["chat_id"], "9" * spec[1])
    elif kind == "truncated":
        full = json.dumps(_render(spec[1], refs))
        body = full[: spec[2] % (len(full) + 1)]
    else:  # pragma: no cover
        raise AssertionError(kind)
    if as_str and isinstance(body, bytes):
        return body.decode("utf-8", "surrogateescape")  # invalid bytes as they reach a str body
    return body


def _describe(spec: tuple) -> str:
    return spec[0] if spec[0] != "json" else "json:" + type(spec[1]).__name__


def _check_error_frame(frame: dict[str, Any]) -> None:
    assert frame["type"] == "error", frame
    assert frame["code"] in CODES, frame
    assert frame["retryable"] is CODES[frame["code"]].retryable, frame
    assert isinstance(frame["message"], str) and not _LEAK.search(frame["message"]), frame
    assert set(frame) <= {"type", "code", "message", "retryable", "chat_id", "client_msg_id", "seq", "field"}, frame


# -- (a) the parser -------------------------------------------------------------------------
PARSE_REFS = {
    "chat_id": "c_" + "0" * 32,
    "ticket": "gAAAAAB" + "A" * 180,
    "new_chat_ticket": "gAAAAAB" + "B" * 180,
    "foreign_ticket": "gAAAAAB" + "C" * 180,
}


@settings(max_examples=200, deadline=None, database=None)
@given(spec=bodies, as_str=st.booleans())
def test_parse_refuses_only_with_documented_codes(spec, as_str):
    body = materialise(spec, PARSE_REFS, as_str)
    event(_describe(spec))
    try:
        action = protocol.parse(body)
    except ChatError as exc:
        assert exc.code in CODES
        assert exc.retryable is CODES[exc.code].retryable
        assert not _LEAK.search(exc.message)
        event(f"refused: {exc.code}")
        return
    # Accepted: the action is exactly what the protocol allows.
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    assert raw is not None and len(raw) <= protocol.MAX_FRAME_BYTES
    frame = json.loads(raw)
    assert isinstance(frame, dict)
    event(f"accepted: {type(action).__name__}")
    if isinstance(action, Start):
        assert frame["action"] == "start" and type(frame["ticket"]) is str and action.ticket == frame["ticket"]
    elif isinstance(action, History):
        assert frame["action"] == "history" and _ID.fullmatch(action.chat_id)
        assert type(action.after_seq) is int and 0 <= action.after_seq < 10**10
    else:
        assert isinstance(action, Send) and frame["action"] == "send"
        assert _ID.fullmatch(action.chat_id) and _ID.fullmatch(action.client_msg_id)
        assert type(action.text) is str
        action.text.encode("utf-8")  # no lone surrogate gets past the parser


@settings(max_examples=200, deadline=None, database=None)
@given(frame=frames, ensure_ascii=st.booleans())
def test_parse_agrees_with_the_protocol_table(frame, ensure_ascii):
    """For JSON objects, the outcome follows docs/protocol.md's table exactly."""
    frame = _render(frame, PARSE_REFS)
    body = json.dumps(frame, ensure_ascii=ensure_ascii)
    too_big = len(body.encode("utf-8", "surrogatepass")) > protocol.MAX_FRAME_BYTES
    try:
        action: Any = protocol.parse(body)
        code = None
    except ChatError as exc:
        action, code = None, exc.code
    if too_big:
        assert code == "frame_too_large"
        return
    name = frame["action"]
    if name not in ACTIONS or type(name) is not str:
        assert code == "unknown_action", (frame, code)
    elif name == "ping":  # reaching the function, it was read as another route by API Gateway
        assert code == "bad_frame", (frame, code)
    elif code is not None:
        assert code == "invalid_field", (frame, code)
    else:
        assert type(action).__name__.lower() == name


# -- (b) through the message handler --------------------------------------------------------
_RATE = ("rate_count", "rate_window")


def _snapshot(harness) -> dict[tuple[str, str, str], str]:
    """Every item of both tables (tests may scan), by key; the connections' per-frame rate
    counter (one documented write per frame, malformed ones and pings included) is keyed apart."""
    out = {}
    for item in harness.table_items("chats"):
        out[("chats", item["pk"]["S"], item["sk"]["S"])] = json.dumps(item, sort_keys=True)
    for item in harness.table_items("conns"):
        cid = item["connection_id"]["S"]
        out[("conns", cid, "")] = json.dumps({k: v for k, v in item.items() if k not in _RATE}, sort_keys=True)
        out[("conns", cid, "rate")] = json.dumps({k: v for k, v in item.items() if k in _RATE}, sort_keys=True)
    return out


def _changes(before: dict, after: dict, *, counted: bool = False) -> set[tuple[str, str, str]]:
    """Keys that changed; with `counted`, the frame's own rate counter on c1 is not a change."""
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return changed - {("conns", "c1", "rate")} if counted else changed


@pytest.fixture
def fuzz_harness(make_harness):
    """One participant, connected as c1 with a started chat; the rate limit out of the way."""
    harness = make_harness(RATE_LIMIT_FRAMES="1000000")
    harness.connect("c1")
    chat = harness.start("c1")
    harness.refs = {
        "chat_id": chat["chat_id"],
        "ticket": harness.ticket(),
        # a second chat of the same participant: a valid start opens it (documented writes)
        "new_chat_ticket": harness.ticket(chat_key="second", opening_message="Welcome back."),
        # a valid ticket, but for another participant: ticket_mismatch
        "foreign_ticket": harness.ticket(participant="P2"),
    }
    return harness


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    # One connected participant with a started chat serves every example: each example
    # compares the tables and the socket against what they were just before it.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=bodies)
def test_handler_answers_once_and_writes_nothing_for_fuzzed_frames(fuzz_harness, spec):
    _fuzz_through_handler(fuzz_harness, spec)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the same deployment for every example
)
@given(frame=near_valid, ensure_ascii=st.booleans())
def test_handler_on_nearly_valid_frames_writes_only_what_the_protocol_documents(fuzz_harness, frame, ensure_ascii):
    _fuzz_through_handler(fuzz_harness, ("json", frame, ensure_ascii))


def _fuzz_through_handler(harness, spec: tuple) -> None:
    refs = harness.refs
    body = materialise(spec, refs, as_str=True)
    before, seen = _snapshot(harness), len(harness.frames("c1"))
    try:
        expected: Any = protocol.parse(body)
    except ChatError as exc:
        expected = exc
    event(f"{_describe(spec)} -> {type(expected).__name__}")

    response = harness.send_raw("c1", body)  # the handler must not raise
    assert response == {"statusCode": 200}
    new = harness.frames("c1")[seen:]
    assert new, "every frame is answered"

    if isinstance(expected, ChatError):
        assert len(new) == 1, new
        _check_error_frame(new[0])
        assert new[0]["code"] == expected.code
        assert not _changes(before, _snapshot(harness), counted=True), "a refused frame wrote something"
        return
    if isinstance(expected, Send) and new[0]["type"] == "ack":
        assert harness.queue.wait_idle(60), "a reply did not finish"
        new = harness.frames("c1")[seen:]
        _check_send_answer(new, expected)
        allowed_pks = {f"CHAT#{expected.chat_id}", f"EXP#{EXPERIMENT}", "SERVICE"}
        allowed_sks = {"META", f"CMID#{expected.client_msg_id}", "CONTROL", "LLM"}
        for table, pk, sk in _changes(before, _snapshot(harness), counted=True):
            assert table == "chats" and pk in allowed_pks, (table, pk, sk)
            assert sk in allowed_sks or sk.startswith("MSG#"), (table, pk, sk)
        event("send accepted")
        return

    # start, history, or a send refused after parsing: exactly one answer.
    assert len(new) == 1, new
    answer = new[0]
    after = _snapshot(harness)
    changed = _changes(before, after, counted=True)
    if answer["type"] == "error":
        _check_error_frame(answer)
        assert answer["code"] in REFUSALS[type(expected)], (expected, answer)
        assert not changed, "a refused frame wrote something besides its rate counter"
        event(f"refused after parsing: {answer['code']}")
        return
    if isinstance(expected, History):
        assert answer["type"] == "history" and answer["chat_id"] == expected.chat_id
        assert all(m["seq"] > expected.after_seq for m in answer["messages"])
        assert not changed  # re-binding the same socket changes nothing
        return
    assert isinstance(expected, Start) and answer["type"] == "chat", (expected, answer)
    assert expected.ticket in (refs["ticket"], refs["new_chat_ticket"])
    chat_id = answer["chat_id"]
    if chat_id == refs["chat_id"]:
        assert not changed  # the same chat on the same socket: nothing to write
        return
    # a new chat: its metadata, its opening message, the participant's chat counter
    assert chat_id == chat_id_for(Identity("P1", EXPERIMENT, SESSION), "second")
    for table, pk, sk in changed:
        assert table == "chats", (table, pk, sk)
        assert (pk == f"CHAT#{chat_id}" and (sk == "META" or sk.startswith("MSG#"))) or (
            pk == f"PART#{EXPERIMENT}#{SESSION}#P1" and sk == "META"
        ), (pk, sk)
    event("start opened a new chat")


#: The refusals each action may get once it parsed (no fault is injected in these tests,
#: so `internal` and `throttled` are never right).
REFUSALS: dict[type, set[str]] = {
    Start: {"invalid_ticket", "ticket_expired", "ticket_mismatch", "chat_limit"},
    History: {"chat_not_found"},
    Send: {"chat_not_found", "empty_message", "message_too_long", "message_limit", "chat_token_limit",
           "budget_exhausted", "reply_in_progress"},
}


def _check_send_answer(frames_: list[dict[str, Any]], send: Send) -> None:
    """ack, then either the stored reply (a duplicate) or `queued`, deltas and a message or an error."""
    ack, rest = frames_[0], frames_[1:]
    assert ack["type"] == "ack" and ack["client_msg_id"] == send.client_msg_id and ack["chat_id"] == send.chat_id
    if rest and rest[0]["type"] == "queued":
        assert rest[0] == {"type": "queued", "chat_id": send.chat_id, "seq": ack["seq"] + 1,
                           "client_msg_id": send.client_msg_id}
        rest = rest[1:]
    assert rest, "an accepted send gets its reply"
    *deltas, final = rest
    assert all(d["type"] == "delta" and d["seq"] == ack["seq"] + 1 for d in deltas), rest
    if final["type"] == "error":
        _check_error_frame(final)
        assert final["code"] != "internal", final
    else:
        assert final["type"] == "message" and final["seq"] == ack["seq"] + 1 and final["role"] == "assistant"


def test_the_fuzzers_reach_every_outcome(fuzz_harness):
    """A guard on the checks themselves: each documented outcome is reached (no randomness)."""
    harness = fuzz_harness
    samples = [
        (("json", {"action": "ping"}, True), "error"),
        (("json", {"action": "start", "ticket": TICKET}, True), "chat"),
        (("json", {"action": "history", "chat_id": CHAT_ID}, False), "history"),
        (("json", {"action": "send", "chat_id": CHAT_ID, "client_msg_id": "fz-1", "text": "e\u0301\u202e🙂"}, False), "ack"),
        (("json", {"action": "send", "chat_id": CHAT_ID, "client_msg_id": "fz-1", "text": "again"}, True), "ack"),
        (("json", {"action": "start", "ticket": FOREIGN_TICKET}, True), "error"),
        (("json", {"action": "start", "ticket": "\ud800"}, True), "error"),
        (("json", {"action": "send", "chat_id": CHAT_ID, "client_msg_id": "m", "text": "\ud800"}, True), "error"),
        (("raw", "[" * 30_000), "error"),
        (("raw", b"\xff\xfe"), "error"),
        (("nested_in_frame", "[" * 20_000 + "]" * 20_000), "error"),
        (("big_int", 5000), "error"),
        (("json", {"action": "start", "ticket": OTHER_TICKET}, True), "chat"),
    ]
    for spec, first in samples:
        seen = len(harness.frames("c1"))
        _fuzz_through_handler(harness, spec)
        got = harness.frames("c1")[seen]
        assert got["type"] == first, (spec, got)
