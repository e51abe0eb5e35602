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

from .chat import ReplyJob
from .observability import logger, metrics
from .runtime import services
from .turn import Turn


class JobsFailed(RuntimeError):
    """Some jobs of the batch failed; SQS delivers the batch again (done jobs are then no-ops)."""


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    svc = services()
    turn = Turn(svc.settings, svc.store, svc.model(), svc.pusher_for)
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
