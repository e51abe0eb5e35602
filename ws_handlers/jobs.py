"""The job queue port: a reply job, from the message function to the reply function. No I/O
here: on AWS the queue is SQS (`adapters.sqs`); the local stack has its own (local_gateway/sqs_queue.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ReplyJob:
    """What the reply function needs to write one reply (the body of its queue message)."""

    chat_id: str
    user_seq: int
    turn_id: str
    connection_id: str
    endpoint: str  #: Management API endpoint to push through

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "reply", **self.__dict__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyJob:
        return cls(data["chat_id"], int(data["user_seq"]), data["turn_id"], data["connection_id"], data["endpoint"])


class JobQueue(Protocol):
    def enqueue(self, job: ReplyJob) -> None:
        """Hand the job to the reply function without waiting for it. Delivery is at least once
        and may wait for a free slot: the reply function claims each turn exactly once."""
        ...
