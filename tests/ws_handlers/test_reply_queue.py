"""Replies go through a queue that delivers at least once: the message function sends jobs to
SQS (moto's here), the reply function claims each turn once, and a queue that refuses a job
frees the chat at once."""

from __future__ import annotations

import json

import boto3
import pytest

from local_gateway.lambda_context import LambdaContext
from ws_handlers import reply, runtime
from ws_handlers.adapters.sqs import SqsJobQueue


def _send(cid: str, chat_id: str, cmid: str, text: str = "What is a prime?") -> dict:
    return {"action": "send", "chat_id": chat_id, "client_msg_id": cmid, "text": text}


@pytest.fixture
def sqs_jobs(harness):
    """The message function sends its jobs to a queue of moto's SQS, through the production
    adapter; the test then plays the event source mapping (`_sqs_records`)."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="replies")["QueueUrl"]
    runtime.services().jobs = SqsJobQueue(url, client=sqs)
    return sqs, url


def _sqs_records(sqs, url: str) -> list[dict]:
    """What the event source mapping would hand the function: the queue's messages, as records."""
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])
    return [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
             "attributes": m.get("Attributes", {}), "eventSource": "aws:sqs"} for m in got.get("Messages", [])]


def test_a_job_through_sqs_delivered_twice_writes_one_reply_and_calls_the_model_once(harness, model, sqs_jobs):
    sqs, url = sqs_jobs
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    frames = harness.send("c1", _send("c1", chat_id, "m1"))
    assert [f["type"] for f in frames] == ["ack", "queued"]
    (record,) = _sqs_records(sqs, url)
    job = json.loads(record["body"])
    assert job["chat_id"] == chat_id and job["user_seq"] == 1
    for _ in range(2):  # SQS delivers at least once: the same record twice
        reply.handler({"Records": [record]}, LambdaContext("reply"))
    replies = [m for m in harness.store.messages(chat_id) if m.role == "assistant"]
    assert [m.seq for m in replies] == [2] and model.stats["requests"] == 1
    assert [f["type"] for f in harness.frames("c1")].count("message") == 1


def test_the_harness_queue_delivers_every_job_twice_and_the_duplicate_does_nothing(harness, model):
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    for n in range(3):
        frames = harness.send("c1", _send("c1", chat_id, f"m{n}", f"question {n}"))
        assert frames[-1]["type"] == "message"
    assert harness.queue.stats.delivered == 2 * harness.queue.stats.sent == 6
    assert model.stats["requests"] == 3
    assert [m.seq for m in harness.store.messages(chat_id)] == list(range(1, 7))


def test_a_queue_that_refuses_the_job_frees_the_chat_and_the_retry_works(harness, model):
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    services = runtime.services()
    services.jobs = SqsJobQueue("https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue")
    frames = harness.send("c1", _send("c1", chat_id, "m1"))
    assert [f["type"] for f in frames] == ["ack", "error"]
    error = frames[-1]
    assert (error["code"], error["retryable"], error["seq"], error["client_msg_id"]) == ("internal", True, 2, "m1")
    assert "no-such-queue" not in json.dumps(frames)  # nothing of the failure's detail reaches the client
    assert harness.store.get_chat(chat_id).lease is None  # not held for the queue's wait
    services.jobs = harness.queue
    again = harness.send("c1", _send("c1", chat_id, "m1"))
    assert [f["type"] for f in again][:2] == ["ack", "queued"] and again[0]["duplicate"] is True
    assert again[-1]["type"] == "message" and again[-1]["seq"] == 2 and model.stats["requests"] == 1


def test_a_retry_of_a_queued_message_is_told_it_is_queued_and_queues_nothing(harness, model, sqs_jobs):
    sqs, url = sqs_jobs
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    harness.send("c1", _send("c1", chat_id, "m1"))
    harness.connect("c2")  # the participant reloaded the page while the reply waited
    retry = harness.send("c2", _send("c2", chat_id, "m1"))
    assert [f["type"] for f in retry] == ["ack", "queued"] and retry[0]["duplicate"] is True
    assert retry[1] == {"type": "queued", "chat_id": chat_id, "seq": 2, "client_msg_id": "m1"}
    assert len(_sqs_records(sqs, url)) == 1  # one job for the message, however often it is retried
    chat = harness.send("c2", {"action": "history", "chat_id": chat_id})[-1]
    assert chat["replying"] == 2


def test_a_malformed_job_fails_the_invocation_so_sqs_keeps_it_for_the_dead_letter_queue(harness):
    with pytest.raises(reply.JobsFailed):
        reply.handler({"Records": [{"messageId": "x", "body": "not json"}]}, LambdaContext("reply"))
    with pytest.raises(reply.JobsFailed):
        reply.handler({"Records": [{"messageId": "y", "body": json.dumps({"kind": "reply"})}]}, LambdaContext("reply"))


def test_a_reply_the_store_refuses_is_reported_alarmed_and_regenerated_on_retry(
        harness, model, strict_dynamodb, monkeypatch, capsys, sqs_jobs):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setattr("ws_handlers.adapters.dynamodb.time.sleep", lambda _s: None)  # the backoff, not its length
    sqs, url = sqs_jobs
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    harness.send("c1", _send("c1", chat_id, "m1"))
    (record,) = _sqs_records(sqs, url)
    before = len(harness.frames("c1"))
    # DynamoDB stays throttled for every transaction while the reply is stored
    with strict_dynamodb.throttling(rate=1.0, operations=frozenset({"TransactWriteItems"})):
        reply.handler({"Records": [record]}, LambdaContext("reply"))
    error = harness.frames("c1")[before:][-1]
    assert (error["type"], error["code"], error["retryable"]) == ("error", "throttled", True)
    assert (error["seq"], error["client_msg_id"]) == (2, "m1")
    assert harness.store.get_message(chat_id, 2) is None and harness.store.get_chat(chat_id).lease is None
    assert '"RepliesNotStored"' in capsys.readouterr().out  # the metric RepliesNotStoredAlarm watches
    runtime.services().jobs = harness.queue
    again = harness.send("c1", _send("c1", chat_id, "m1"))  # the client's retry: same client_msg_id
    assert again[0]["duplicate"] is True and again[-1]["type"] == "message" and again[-1]["seq"] == 2
    assert model.stats["requests"] == 2  # generated twice: once lost to the store, once stored


def test_a_page_reloaded_while_its_reply_waits_is_told_it_is_queued(harness, sqs_jobs):
    sqs, url = sqs_jobs
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    harness.send("c1", _send("c1", chat_id, "m1"))
    harness.connect("c2")  # the reload: a new socket, start again
    frames = harness.send("c2", {"action": "start", "ticket": harness.ticket()})
    assert [f["type"] for f in frames] == ["chat", "queued"] and frames[0]["replying"] == 2
    assert frames[1] == {"type": "queued", "chat_id": chat_id, "seq": 2, "client_msg_id": "m1"}
    (record,) = _sqs_records(sqs, url)
    reply.handler({"Records": [record]}, LambdaContext("reply"))  # the reply starts: no longer queued
    harness.connect("c3")
    assert [f["type"] for f in harness.send("c3", {"action": "start", "ticket": harness.ticket()})] == ["chat"]


def test_a_reply_whose_process_died_frees_the_chat_and_tells_the_participant_once(harness, model, sqs_jobs):
    """The process writing a reply was killed (its worker, on the local stack): the chat is freed at
    once and the participant told to retry, once however often it is reported; SQS's redelivery of
    the job then does nothing, and the retry writes the reply once."""
    sqs, url = sqs_jobs
    harness.connect("c1")
    chat_id = harness.start("c1")["chat_id"]
    harness.send("c1", _send("c1", chat_id, "m1"))
    (record,) = _sqs_records(sqs, url)
    job = json.loads(record["body"])
    assert harness.store.claim_turn(chat_id, job["turn_id"], 1e12)  # the killed invocation had claimed it
    before = len(harness.frames("c1"))
    for _ in range(2):  # the twins of a job delivered twice, both lost with the process
        reply.invocation_died({"Records": [record]})
    (error,) = harness.frames("c1")[before:]
    assert (error["code"], error["retryable"], error["seq"], error["client_msg_id"]) == ("internal", True, 2, "m1")
    assert harness.store.get_chat(chat_id).lease is None
    reply.handler({"Records": [record]}, LambdaContext("reply"))  # the redelivery after the visibility timeout
    assert harness.store.get_message(chat_id, 2) is None and model.stats["requests"] == 0
    runtime.services().jobs = harness.queue
    again = harness.send("c1", _send("c1", chat_id, "m1"))  # the retry the error asks for
    assert again[0]["duplicate"] is True and again[-1]["type"] == "message" and again[-1]["seq"] == 2
    reply.invocation_died({"Records": [record]})  # reported late: the stored reply is left alone
    assert harness.frames("c1")[-1]["type"] == "message"
    assert [m.seq for m in harness.store.messages(chat_id)] == [1, 2] and model.stats["requests"] == 1
