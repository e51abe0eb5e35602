"""The job queue port (`jobs.JobQueue`) on SQS: the message function sends each reply job there."""

from __future__ import annotations

import json
from typing import Any

import boto3

from ..jobs import ReplyJob


class SqsJobQueue:
    """Reply jobs on SQS, which the reply function's event source mapping consumes with at most
    LlmConcurrency at once: a burst waits in the queue, in about arrival order (docs/architecture.md)."""

    def __init__(self, queue_url: str, client: Any | None = None) -> None:
        self.queue_url = queue_url
        self._client = client or boto3.client("sqs")

    def enqueue(self, job: ReplyJob) -> None:
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(job.to_dict()))
