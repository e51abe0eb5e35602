"""The offline model against the real openai client, served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from local_gateway.offline_model import OfflineModel, main
from local_gateway.offline_replies import count_tokens, persona_from, salient_words, tokenize
from local_gateway.threaded import ServedApp, serve_in_thread
from waiting import wait_for

ADA = [
    {"role": "system", "content": "You are Ada, a friendly tutor who helps students with maths."},
    {"role": "user", "content": "How do fractions work when you divide them?"},
]


@pytest.fixture
def model() -> OfflineModel:
    return OfflineModel(ttft=0, tokens_per_second=0)


@pytest.fixture
def served(model: OfflineModel) -> Iterator[ServedApp]:
    with serve_in_thread(model.app()) as served:
        yield served


def client(served: ServedApp, max_retries: int = 0, timeout: float = 60.0,
           api_key: str = "test") -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=api_key, max_retries=max_retries,
                         timeout=timeout)


def ask(served: ServedApp, messages: list[dict[str, Any]], **params: Any) -> str:
    """The text of a non-stream reply."""
    reply = client(served).chat.completions.create(model="m", messages=messages, **params)
    return reply.choices[0].message.content or ""


def http(served: ServedApp, method: str, path: str, body: Any = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(served.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def add_faults(served: ServedApp, *faults: dict[str, Any]) -> None:
    status, _, _ = http(served, "POST", "/_faults", {"faults": list(faults)})
    assert status == 200


def stats(served: ServedApp) -> dict[str, Any]:
    return json.loads(http(served, "GET", "/_stats")[2])


# ---------------------------------------------------------------- replies


def test_non_stream_reply_and_usage(served: ServedApp) -> None:
    reply = client(served).chat.completions.create(model="gpt-4o-mini", messages=ADA)
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o-mini-2025-01-01"  # the dated snapshot that answered the alias, as OpenAI's
    assert reply.system_fingerprint == "fp_offline"
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    text = choice.message.content
    assert text and 20 <= len(text.split()) <= 80
    assert reply.usage is not None
    assert reply.usage.completion_tokens == count_tokens(text)
    assert reply.usage.prompt_tokens == sum(count_tokens(m["content"]) for m in ADA)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_assembles_to_the_non_stream_reply(served: ServedApp) -> None:
    c = client(served)
    whole = c.chat.completions.create(model="m", messages=ADA).choices[0].message.content
    chunks = list(c.chat.completions.create(model="m", messages=ADA, stream=True))
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == "m-2025-01-01" for chunk in chunks)
    assert all(chunk.system_fingerprint == "fp_offline" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].delta.content is None
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks]
    assert "".join(pieces) == whole
    assert len(chunks) == count_tokens(whole) + 2  # role chunk, one per token, finish chunk


def test_an_alias_is_answered_by_its_dated_snapshot_and_a_snapshot_as_asked(served: ServedApp) -> None:
    c = client(served)
    for asked, answered in (("gpt-4o-mini", "gpt-4o-mini-2025-01-01"), ("offline", "offline-2025-01-01"),
                            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18")):
        assert c.chat.completions.create(model=asked, messages=ADA).model == answered
        streamed = c.chat.completions.create(model=asked, messages=ADA, stream=True,
                                             stream_options={"include_usage": True})
        assert {chunk.model for chunk in streamed} == {answered}


def test_stream_usage_chunk(served: ServedApp) -> None:
    chunks = list(client(served).chat.completions.create(
        model="m", messages=ADA, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert last.usage.completion_tokens == count_tokens(text)
    assert last.usage.prompt_tokens == sum(count_tokens(m["content"]) for m in ADA)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_replies_are_deterministic_and_vary_with_the_conversation(served: ServedApp) -> None:
    c = client(served)
    first = c.chat.completions.create(model="a", messages=ADA).choices[0].message.content
    again = c.chat.completions.create(model="b", messages=ADA, temperature=1.5).choices[0].message.content
    assert first == again
    longer = ADA + [{"role": "assistant", "content": first},
                    {"role": "user", "content": "And what about multiplying fractions?"}]
    second = c.chat.completions.create(model="a", messages=longer).choices[0].message.content
    assert second != first
    variety = {ask(served, [{"role": "user", "content": f"Tell me about topic {i} please"}]).split(".")[0]
               for i in range(12)}
    assert len(variety) > 1  # the template choice depends on the conversation's hash


def test_persona_from_the_system_prompt(served: ServedApp) -> None:
    text = ask(served, ADA)
    assert "Ada" in text and "a friendly tutor" in text
    assert "Ada" not in ask(served, [{"role": "user", "content": "How do fractions work?"}])
    later = ADA + [{"role": "assistant", "content": text}, {"role": "user", "content": "Give me an example."}]
    assert "Ada" in ask(served, later)


def test_persona_parsing() -> None:
    ada = persona_from("You are Ada, a friendly tutor who helps.")
    assert (ada.name, ada.role) == ("Ada", "a friendly tutor")
    assert persona_from("Your name is Bob. You are the grumpy landlord of a pub.").name == "Bob"
    assert persona_from("You're Captain Nemo, an explorer.").name == "Captain Nemo"
    assert persona_from("You are a helpful assistant.").name is None
    assert persona_from("").intro() == "I'm your assistant"


def test_reply_refers_to_the_participants_words(served: ServedApp) -> None:
    c = client(served)
    for words in ["I think volcanoes are fascinating", "Should governments tax sugary drinks?",
                  "My grandmother grew tomatoes in her greenhouse every summer"]:
        text = c.chat.completions.create(model="m", messages=[{"role": "user", "content": words}]
                                         ).choices[0].message.content
        assert any(word in text for word in salient_words(words)), (words, text)


def test_max_tokens_cuts_with_finish_reason_length(served: ServedApp) -> None:
    c = client(served)
    reply = c.chat.completions.create(model="m", messages=ADA, max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5 == count_tokens(reply.choices[0].message.content)
    chunks = list(c.chat.completions.create(model="m", messages=ADA, stream=True, max_completion_tokens=7))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len(chunks) == 7 + 2
    unbounded = c.chat.completions.create(model="m", messages=ADA, max_tokens=999)
    assert unbounded.choices[0].finish_reason == "stop"


def test_tokenize_round_trips() -> None:
    text = "Hi, I'm Ada. Let's try: 3/4 ÷ 1/2 = 1.5!"
    assert "".join(tokenize(text)) == text
    assert tokenize("Hello, world") == ["Hello", ",", " world"]


# ---------------------------------------------------------------- raw wire format


def test_raw_sse_format(served: ServedApp) -> None:
    status, headers, body = http(served, "POST", "/v1/chat/completions",
                                 {"model": "m", "messages": ADA, "stream": True,
                                  "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    events = body.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    assert all(event.startswith(b"data: ") and b"\n" not in event for event in events)
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(event[len(b"data: "):]) for event in events[:-1]]
    role_delta = {"role": "assistant", "content": "", "refusal": None}
    first_choice = {"index": 0, "delta": role_delta, "logprobs": None, "finish_reason": None}
    assert chunks[0]["choices"] == [first_choice]
    for chunk in chunks:
        assert set(chunk) >= {"id", "object", "created", "model", "choices"}
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "m-2025-01-01"
        assert chunk["id"] == chunks[0]["id"] and isinstance(chunk["created"], int)
    assert chunks[-2]["choices"][0]["delta"] == {} and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(len(c["choices"][0]["delta"]["content"]) <= 20 for c in chunks[1:-2])


def test_models_lists_offline(served: ServedApp) -> None:
    assert "offline" in [m.id for m in client(served).models.list()]


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("raw, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (body(model="m"), "messages"),
    (body(model="m", messages=[]), "messages"),
    (body(model="m", messages="hi"), "messages"),
    (body(model="m", messages=[{"role": "user", "content": 3}]), "messages.[0].content"),
    (body(model="m", messages=[{"role": "wizard", "content": "x"}]), "messages.[0].role"),
    (body(messages=USER), "model"),
    (body(model="m", messages=USER, max_tokens="5"), "max_tokens"),
    (body(model="m", messages=USER, max_tokens=0), "max_tokens"),
    (body(model="m", messages=USER, stream="yes"), "stream"),
])
def test_bad_requests_get_400_in_openai_shape(served: ServedApp, raw: bytes, param: str | None) -> None:
    status, headers, body = http(served, "POST", "/v1/chat/completions", raw=raw)
    assert status == 400
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_bad_request_through_the_client(served: ServedApp) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(served).chat.completions.create(model="m", messages=[])
    assert info.value.body["param"] == "messages"  # type: ignore[index]
    assert client(served).chat.completions.create(model="m", messages=ADA).choices[0].message.content


def test_unknown_route_answers_in_openai_shape(served: ServedApp) -> None:
    status, _, body = http(served, "GET", "/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_required_api_key() -> None:
    with serve_in_thread(OfflineModel(ttft=0, tokens_per_second=0, api_key="sekret").app()) as served:
        with pytest.raises(openai.AuthenticationError) as info:
            client(served, api_key="wrong").chat.completions.create(model="m", messages=ADA)
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
        status, _, body = http(served, "POST", "/v1/chat/completions", {"model": "m", "messages": ADA})
        assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"
        assert client(served, api_key="sekret").chat.completions.create(model="m", messages=ADA).choices


# ---------------------------------------------------------------- faults


def test_429_twice_then_success_with_retries(served: ServedApp) -> None:
    add_faults(served, {"kind": "status", "status": 429, "times": 2})
    reply = client(served, max_retries=2).chat.completions.create(model="m", messages=ADA)
    assert reply.choices[0].finish_reason == "stop"
    counters = stats(served)
    assert counters["requests"] == 3
    assert counters["by_status"] == {"429": 2, "200": 1}
    assert counters["completions_started"] == counters["completions_finished"] == 1
    assert counters["faults_pending"] == 0


def test_429_without_retries_raises_rate_limit_error(served: ServedApp) -> None:
    add_faults(served, {"kind": "status", "status": 429})
    with pytest.raises(openai.RateLimitError) as info:
        client(served).chat.completions.create(model="m", messages=ADA)
    assert info.value.response.headers["retry-after-ms"] == "5"
    assert info.value.code == "rate_limit_exceeded"


def test_500_without_retries_raises_internal_server_error(served: ServedApp) -> None:
    add_faults(served, {"kind": "status", "status": 500})
    with pytest.raises(openai.InternalServerError):
        client(served).chat.completions.create(model="m", messages=ADA)
    assert client(served).chat.completions.create(model="m", messages=ADA).choices  # the fault is used up


def test_an_echo_fault_quotes_the_request_in_its_error_body(served: ServedApp) -> None:
    """As some providers' 400s do: what the service logs of it must never include the request."""
    add_faults(served, {"kind": "status", "status": 400, "times": 2, "echo": True})
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as info:
            client(served).chat.completions.create(model="m", messages=ADA)
        assert ADA[0]["content"] in info.value.message and info.value.code == "request_echoed"
    assert http(served, "POST", "/_faults", {"faults": [{"kind": "status", "echo": "yes"}]})[0] == 400


def test_delay_beyond_the_client_timeout(served: ServedApp) -> None:
    add_faults(served, {"kind": "delay", "seconds": 600})  # ended by the fixture's shutdown
    with pytest.raises(openai.APITimeoutError):
        client(served, timeout=1).chat.completions.create(model="m", messages=ADA)


def test_faults_are_a_fifo_queue_and_can_be_cleared(served: ServedApp) -> None:
    add_faults(served, {"kind": "status", "status": 503}, {"kind": "status", "status": 500})
    with pytest.raises(openai.InternalServerError) as first:
        client(served).chat.completions.create(model="m", messages=ADA)
    assert first.value.status_code == 503
    assert stats(served)["faults_pending"] == 1
    assert http(served, "DELETE", "/_faults")[0] == 200
    assert client(served).chat.completions.create(model="m", messages=ADA).choices
    assert http(served, "POST", "/_faults", {"faults": [{"kind": "explode"}]})[0] == 400
    assert http(served, "POST", "/_faults", {"faults": [{"kind": "delay", "seconds": -1}]})[0] == 400


def test_cut_mid_stream_raises_api_connection_error(served: ServedApp) -> None:
    """Pinned behaviour of openai 3.54: an aborted stream raises APIConnectionError (its
    __cause__ is httpx2.RemoteProtocolError, "incomplete chunked read") after yielding the
    chunks that arrived; it is not retried, whatever max_retries says, and no chunk carries
    a finish_reason."""
    add_faults(served, {"kind": "cut", "after_tokens": 3})
    received = []
    stream = client(served, max_retries=2).chat.completions.create(model="m", messages=ADA, stream=True)
    with pytest.raises(openai.APIConnectionError) as info:
        for chunk in stream:
            received.append(chunk)
    assert type(info.value) is openai.APIConnectionError  # not the APITimeoutError subclass
    assert "incomplete chunked read" in str(info.value.__cause__)
    assert len(received) == 1 + 3
    assert all(chunk.choices[0].finish_reason is None for chunk in received)
    counters = stats(served)
    assert counters["requests"] == 1 and counters["aborted"] == 1 and counters["completions_finished"] == 0


def test_cut_mid_stream_async_client(served: ServedApp) -> None:
    async def run() -> tuple[int, BaseException | None]:
        c = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="test", max_retries=0, timeout=60)
        received = 0
        try:
            stream = await c.chat.completions.create(model="m", messages=ADA, stream=True)
            async for _chunk in stream:
                received += 1
        except openai.APIError as exc:
            return received, exc
        finally:
            await c.close()
        return received, None

    add_faults(served, {"kind": "cut", "after_tokens": 2})
    received, error = asyncio.run(run())
    assert received == 3 and type(error) is openai.APIConnectionError


def test_cut_non_stream_raises_api_connection_error_and_is_retried(served: ServedApp) -> None:
    add_faults(served, {"kind": "cut", "after_tokens": 0})
    with pytest.raises(openai.APIConnectionError):
        client(served).chat.completions.create(model="m", messages=ADA)
    add_faults(served, {"kind": "cut", "after_tokens": 0})
    assert client(served, max_retries=1).chat.completions.create(model="m", messages=ADA).choices
    assert stats(served)["aborted"] == 2


class FakeTime:
    """The model's clock and sleep: a sleep is recorded and moves the clock on at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def test_stall_mid_stream(served: ServedApp) -> None:
    fake = FakeTime()
    paced = OfflineModel(ttft=0, tokens_per_second=0, clock=fake.clock, sleep=fake.sleep)
    paced.add_faults([{"kind": "stall", "after_tokens": 2, "seconds": 0.3}])
    with serve_in_thread(paced.app()) as stalling:
        chunks = list(client(stalling).chat.completions.create(model="m", messages=ADA, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.slept == [0, 0.3]  # no time to the first token, no pacing: only the stall
    # a stall longer than the client's read timeout surfaces as APITimeoutError mid-stream
    add_faults(served, {"kind": "stall", "after_tokens": 2, "seconds": 600})  # ended by the fixture's shutdown
    received = []
    with pytest.raises(openai.APITimeoutError):
        stream = client(served, timeout=1).chat.completions.create(model="m", messages=ADA, stream=True)
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 1 + 2


def test_a_stall_placed_after_a_text_lasts_until_released(served: ServedApp) -> None:
    """`after_text` puts the stall after what a test watches for; POST /_faults/release ends it
    as soon as the test has seen what it waited for, instead of after its seconds."""
    whole = "".join(c.choices[0].delta.content or "" for c in
                    client(served).chat.completions.create(model="m", messages=ADA, stream=True))
    marker = whole.split()[3]
    add_faults(served, {"kind": "stall", "after_text": marker, "after_tokens": 1, "seconds": 3600})
    stream = client(served).chat.completions.create(model="m", messages=ADA, stream=True)
    said = ""
    for chunk in stream:
        said += chunk.choices[0].delta.content or "" if chunk.choices else ""
        if marker in said:
            break
    next_piece = next(stream).choices[0].delta.content  # the token after the marker comes; then it stalls
    assert marker in said and next_piece
    assert wait_for(lambda: json.loads(http(served, "POST", "/_faults/release")[2])["released"] == 1)
    rest = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert said + next_piece + rest == whole
    assert json.loads(http(served, "POST", "/_faults/release")[2]) == {"released": 0}
    assert http(served, "POST", "/_faults", {"faults": [{"kind": "stall", "after_text": 3}]})[0] == 400


def test_client_going_away_mid_stream_is_counted_not_fatal() -> None:
    model = OfflineModel(ttft=0, tokens_per_second=100)
    with serve_in_thread(model.app()) as served:
        stream = client(served).chat.completions.create(model="m", messages=ADA, stream=True)
        next(stream), next(stream)
        stream.close()
        deadline = time.monotonic() + 60
        while model.stats["disconnected"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model.stats["disconnected"] == 1 and model.stats["completions_finished"] == 0
        assert ask(served, ADA)  # still serving


# ---------------------------------------------------------------- timing and settings


def test_pacing_follows_ttft_and_token_rate() -> None:
    """The schedule the model keeps, read off its injected clock (the benchmarks measure the
    real floor before each load run): the time to the first token, then one token every 1/200 s."""
    fake = FakeTime()
    model = OfflineModel(ttft=0.1, tokens_per_second=200, clock=fake.clock, sleep=fake.sleep)
    with serve_in_thread(model.app()) as served:
        stream = client(served).chat.completions.create(model="m", messages=ADA, stream=True, max_tokens=40)
        tokens = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
    assert tokens == 40
    assert fake.slept == [0.1] + [pytest.approx(1 / 200)] * 39
    assert fake.now == pytest.approx(0.1 + 39 / 200)


def test_a_hundred_streams_are_served_at_once() -> None:
    # Every stream sends its first token, then waits for the pace until all 100 have begun: one
    # after another, the first would never end and the rest never begin (the client's timeout
    # ends that). Served at once, all have begun while none has ended.
    released = threading.Event()

    async def held(seconds: float) -> None:
        while seconds > 0 and not released.is_set():
            await asyncio.sleep(0.01)

    model = OfflineModel(ttft=0, tokens_per_second=4, sleep=held)
    begun: list[int] = []
    finished_when_all_begun: list[int] = []

    async def one(c: openai.AsyncOpenAI, i: int) -> str:
        messages = [{"role": "user", "content": f"question number {i}"}]
        stream = await c.chat.completions.create(model="m", messages=messages, stream=True, max_tokens=20)
        text = ""
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if text and len(begun) < 100 and i not in begun:
                begun.append(i)
                if len(begun) == 100:
                    finished_when_all_begun.append(model.stats["completions_finished"])
                    released.set()
        return text

    async def run(url: str) -> list[str]:
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="test", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*(one(c, i) for i in range(100)))
        finally:
            await c.close()

    with serve_in_thread(model.app()) as served:
        replies = asyncio.run(run(served.url))
    assert len(replies) == 100 and all(count_tokens(r) == 20 for r in replies)
    assert finished_when_all_begun == [0]
    assert model.stats["completions_finished"] == 100


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFLINE_MODEL_TTFT_MS", raising=False)
    monkeypatch.delenv("OFFLINE_MODEL_TOKENS_PER_SECOND", raising=False)
    default = OfflineModel()
    assert (default.ttft, default.tokens_per_second) == (0.3, 40)
    monkeypatch.setenv("OFFLINE_MODEL_TTFT_MS", "0")
    monkeypatch.setenv("OFFLINE_MODEL_TOKENS_PER_SECOND", "1000")
    configured = OfflineModel()
    assert (configured.ttft, configured.tokens_per_second) == (0, 1000)
    assert OfflineModel(ttft=1.5).ttft == 1.5


def test_cli_help_mentions_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--ttft-ms", "--tokens-per-second"):
        assert flag in out


# ---------------------------------------------------------------- timings (load tests' latency split)


def test_timings_are_off_by_default(served: ServedApp, monkeypatch: pytest.MonkeyPatch) -> None:
    ask(served, ADA)
    timings = json.loads(http(served, "GET", "/_timings")[2])
    assert timings["enabled"] is False and timings["records"] == []
    monkeypatch.delenv("OFFLINE_MODEL_TIMINGS", raising=False)
    assert OfflineModel().timings.enabled is False
    monkeypatch.setenv("OFFLINE_MODEL_TIMINGS", "50")
    assert OfflineModel().timings.limit == 50


def test_timings_record_each_request_with_its_marker_in_order_and_bounded() -> None:
    model = OfflineModel(ttft=0, tokens_per_second=0, timings=3)
    tagged = [ADA[0], {"role": "user", "content": "earlier [#old.p0.m0]"}, {"role": "assistant", "content": "ok"},
              {"role": "user", "content": "How do fractions work? [#r1.p7.m2]"}]
    with serve_in_thread(model.app()) as served:
        before = time.monotonic()
        list(client(served).chat.completions.create(model="m", messages=tagged, stream=True))
        after = time.monotonic()
        (streamed,) = json.loads(http(served, "GET", "/_timings")[2])["records"]
        ask(served, ADA)  # no marker, not streamed
        add_faults(served, {"kind": "status", "status": 500})
        with pytest.raises(openai.InternalServerError):
            ask(served, tagged)
        ask(served, tagged)  # a fourth request: the oldest record is dropped
        timings = json.loads(http(served, "GET", "/_timings")[2])
    # the marker is the last user message's; the model's times are CLOCK_MONOTONIC, one clock for every
    # process, so they fall within this process's own readings around the request
    assert streamed["marker"] == "r1.p7.m2" and streamed["outcome"] == "done" and streamed["status"] == 200
    assert before <= streamed["received"] <= streamed["first_token"] <= streamed["last_token"] <= streamed["done"] <= after
    assert timings["enabled"] is True and timings["limit"] == 3 and timings["dropped"] == 1
    plain, failed, again = timings["records"]
    assert plain["marker"] is None and plain["outcome"] == "done" and plain["status"] == 200
    assert failed["marker"] == "r1.p7.m2" and failed["status"] == 500 and failed["outcome"] == "error"
    assert failed["first_token"] is None and failed["done"] is None
    assert again["marker"] == "r1.p7.m2" and again["outcome"] == "done"
