"""The reply function: invoked asynchronously with a ReplyJob, it writes one reply."""

from __future__ import annotations

from typing import Any

from .chat import ReplyJob
from .observability import logger, metrics
from .runtime import services
from .turn import Turn


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = ReplyJob.from_dict(event)
    metrics.add_metric(name="ReplyInvocations", unit="Count", value=1)
    logger.append_keys(chat_id=job.chat_id, user_seq=job.user_seq)
    svc = services()
    Turn(svc.settings, svc.store, svc.model(), svc.pusher_for).run(job)
    return {"chat_id": job.chat_id, "user_seq": job.user_seq}
