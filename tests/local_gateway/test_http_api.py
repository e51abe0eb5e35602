"""The local stack's HTTP API (template.yaml's HttpApi routes): a study entry over real HTTP on
loopback, whose credentials then open the arm's chat over the stack's WebSocket; and what API
Gateway answers by itself: the route's throttling (429) and a function throttled by its reserved
concurrency (500)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.sync.client import connect

from local_gateway.http_api import http_api_app
from local_gateway.stack import StackConfig, running
from local_gateway.template import HttpRoute
from local_gateway.threaded import serve_in_thread

sys.path.insert(0, str(Path(__file__).parents[1] / "ws_handlers"))
from studies import KEY, register  # noqa: E402
from studies import ORIGIN as STUDY_ORIGIN  # noqa: E402

ORIGIN = "http://localhost:8000"  # one of the local stack's default origins


@pytest.fixture(params=["sqlite", "dynamodb"])
def stack(request, tmp_path):
    config = StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp_path,
                         store=request.param, model_ttft=0.0, model_tokens_per_second=0.0)
    with running(config) as s:
        yield s


def post(url: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())


def test_an_entry_over_http_opens_the_arms_chat(stack):
    register(stack.store)
    url = f"{stack.urls['entry']}/studies/tutor/entry"
    status, headers, body = post(url, json.dumps({"participant": "P1", "ResponseID": "R_1"}).encode(),
                                 **{"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["url"] == stack.urls["websocket"], body
    assert headers["cache-control"] == "no-store"
    arm = stack.store.get_assignment("tutor", "P1").arm
    with connect(f"{body['url']}?token={quote(body['token'])}", origin=ORIGIN, open_timeout=30) as ws:
        ws.send(json.dumps({"action": "start", "ticket": body["ticket"]}))
        frame = json.loads(ws.recv(timeout=30))
    assert frame["type"] == "chat" and [m["text"] for m in frame["messages"]] == [f"Hello from {arm}-bot."]


def test_refusals_and_unknown_paths_as_api_gateway_answers_them(stack):
    register(stack.store)
    entry = stack.urls["entry"]
    assert post(f"{entry}/studies/tutor/entry", b"participant=P1")[::2] == (401, {"error": "study_key_invalid"})
    assert post(f"{entry}/studies/nope/entry", b"participant=P1", Authorization=f"Bearer {KEY}")[::2] == (
        404, {"error": "study_unknown"})
    assert post(f"{entry}/elsewhere", b"")[::2] == (404, {"message": "Not Found"})


# ---------------------------------------------------------------- what API Gateway answers by itself

THROTTLED = (429, {"message": "Too Many Requests"})


@pytest.fixture(params=["sqlite", "dynamodb"])
def throttled_stack(request, tmp_path):
    """The stack with the entry route's bucket as small as the template allows: 5 requests, then 1 a second."""
    config = StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp_path,
                         store=request.param, model_ttft=0.0, model_tokens_per_second=0.0,
                         parameters={"EntryThrottlingRateLimit": "1", "EntryThrottlingBurstLimit": "5"})
    with running(config) as s:
        yield s


def _enter(stack, participant: str) -> tuple[int, dict[str, str], dict]:
    return post(f"{stack.urls['entry']}/studies/tutor/entry", json.dumps({"participant": participant}).encode(),
                **{"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", "Origin": STUDY_ORIGIN})


def _burst(stack, participants: list[str]) -> dict[str, tuple[int, dict[str, str], dict]]:
    """Every participant's entry at once (threads released together)."""
    start = threading.Barrier(len(participants))

    def one(participant: str):
        start.wait(60)
        return _enter(stack, participant)

    with ThreadPoolExecutor(len(participants)) as pool:
        return dict(zip(participants, pool.map(one, participants)))


def test_a_burst_beyond_the_routes_bucket_is_answered_429_before_anything_is_written(throttled_stack):
    stack = throttled_stack
    register(stack.store)
    assert stack.template.http_routes[0].throttling_rate == 1.0  # read from the template's parameters
    answers: dict[str, tuple[int, dict[str, str], dict]] = {}
    for burst in range(10):  # the bucket refills 1 a second: a burst of 30 meets it empty (a bound, not a pace)
        answers |= _burst(stack, [f"B{burst}-{n}" for n in range(30)])
        if any(status == 429 for status, _, _ in answers.values()):
            break
    entered = {p for p, (status, _, _) in answers.items() if status == 200}
    throttled = {p for p, (status, _, _) in answers.items() if status == 429}
    assert entered and throttled and entered | throttled == set(answers), {a[0] for a in answers.values()}
    for participant in throttled:  # API Gateway's own answer: its body, and no CORS header for the page
        status, headers, body = answers[participant]
        assert (status, body) == THROTTLED and "access-control-allow-origin" not in headers
    assert all(answers[p][1]["access-control-allow-origin"] == STUDY_ORIGIN for p in entered)  # the function's
    # nothing half-written: a throttled entry took no place and left no assignment
    assert {a.participant for a in stack.store.assignments("tutor")} == entered
    assert stack.store.get_study("tutor").entries == len(entered)
    assert stack.stats()["http_api"]["POST /studies/{study}/entry"]["throttled"] == len(throttled)

    # the throttled participants try again (as survey.js does) until the bucket lets them in
    waiting, deadline = set(throttled), time.monotonic() + 120
    while waiting and time.monotonic() < deadline:
        for participant in sorted(waiting):
            status, _, body = _enter(stack, participant)
            assert status in (200, 429), body
            if status == 200:
                waiting.discard(participant)
        time.sleep(0.25)  # a retry's pace, not a wait for something: the bucket refills by the clock
    assert not waiting
    assignments = list(stack.store.assignments("tutor"))
    assert sorted(a.participant for a in assignments) == sorted(answers)
    assert stack.store.get_study("tutor").entries == len(answers)  # one place each


def test_an_entry_retried_after_a_lost_answer_keeps_its_one_assignment(stack):
    """A client that retries (its answer lost, a 5xx, a second tab) gets the same arm and credentials
    for the same chat; the participant is assigned once."""
    register(stack.store)
    first = _enter(stack, "P-retry")
    again = [_enter(stack, "P-retry") for _ in range(3)]
    assert {status for status, _, _ in [first, *again]} == {200}
    [assignment] = list(stack.store.assignments("tutor"))
    assert assignment.participant == "P-retry"
    assert stack.store.get_study("tutor").entries == 1
    chats = set()
    for _, _, body in [first, *again]:
        with connect(f"{body['url']}?token={quote(body['token'])}", origin=ORIGIN, open_timeout=30) as ws:
            ws.send(json.dumps({"action": "start", "ticket": body["ticket"]}))
            chats.add(json.loads(ws.recv(timeout=30))["chat_id"])
    assert len(chats) == 1


def test_a_function_whose_reserved_concurrency_is_in_use_is_answered_500_as_lambda_throttles_it():
    """Lambda refuses a synchronous invocation beyond ReservedConcurrentExecutions; API Gateway
    answers 500 Internal Server Error and does not retry. The invoke here is the stack's edge: it
    holds the first invocation until the test has seen the second refused."""
    held = threading.Event()
    release = threading.Event()
    calls = []

    async def invoke(function: str, event: dict) -> dict:
        calls.append(function)
        held.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        return {"statusCode": 200, "body": "{}"}

    route = HttpRoute("POST", "/studies/{study}/entry", "Enrol", throttling_rate=100.0, throttling_burst=100)
    with serve_in_thread(http_api_app((route,), invoke, reserved={"Enrol": 1})) as served, \
            ThreadPoolExecutor(1) as pool:
        url = f"{served.url}/studies/s/entry"
        first = pool.submit(post, url, b"participant=P1")
        assert held.wait(60)
        assert post(url, b"participant=P2")[::2] == (500, {"message": "Internal Server Error"})
        release.set()
        assert first.result(60)[::2] == (200, {})
        assert post(url, b"participant=P3")[0] == 200  # the execution is free again
    assert calls == ["Enrol", "Enrol"]  # the refused one never ran
