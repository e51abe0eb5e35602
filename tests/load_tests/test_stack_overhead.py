"""Pairing a reply with the model's requests when its marker has several (stack_overhead.py's choice)."""

from __future__ import annotations

import pytest

from load_tests.stack_overhead import analyse, split_one

SAMPLE = {"marker": "r1.p0.m0", "attempt_sent_mono": 100.0, "ttfd_s": 0.6, "reply_s": 1.6}


def request(received: float, first: float | None, done: float | None) -> dict:
    return {"marker": "r1.p0.m0", "received": received, "first_token": first, "last_token": first, "done": done}


def test_a_retried_model_call_pairs_with_the_request_that_answered():
    cut = request(100.01, 100.3, None)  # the service's first call, cut before its end: the client saw its delta
    retried = request(100.35, 100.65, 101.55)  # the service's retry, which finished the reply
    before_the_send = request(99.0, 99.5, 99.9)  # an earlier attempt's request, before the answered send
    parts = split_one(SAMPLE, [before_the_send, cut, retried])
    assert parts is not None
    assert parts["before_model"] == pytest.approx(0.01) and parts["model_ttft"] == pytest.approx(0.29)
    assert parts["after_model_first"] == pytest.approx(0.3)
    assert parts["before_model_reply"] == pytest.approx(0.35) and parts["model_reply"] == pytest.approx(1.2)
    assert parts["after_model_done"] == pytest.approx(0.05)
    assert sum(parts[k] for k in ("before_model", "model_ttft", "after_model_first")) == pytest.approx(SAMPLE["ttfd_s"])


def test_a_reply_without_a_fitting_request_is_unpaired_and_counted():
    later = request(100.7, 100.9, 101.0)  # received after the client's first delta: cannot have produced it
    twice = [request(100.01, 100.3, 101.5) | {"marker": "r1.p1.m0"},  # a job delivered twice: two requests
             request(100.02, 100.4, 101.5) | {"marker": "r1.p1.m0"}]
    result = analyse([dict(SAMPLE), dict(SAMPLE, marker="r1.p1.m0")],
                     {"enabled": True, "dropped": 0, "records": [later, *twice]})
    assert (result["replies"], result["paired"], result["unpaired"], result["multi_request"]) == (2, 1, 1, 1)
    assert analyse([dict(SAMPLE)], None) == {"available": False}
