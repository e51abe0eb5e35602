"""A short load test in `make test`: 20 participants x 2 messages on the in-process stack.

Fails on any lost or duplicated message, an incomplete reply, or a send left unanswered.
"""

from __future__ import annotations

import asyncio

from load_tests import report
from load_tests.local import LocalConfig, local_stack
from load_tests.runner import Options, Run


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



def test_a_reply_that_never_comes_ends_the_wait_at_the_reply_timeout():
    """The load generator's waits have one deadline per attempt (not a timer per frame): a reply the
    model holds back past `reply_timeout` is counted as a timeout, and the run ends by itself."""
    import json
    import urllib.request

    with local_stack(LocalConfig(ttft=0.05, tokens_per_second=400), in_process=True) as stack:
        model_root = stack.urls["model"].removesuffix("/v1")
        body = json.dumps({"faults": [{"kind": "stall", "after_tokens": 2, "seconds": 6}]}).encode()
        request = urllib.request.Request(f"{model_root}/_faults", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).close()
        run = Run(Options(url=stack.urls["websocket"], secret=stack.secret, participants=1, messages=1,
                          think=0.0, deadline=120, reply_timeout=2.0, retries=0))
        asyncio.run(run.execute())
    assert run.errors == {"timeout": 1}
    [participant] = run.people
    [reply] = participant.replies
    assert reply.reply_s is None and reply.attempts == 1  # given up at the deadline, not retried
