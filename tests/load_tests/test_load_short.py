"""A short load test in `make test`: 20 participants x 2 messages on the in-process stack.

Fails on any lost or duplicated message, an incomplete reply, or a send left unanswered.
"""

from __future__ import annotations

import asyncio

from load_tests import report
from load_tests.local import LocalConfig, local_stack
from load_tests.runner import Options, Reply, Run


def test_twenty_participants_nothing_lost_or_duplicated():
    with local_stack(LocalConfig(ttft=0.05, tokens_per_second=400), in_process=True) as stack:
        run = Run(Options(url=stack.urls["websocket"], secret=stack.secret, participants=20, messages=2,
                          think=0.2, ramp=0.5, deadline=600, reply_timeout=60))
        asyncio.run(run.execute())
    result = report.build(run, command="pytest", scenario="short", floor={"ttft_s": 0.05, "tokens_per_second": 400},
                          local=None)
    v = result["verification"]
    assert v["failures"] == [] and v["lost"] == 0 and v["duplicated"] == 0
    assert v["checked"] == 20 and v["sent"] == 40 and v["stored_once"] == 40
    assert v["replies_complete"] == 40 and v["unanswered"] == 0 and v["unverified"] == 0, result["errors"]
    assert result["participants"]["peak_open_sockets"] == 20
    assert result["latency_ms"]["ttfd"]["count"] == 40
    assert result["cost"]["operations"]["lambda_requests"]["ReplyFunction"] == 40
    assert result["cost"]["per_participant_usd"]["aws"] > 0



def _one_message_meeting(fault: dict, **options) -> tuple[Run, Reply]:
    """One participant sends one message while the stack's offline model has `fault` queued (its
    `POST /_faults`); the run, and the participant's reply as the load generator recorded it."""
    import json
    import urllib.request

    with local_stack(LocalConfig(ttft=0.05, tokens_per_second=400), in_process=True) as stack:
        url = f"{stack.urls['model'].removesuffix('/v1')}/_faults"
        body = json.dumps({"faults": [fault]}).encode()
        urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}),
                               timeout=30).close()
        run = Run(Options(url=stack.urls["websocket"], secret=stack.secret, participants=1, messages=1,
                          think=0.0, deadline=120, **options))
        asyncio.run(run.execute())
    [participant] = run.people
    [reply] = participant.replies
    return run, reply


def test_a_reply_that_never_comes_ends_the_wait_at_the_reply_timeout():
    """The load generator's waits have one deadline per attempt (not a timer per frame): a reply the
    model holds back past `reply_timeout` is counted as a timeout, and the run ends by itself."""
    run, reply = _one_message_meeting({"kind": "stall", "after_tokens": 2, "seconds": 6}, reply_timeout=2.0, retries=0)
    assert run.errors == {"timeout": 1}
    assert reply.reply_s is None and reply.attempts == 1  # given up at the deadline, not retried


def test_a_reply_cut_off_is_sent_again_and_timed_from_the_answered_send():
    """A retryable error frame makes the participant send the same message again, as the client
    does; the reply is then complete, and its times count from the send that was answered."""
    run, reply = _one_message_meeting({"kind": "cut", "after_tokens": 2}, reply_timeout=60, retries=2)
    assert run.errors == {"reply_interrupted": 1}
    assert reply.attempts == 2 and reply.error is None and reply.final_text
    assert reply.merged_text == reply.final_text  # the deltas of the answered attempt alone
    assert reply.ttfd_s is not None and reply.ttfd_s <= reply.reply_s
    assert reply.attempt_sent_mono is not None and reply.done_at is not None
