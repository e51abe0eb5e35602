"""A classroom burst in `make test`: 40 participants x 3 messages, all sending at once, on the
DynamoDB adapter under the strict emulation (transaction conflicts on), every reply job
delivered twice, 8 reply slots so most replies wait in the queue (five blocks of 8, as 100
participants on 20 slots made five of 20; `make bench-burst` runs 200 and 1000 on 50 slots).

Asserts what must hold however fast the machine is: nothing lost or duplicated, every reply
stored exactly once, with the emulation's conflicts on, and replies started in about the order the service took the messages in. Nothing is timed.
"""

from __future__ import annotations

import asyncio

import pytest

from load_tests import report
from load_tests.local import LocalConfig, local_stack
from load_tests.runner import Options, Run

PARTICIPANTS, MESSAGES, SLOTS = 40, 3, 8


@pytest.mark.timeout(600)  # a bound only: the run's own deadline is 240 s, and then it verifies
def test_a_burst_on_dynamodb_with_conflicts_and_every_job_twice(monkeypatch):
    # Every job comes twice, the second copy up to 1 s after the first, and a transaction stays in
    # flight for 50 ms (DynamoDB's take tens of ms): a duplicate's claim that meets its twin's
    # commit is refused, and the store's conflict retries run (how often depends on the timing).
    monkeypatch.setenv("LOCAL_DYNAMODB_HOLD_MS", "50")
    # a reply lasts about 0.5 s: long enough that a block of 8 is a clear step, short enough to be fast
    config = LocalConfig(ttft=0.1, tokens_per_second=400, store="dynamodb", llm_concurrency=SLOTS,
                         duplicate_deliveries=1.0, duplicate_lag=1.0)
    with local_stack(config, in_process=True) as stack:
        before = stack.stats()
        run = Run(Options(url=stack.urls["websocket"], secret=stack.secret, participants=PARTICIPANTS,
                          messages=MESSAGES, think=0.0, burst=True, deadline=240, reply_timeout=120))
        asyncio.run(run.execute())
        emulation = report.emulation(before, stack.stats())
    result = report.build(run, command="pytest", scenario="burst", floor=None, local=None, slots=SLOTS, priced=False,
                          extra={"emulation": emulation})
    v, sent = result["verification"], PARTICIPANTS * MESSAGES
    assert v["failures"] == [] and v["lost"] == 0 and v["duplicated"] == 0, v["failures"][:5]
    assert v["checked"] == PARTICIPANTS and v["sent"] == sent and v["stored_once"] == sent
    assert v["replies_stored"] == sent and v["replies_duplicated"] == 0 and v["replies_unstored"] == 0
    assert v["replies_complete"] == sent and v["unanswered"] == 0 and v["unverified"] == 0, result["errors"]

    (queue,) = emulation["queues"].values()
    assert queue["sent"] == sent and queue["delivered"] == 2 * sent and queue["dead_letters"] == 0
    assert queue["max_waiting"] > SLOTS  # the burst really queued
    # Conflicts on: overlapping transactions and writes are cancelled as DynamoDB's are. Whether this
    # run's timing made any overlap is chance (tests/ws_handlers/adapters/test_dynamodb_conflicts.py forces them).
    assert emulation["strict_dynamodb"]["conflicts"] is True

    ranks = result["by_rank"]
    assert ranks["acked"] == ranks["started"] == PARTICIPANTS
    # a random order would give about 0; blocks of 8 started in order, shuffled within, about 0.96
    assert ranks["spearman_ack_vs_first_delta"] > 0.8, ranks
    assert ranks["inversions_beyond_one_block"]["share"] < 0.02, ranks["inversions_beyond_one_block"]
