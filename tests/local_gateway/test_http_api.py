"""The local stack's HTTP API (template.yaml's HttpApi routes): a study entry over real HTTP on
loopback, whose credentials then open the arm's chat over the stack's WebSocket."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.sync.client import connect

from local_gateway.stack import StackConfig, running

sys.path.insert(0, str(Path(__file__).parents[1] / "ws_handlers"))
from studies import KEY, register  # noqa: E402

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
