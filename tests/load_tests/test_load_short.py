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

