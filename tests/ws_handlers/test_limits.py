"""Limits live on the server: each refusal has its code and costs no model call."""

from __future__ import annotations

import pytest

from ws_handlers.adapters.sqlite import SqliteStore
from ws_handlers.bot import Limits
from ws_handlers.chat import ChatService
from ws_handlers.config import Settings
from ws_handlers.errors import ChatError
from ws_handlers.identity import Identity, Ticket
from ws_handlers.protocol import is_blank
from ws_handlers.runtime import NoJobQueue
from ws_handlers.store import Connection


def _send(harness, chat_id, client_msg_id, text="hello there"):
    return harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": client_msg_id, "text": text})


def _refused(frames, code):
    assert [f["type"] for f in frames] == ["error"], frames
    assert frames[0]["code"] == code
    return frames[0]


@pytest.fixture
def chat(harness):
    harness.connect("c1")
    return harness.start("c1", limits=Limits(max_chars=50, max_user_messages=2, max_tokens_per_chat=100_000))["chat_id"]


def test_message_too_long(harness, chat, model):
    error = _refused(_send(harness, chat, "m1", "x" * 51), "message_too_long")
    assert error["client_msg_id"] == "m1" and "50" in error["message"]
    assert harness.store.messages(chat) == [] and model.stats["requests"] == 0
    assert _send(harness, chat, "m2", "x" * 50)[0]["type"] == "ack"


def test_the_server_cap_wins_over_a_generous_ticket(make_harness):
    harness = make_harness(MAX_MESSAGE_CHARS="20")
    harness.connect("c1")
    chat = harness.start("c1", limits=Limits(max_chars=5000))
    assert chat["limits"]["max_chars"] == 20
    _refused(_send(harness, chat["chat_id"], "m1", "y" * 21), "message_too_long")


BLANK = {
    "nothing": "",
    "spaces": "   ",
    "newlines and tabs": "\n\t \r\n",
    "no-break and ideographic spaces": "\u00a0\u3000\u2007\u202f",
    "line and paragraph separators": "\u2028\u2029",
    "zero-width space": "\u200b",
    "word joiner": "\u2060",
    "soft hyphen": "\u00ad",
    "byte order mark": "\ufeff",
    "zero-width joiners alone": "\u200d\u200c\u200d",
    "bidi marks and overrides": "\u200e\u200f\u202e\u2066\u2069",
    "Mongolian vowel separator": "\u180e",
    "tag characters": "\U000e0041\U000e007f",
    "variation selectors alone": "\ufe0f\ufe0e",
    "combining marks alone": "\u0301\u0302\u034f",
    "enclosing keycap alone": "\u20e3",
    "Hangul fillers": "\u3164\u115f\uffa0",
    "blank Braille pattern": "\u2800",
    "C0 and C1 controls": "\x00\x07\x1b\x85\x9f",
    "a mix": " \u200b\u00ad\ufeff\u2060\u3164 \n",
}
VISIBLE = {
    "a letter": "a",
    "text around invisibles": "\u200bhi\u200b",
    "emoji ZWJ sequence": "\U0001f469\u200d\U0001f4bb",
    "family emoji": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "emoji with variation selector": "\u2764\ufe0f",
    "keycap": "1\ufe0f\u20e3",
    "flag": "\U0001f1eb\U0001f1f7",
    "accented letter": "e\u0301",
    "Persian with a zero-width non-joiner": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
    "Devanagari with a joiner": "\u0915\u094d\u200d\u0937",
    "a dot": ".",
    "a digit": "0",
    "private use": "\ue000",
    "newer than this Python's Unicode": "\U0001fae8",
}


@pytest.mark.parametrize("text", BLANK.values(), ids=BLANK.keys())
def test_blank_text_is_an_empty_message_and_is_never_counted(harness, chat, text, model):
    _refused(_send(harness, chat, "m1", text), "empty_message")
    assert harness.store.messages(chat) == [] and model.stats["requests"] == 0
    assert harness.start("c1")["limits"]["user_messages"] == 0  # nothing counts toward the minimum


@pytest.mark.parametrize("text", VISIBLE.values(), ids=VISIBLE.keys())
def test_text_with_something_visible_is_accepted(text):
    assert not is_blank(text)


@pytest.mark.parametrize("text", BLANK.values(), ids=BLANK.keys())
def test_the_one_rule_for_blank_text(text):
    assert is_blank(text)


def test_visible_text_is_stored_as_sent(harness, chat):
    text = VISIBLE["emoji ZWJ sequence"]
    assert _send(harness, chat, "m1", text)[0]["type"] == "ack"
    assert harness.store.get_message(chat, 1).text == text


def test_user_messages_per_chat(harness, chat, model):
    assert _send(harness, chat, "m1")[-1]["type"] == "message"
    assert _send(harness, chat, "m2")[-1]["type"] == "message"
    requests = model.stats["requests"]
    _refused(_send(harness, chat, "m3"), "message_limit")
    assert len(harness.store.messages(chat)) == 4 and model.stats["requests"] == requests


def test_chats_per_participant(make_harness):
    harness = make_harness(MAX_CHATS_PER_PARTICIPANT="2")
    harness.connect("c1")
    harness.start("c1", chat_key="a")
    harness.start("c1", chat_key="b")
    harness.start("c1", chat_key="a")  # resuming is not a new chat
    frames = harness.send("c1", {"action": "start", "ticket": harness.ticket(chat_key="c")})
    _refused(frames, "chat_limit")
    harness.connect("c2", participant="P2")  # another participant has their own allowance
    assert harness.start("c2", participant="P2", chat_key="c")["chat_id"]


def test_tokens_per_chat(harness, model):
    harness.connect("c1")
    chat = harness.start("c1", limits=Limits(max_tokens_per_chat=10))["chat_id"]
    assert _send(harness, chat, "m1")[-1]["type"] == "message"  # the first reply passes the limit
    requests = model.stats["requests"]
    _refused(_send(harness, chat, "m2"), "chat_token_limit")
    assert model.stats["requests"] == requests


def test_experiment_token_budget_from_the_environment(make_harness, model):
    harness = make_harness(TOKEN_BUDGET="1")
    harness.connect("c1")
    harness.connect("c2", participant="P2")
    chat1 = harness.start("c1")["chat_id"]
    chat2 = harness.start("c2", participant="P2")["chat_id"]
    assert _send(harness, chat1, "m1")[-1]["type"] == "message"
    requests = model.stats["requests"]
    frames = harness.send("c2", {"action": "send", "chat_id": chat2, "client_msg_id": "m1", "text": "hi"})
    _refused(frames, "budget_exhausted")
    assert model.stats["requests"] == requests and harness.store.messages(chat2) == []


def test_experiment_token_budget_in_the_table_overrides_the_environment(harness):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    harness.ddb.put_item(
        TableName="chats",
        Item={"pk": {"S": "EXP#exp1"}, "sk": {"S": "CONTROL"}, "token_budget": {"N": "5"}, "tokens_used": {"N": "5"}},
    )
    _refused(_send(harness, chat, "m1"), "budget_exhausted")


def test_kill_switch_refuses_messages_retryably(harness, model):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    harness.ddb.put_item(TableName="chats", Item={"pk": {"S": "SERVICE"}, "sk": {"S": "CONTROL"}, "paused": {"BOOL": True}})
    error = _refused(_send(harness, chat, "m1"), "paused")
    assert error["retryable"] is True and model.stats["requests"] == 0
    harness.ddb.delete_item(TableName="chats", Key={"pk": {"S": "SERVICE"}, "sk": {"S": "CONTROL"}})
    assert _send(harness, chat, "m1")[-1]["type"] == "message"  # resumed: the same message goes through


def test_a_frame_flood_is_rate_limited_per_connection_and_costs_nothing(make_harness, model):
    # an hour's window, so the test never straddles the start of a new one (windows follow the clock)
    harness = make_harness(RATE_LIMIT_FRAMES="5", RATE_LIMIT_WINDOW_SECONDS="3600")
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]  # frame 1
    for i in range(4):  # frames 2-5
        harness.send("c1", {"action": "history", "chat_id": chat})
    flood = [harness.send("c1", _send_frame_for(chat, f"f{i}"))[-1] for i in range(10)]
    assert {f["code"] for f in flood} == {"rate_limited"} and all(f["retryable"] for f in flood)
    assert model.stats["requests"] == 0 and harness.store.messages(chat) == []
    # API Gateway answers pings itself; one that reaches the function anyway is counted too
    assert harness.send("c1", {"action": "ping"})[0]["code"] == "rate_limited"
    harness.connect("c2")  # another socket has its own allowance
    assert harness.send("c2", _send_frame_for(chat, "ok"))[0]["type"] == "ack"


JUNK = ["not json", "", "[" * 5_000 + "]" * 5_000, '{"action": "dance"}', '{"action": "send"}']


def test_malformed_and_unknown_frames_count_toward_the_rate_limit(make_harness):
    """The protocol counts every frame but pings: a flood of junk is cut like any other flood
    (before the fix, junk was answered `bad_frame` forever, one invocation after another)."""
    harness = make_harness(RATE_LIMIT_FRAMES="5", RATE_LIMIT_WINDOW_SECONDS="3600")
    harness.connect("c1")
    for body in JUNK * 3:  # the first five are answered for what they are, the rest refused unread
        harness.send_raw("c1", body)
    codes = [f["code"] for f in harness.frames("c1")]
    assert codes == ["bad_frame", "bad_frame", "bad_frame", "unknown_action", "invalid_field"] + ["rate_limited"] * 10
    assert harness.send("c1", {"action": "start", "ticket": harness.ticket()})[0]["code"] == "rate_limited"
    harness.connect("c2")  # another socket has its own allowance
    assert harness.start("c2")["type"] == "chat"


def _send_frame_for(chat_id, client_msg_id):
    return {"action": "send", "chat_id": chat_id, "client_msg_id": client_msg_id, "text": "buy now"}


def test_budget_and_kill_switch_hold_during_a_burst(make_harness, model):
    """Eight participants send at once: spending stops once the budget is gone, and the kill
    switch stops everything at once; no refused message costs a model call."""
    harness = make_harness(TOKEN_BUDGET="1")
    chats = {}
    for n in range(8):
        harness.connect(f"c{n}", participant=f"P{n}")
        chats[n] = harness.start(f"c{n}", participant=f"P{n}")["chat_id"]
    # no reply is counted before every send of the burst is answered
    model.add_faults([{"kind": "delay", "seconds": model.hold.SECONDS}] * 8)

    def burst(tag):
        harness.send_at_once([(f"c{n}", _send_frame_for(chats[n], f"{tag}{n}")) for n in range(8)], wait=False)
        model.hold.release()
        assert harness.queue.wait_idle(60)

    burst("a")  # every send passes the check before any reply is counted: the documented overshoot
    replies = model.stats["requests"]
    assert replies == 8
    burst("b")  # now the budget is gone: all refused, no model call
    assert model.stats["requests"] == replies
    codes = [harness.frames(f"c{n}")[-1]["code"] for n in range(8)]
    assert codes == ["budget_exhausted"] * 8
    harness.ddb.put_item(TableName="chats", Item={"pk": {"S": "SERVICE"}, "sk": {"S": "CONTROL"}, "paused": {"BOOL": True}})
    burst("c")
    assert [harness.frames(f"c{n}")[-1]["code"] for n in range(8)] == ["paused"] * 8
    assert model.stats["requests"] == replies


def test_many_sockets_of_one_participant_buy_no_extra_replies(harness, model):
    """Six sockets, one participant, one chat, all sending at once: one reply is written,
    the others are refused with reply_in_progress; no extra model call."""
    for n in range(6):
        harness.connect(f"s{n}")
    chat = harness.start("s0")["chat_id"]
    model.add_faults([{"kind": "delay", "seconds": model.hold.SECONDS}])  # until every send is answered
    harness.send_at_once([(f"s{n}", _send_frame_for(chat, f"m{n}")) for n in range(6)], wait=False)
    model.hold.release()
    assert harness.queue.wait_idle(60)
    firsts = [next(f for f in harness.frames(f"s{n}") if f["type"] in ("ack", "error")) for n in range(6)]
    assert sorted(f.get("code", "ack") for f in firsts) == ["ack"] + ["reply_in_progress"] * 5
    assert model.stats["requests"] == 1
    assert [m.role for m in harness.store.messages(chat)] == ["user", "assistant"]


def _no_ticket(ticket: str) -> Ticket:
    raise AssertionError("no start frame in this test")


def test_the_frame_allowance_starts_again_with_each_window(tmp_path):
    """The domain's count (ChatService.admit_frame), on a clock of the test's: windows follow the clock."""
    store = SqliteStore(str(tmp_path / "chat.sqlite3"))
    now = [1_700_000_000.0]
    settings = Settings.from_env({"RATE_LIMIT_FRAMES": "2", "RATE_LIMIT_WINDOW_SECONDS": "10"})
    chats = ChatService(settings, store, NoJobQueue(), open_ticket=_no_ticket, clock=lambda: now[0])
    with pytest.raises(ChatError, match="not_connected"):
        chats.admit_frame("c1")
    who = Identity("P1", "exp1", "sess1")
    store.put_connection(Connection("c1", who, now[0], int(now[0]) + 100))
    assert [chats.admit_frame("c1").identity for _ in range(2)] == [who, who]
    with pytest.raises(ChatError, match="rate_limited"):
        chats.admit_frame("c1")
    now[0] += 10
    assert chats.admit_frame("c1").identity == who
    store.close()
