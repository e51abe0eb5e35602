"""The model adapter on the real `openai` client against the offline model over HTTP on 127.0.0.1:
what it reports of a reply's provenance is what the provider answered and what was sent."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from local_gateway.offline_model import OfflineModel
from local_gateway.threaded import serve_in_thread
from ws_handlers.adapters.openai_model import OpenAIChatModel
from ws_handlers.bot import Bot
from ws_handlers.model import Provenance, Usage

PROMPT = "You are Ada, a patient maths tutor. Answer in two sentences."
QUESTION = {"role": "user", "content": "What is a prime number?"}


@pytest.fixture
def provider() -> Iterator[tuple[OpenAIChatModel, list[dict[str, Any]]]]:
    """The adapter, and the request bodies the offline model received (recorded before it answers)."""
    received: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/chat/completions":
            received.append(json.loads(await request.read()))  # aiohttp keeps the body for the handler
        return await handler(request)

    app = OfflineModel(ttft=0, tokens_per_second=0).app()
    app.middlewares.append(record)
    with serve_in_thread(app) as served:
        yield OpenAIChatModel("test", served.url + "/v1", timeout=30, max_retries=0), received


def _reply(model: OpenAIChatModel, bot: Bot, messages: list[dict[str, str]]) -> tuple[str, Usage]:
    *pieces, usage = model.stream(bot, messages)
    assert all(isinstance(p, str) for p in pieces) and isinstance(usage, Usage)
    return "".join(pieces), usage


def test_a_reply_reports_the_snapshot_that_answered_what_was_sent_and_the_prompts_hash(provider):
    model, received = provider
    bot = Bot("ada", "gpt-4o-mini", PROMPT, temperature=0.3, max_tokens=120)
    text, usage = _reply(model, bot, [{"role": "system", "content": PROMPT}, QUESTION])
    assert text and usage.completion_tokens > 0
    [sent] = received
    provenance = usage.provenance
    assert provenance.model_snapshot == "gpt-4o-mini-2025-01-01" != sent["model"]  # the dated snapshot, not the alias
    assert provenance.system_fingerprint == "fp_offline"
    parameters = {k: v for k, v in sent.items() if k not in ("messages", "stream", "stream_options")}
    assert parameters == {"model": "gpt-4o-mini", "temperature": 0.3, "max_tokens": 120}
    assert provenance.parameters == json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    assert provenance.parameters == '{"max_tokens":120,"model":"gpt-4o-mini","temperature":0.3}'  # canonical
    assert sent["messages"][0]["content"] == PROMPT
    assert provenance.system_prompt_sha256 == hashlib.sha256(PROMPT.encode()).hexdigest()


def test_the_same_settings_give_the_same_provenance_and_another_prompt_another_hash(provider):
    model, _ = provider
    bot = Bot("ada", "offline-2024-07-18", PROMPT)
    first = _reply(model, bot, [{"role": "system", "content": PROMPT}, QUESTION])[1].provenance
    longer = [{"role": "system", "content": PROMPT}, QUESTION, {"role": "assistant", "content": "A prime ..."},
              {"role": "user", "content": "And 9?"}]
    assert _reply(model, bot, longer)[1].provenance == first  # the conversation is not a parameter
    assert first.model_snapshot == "offline-2024-07-18"  # a dated name is answered as asked
    edited = PROMPT.replace("two", "three")
    other = _reply(model, bot, [{"role": "system", "content": edited}, QUESTION])[1].provenance
    assert other.system_prompt_sha256 != first.system_prompt_sha256
    assert Provenance(**{**vars(other), "system_prompt_sha256": first.system_prompt_sha256}) == first


def test_a_bot_without_a_system_prompt_has_no_prompt_hash(provider):
    model, received = provider
    _, usage = _reply(model, Bot("plain", "offline", ""), [QUESTION])
    assert [m["role"] for m in received[0]["messages"]] == ["user"]
    assert usage.provenance.system_prompt_sha256 is None and usage.provenance.model_snapshot == "offline-2025-01-01"


def test_a_server_that_names_no_model_leaves_the_snapshot_empty_and_keeps_the_rest():
    """Some compatible servers send `"model": null` (or nothing) and no fingerprint: the reply is
    stored all the same, with what was sent."""

    async def complete(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in ({"model": None, "choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]},
                      {"choices": [{"delta": {}, "finish_reason": "stop"}]}):
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    with serve_in_thread(app) as served:
        model = OpenAIChatModel("test", served.url + "/v1", timeout=30, max_retries=0)
        text, usage = _reply(model, Bot("ada", "llama3", PROMPT), [{"role": "system", "content": PROMPT}, QUESTION])
    assert text == "Hi"
    assert usage.provenance == Provenance(None, None, '{"max_tokens":400,"model":"llama3","temperature":0.7}',
                                          hashlib.sha256(PROMPT.encode()).hexdigest())
