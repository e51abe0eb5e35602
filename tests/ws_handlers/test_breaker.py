"""When the model is down, fail fast: stop calling it, tell participants, recover by itself."""

from __future__ import annotations

from ws_handlers.breaker import after_failure
from ws_handlers.store import BreakerState


def _send(harness, cid, chat_id, client_msg_id):
    return harness.send(cid, {"action": "send", "chat_id": chat_id, "client_msg_id": client_msg_id, "text": "hello?"})


def test_repeated_failures_pause_model_calls_then_sends_go_through_again(make_harness, model):
    # a long window and cooldown, so that a busy machine cannot close the breaker early: the
    # test moves the handlers' clock past the cooldown instead of waiting for it
    harness = make_harness(
        LLM_MAX_RETRIES="0", LLM_BREAKER_FAILURES="3", LLM_BREAKER_WINDOW_SECONDS="600", LLM_BREAKER_COOLDOWN_SECONDS="300"
    )
    chats = {}
    for n in range(5):
        harness.connect(f"c{n}", participant=f"P{n}")
        chats[n] = harness.start(f"c{n}", participant=f"P{n}")["chat_id"]
    model.add_faults([{"kind": "status", "status": 503, "times": 100}])
    for n in range(3):  # three participants see the provider fail
        assert _send(harness, f"c{n}", chats[n], "m1")[-1]["code"] == "llm_unavailable"
    calls = model.stats["requests"]

    paused = _send(harness, "c3", chats[3], "m1")  # the breaker is open: refused before anything
    assert [f["type"] for f in paused] == ["error"]
    assert paused[0]["code"] == "llm_paused" and paused[0]["retryable"] is True
    assert model.stats["requests"] == calls and harness.store.messages(chats[3]) == []

    model.faults.clear()  # the provider is back; after the cooldown every send goes through (no half-open probe)
    harness.clock.advance(301)
    recovered = _send(harness, "c3", chats[3], "m1")
    assert recovered[0]["type"] == "ack" and recovered[-1]["type"] == "message"
    retry = _send(harness, "c0", chats[0], "m1")  # and the failed ones can be retried
    assert retry[0]["duplicate"] is True and retry[-1]["type"] == "message"


def test_a_bad_request_does_not_trip_the_breaker(make_harness, model):
    harness = make_harness(LLM_BREAKER_FAILURES="1")
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    model.add_faults([{"kind": "status", "status": 400, "times": 1}])
    assert _send(harness, "c1", chat, "m1")[-1]["code"] == "llm_error"
    assert harness.store.read_breaker() == BreakerState()  # not even counted


# -- the policy itself (ws_handlers/breaker.py): what one more failure does ------------------------

def test_failures_within_a_window_open_the_breaker_at_the_threshold_and_count_again():
    state = after_failure(BreakerState(), 100.0, 3, 30, 20)
    assert state == BreakerState(failures=1, window_start=100.0)
    state = after_failure(state, 110.0, 3, 30, 20)
    assert state == BreakerState(failures=2, window_start=100.0)
    opened = after_failure(state, 130.0, 3, 30, 20)  # the window's last instant still counts
    assert opened == BreakerState(failures=0, window_start=130.0, open_until=150.0)
    assert after_failure(opened, 140.0, 3, 30, 20) == BreakerState(failures=1, window_start=130.0, open_until=150.0)


def test_a_failure_after_the_window_expired_is_the_first_of_a_new_one():
    old = BreakerState(failures=2, window_start=100.0, open_until=50.0)
    assert after_failure(old, 130.5, 3, 30, 20) == BreakerState(failures=1, window_start=130.5, open_until=50.0)
    # with a threshold of 1 that first failure opens the breaker, as every failure does
    assert after_failure(old, 130.5, 1, 30, 20) == BreakerState(failures=0, window_start=130.5, open_until=150.5)
