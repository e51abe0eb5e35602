"""The reply function: SQS delivers reply jobs (batch size 1), and it writes each reply.

The event source mapping's MaximumConcurrency (LlmConcurrency) caps how many run at once;
the rest wait in the queue. SQS delivers at least once: `Turn` claims each job's turn with a
conditional write, so a second delivery of the same job does nothing. A job that raises is
delivered again after the queue's visibility timeout (and goes to the dead-letter queue after
maxReceiveCount); one whose reply was written is then a no-op for the same reason.
"""

from __future__ import annotations

import json
from typing import Any

from .adapters import openai_model  # noqa: F401  (openai loads in Lambda's init phase, not in the first reply)
from .entry import lambda_entry
from .jobs import ReplyJob
from .observability import logger, metrics
from .runtime import services
from .turn import Turn, report_dead_turn


class JobsFailed(RuntimeError):
    """Some jobs of the batch failed; SQS delivers the batch again (done jobs are then no-ops)."""


@lambda_entry()  # a batch with a failed job raises: SQS delivers it again
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    svc = services()
    turn = Turn(svc.settings, svc.store, svc.model(), svc.pusher_for, clock=svc.clock)
    records = event.get("Records") or []
    failed = 0
    for record in records:
        metrics.add_metric(name="ReplyInvocations", unit="Count", value=1)
        try:
            job = ReplyJob.from_dict(json.loads(record["body"]))
        except (KeyError, TypeError, ValueError):
            logger.error("malformed reply job", extra={"message_id": record.get("messageId")})
            failed += 1  # kept for a look: after maxReceiveCount it lands in the dead-letter queue
            continue
        logger.append_keys(chat_id=job.chat_id, user_seq=job.user_seq)
        try:
            turn.run(job)
        except Exception:  # logged by Turn.run
            failed += 1
    if failed:
        raise JobsFailed(f"{failed} of {len(records)} reply jobs failed")
    return {"jobs": len(records)}


def invocation_died(event: dict[str, Any]) -> None:
    """The process running `event` died mid-invocation (killed, out of memory), so `handler` could
    not say so: free each job's chat and tell its participant to retry (`report_dead_turn`).

    The local stack calls it when a reply worker process dies (local_gateway/process_runner.py).
    On AWS nothing does: an execution environment killed mid-reply leaves the chat's lease to
    lapse (REPLY_LEASE_SECONDS, no longer renewed), and the client's reply timeout asks `history`
    and resends (docs/protocol.md); SQS delivers the job again after the visibility timeout, and
    that delivery finds the turn claimed and does nothing.
    """
    svc = services()
    for record in event.get("Records") or []:
        try:
            job = ReplyJob.from_dict(json.loads(record["body"]))
        except (KeyError, TypeError, ValueError):
            continue  # nobody to tell: `handler` logs it when the job comes again
        if report_dead_turn(svc.store, svc.pusher_for, job):
            logger.warning("reply lost with its process; the participant was told to retry",
                           extra={"chat_id": job.chat_id, "user_seq": job.user_seq})
