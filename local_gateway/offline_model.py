"""An offline, OpenAI-compatible chat completions server for development and tests.

`OfflineModel(...).app()` builds an aiohttp application that answers
`POST /v1/chat/completions` (plain JSON or OpenAI's SSE stream) and `GET /v1/models` with
deterministic replies written by `offline_replies`, paced by a time to first token and a
token rate. As OpenAI does, it answers a model alias with a dated snapshot (`snapshot_of`:
"gpt-4o-mini" is answered as "gpt-4o-mini-2025-01-01") and a `system_fingerprint`, which the
service records as a reply's provenance. Tests inject failures through `POST /_faults` (a FIFO queue: each valid
completion request consumes the next fault), end the stalls under way early with
`POST /_faults/release` (a test that has seen what it waited for) and read counters from
`GET /_stats`. With `timings=N` (env OFFLINE_MODEL_TIMINGS) it also keeps the times of the
last N requests for load tests, served at `GET /_timings` (local_gateway/model_timings.py); off by default.

Run it alone with `python -m local_gateway.offline_model --port 8011`; in tests host it
with `local_gateway.threaded.serve_in_thread(OfflineModel(...).app())`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from local_gateway.model_timings import Timings, marker_of, stamp
from local_gateway.offline_replies import content_text, count_tokens, tokenize, write_reply

MODEL_ID = "offline"
#: The date of the offline model's snapshots, and the fingerprint it answers with.
SNAPSHOT_DATE = "2025-01-01"
SYSTEM_FINGERPRINT = "fp_offline"
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(message, type_, param, code), status=status, headers=headers)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# ---------------------------------------------------------------- faults

FAULT_KINDS = ("status", "delay", "cut", "stall")


@dataclass
class Fault:
    """One injected failure; see the module docstring and `parse_fault`."""

    kind: str
    status: int = 500  #: status: the HTTP status to answer
    times: int = 1  #: status: how many consecutive requests get it
    #: status: the error's message quotes the whole request (system prompt, participant's text), as
    #: some providers' 400s do; what logs and frames say about it must never include it
    echo: bool = False
    seconds: float = 0.0  #: delay / stall: how long to sleep
    after_tokens: int = 0  #: cut / stall: content tokens streamed first
    #: cut / stall: count `after_tokens` from the token that completes this text's first
    #: occurrence (a fault placed after what a test watches for); "" counts from the start
    after_text: str = ""

    def position(self, reply: list[str]) -> int | None:
        """The token index where a cut or stall happens in `reply`; None: past its end."""
        if not self.after_text:
            return self.after_tokens
        said = ""
        for i, token in enumerate(reply):
            said += token
            if self.after_text in said:
                return i + 1 + self.after_tokens
        return None


def parse_fault(raw: Any) -> Fault:
    """Validate one fault from `POST /_faults`; raises BadRequest."""
    if not isinstance(raw, dict) or raw.get("kind") not in FAULT_KINDS:
        raise BadRequest(f"each fault needs a kind among {', '.join(FAULT_KINDS)}", "faults")

    def number(key: str, default: float, kind: type = float, low: float = 0) -> Any:
        value = raw.get(key, default)
        valid = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                 and value >= low and (kind is float or value == int(value)))
        if not valid:
            raise BadRequest(f"fault {raw['kind']!r}: {key} must be a number >= {low}", "faults")
        return kind(value)

    kind = raw["kind"]
    if kind == "status":
        echo = raw.get("echo", False)
        if not isinstance(echo, bool):
            raise BadRequest("fault 'status': echo must be true or false", "faults")
        return Fault(kind, status=number("status", 500, int, 400), times=number("times", 1, int, 1), echo=echo)
    if kind == "delay":
        return Fault(kind, seconds=number("seconds", 0.0))
    after_text = raw.get("after_text", "")
    if not isinstance(after_text, str):
        raise BadRequest(f"fault {kind!r}: after_text must be a string", "faults")
    if kind == "cut":
        return Fault(kind, after_tokens=number("after_tokens", 0, int), after_text=after_text)
    return Fault(kind, after_tokens=number("after_tokens", 0, int), seconds=number("seconds", 0.0),
                 after_text=after_text)


_STATUS_ERRORS = {
    429: ("Rate limit reached for requests (injected).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (injected).", "server_error", None),
    503: ("The engine is currently overloaded, please try again later (injected).", "server_error", None),
}


# ---------------------------------------------------------------- the model


class OfflineModel:
    """Settings, fault queue and counters of one offline model server.

    ttft: seconds before the first token (env OFFLINE_MODEL_TTFT_MS, default 300 ms).
    tokens_per_second: pace of the reply (env OFFLINE_MODEL_TOKENS_PER_SECOND, default 40);
        0 or less means no pacing at all.
    api_key: when set, requests must carry `Authorization: Bearer <api_key>`.
    retry_after_ms: value of the `retry-after-ms` header sent with injected 429 and 5xx
        answers, so the openai client's retries are quick; None sends no header.
    timings: keep the times of this many latest requests for `GET /_timings` (env
        OFFLINE_MODEL_TIMINGS; default 0: none kept, nothing recorded).
    clock, sleep: what the pacing, delays and stalls run on (attributes of the same names); a
        test injects its own to check the pace without timing it, or to hold a stalled reply
        until it has seen what it waits for.
    """

    def __init__(self, ttft: float | None = None, tokens_per_second: float | None = None,
                 api_key: str | None = None, retry_after_ms: float | None = 5, *, timings: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.ttft = ttft if ttft is not None else _env_float("OFFLINE_MODEL_TTFT_MS", 300) / 1000
        self.tokens_per_second = (tokens_per_second if tokens_per_second is not None
                                  else _env_float("OFFLINE_MODEL_TOKENS_PER_SECOND", 40))
        self.api_key = api_key
        self.retry_after_ms = retry_after_ms
        self.timings = Timings(timings if timings is not None else int(_env_float("OFFLINE_MODEL_TIMINGS", 0)))
        self.faults: collections.deque[Fault] = collections.deque()
        self.stats: dict[str, Any] = {}
        self.reset_stats()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stalls: set[asyncio.Event] = set()  #: one per stall under way; set by release_stalls
        self.clock, self.sleep = clock, sleep

    # -- state (the HTTP control endpoints call these; tests may call them too)

    def add_faults(self, faults: Iterable[Fault | dict[str, Any]]) -> None:
        parsed = [f if isinstance(f, Fault) else parse_fault(f) for f in faults]
        self.faults.extend(parsed)

    def next_fault(self) -> Fault | None:
        """Consume the next fault; a status fault stays queued until used `times` times."""
        if not self.faults:
            return None
        fault = self.faults[0]
        if fault.kind == "status" and fault.times > 1:
            fault.times -= 1
            return Fault("status", status=fault.status, echo=fault.echo)
        return self.faults.popleft()

    def release_stalls(self) -> int:
        """End the stalls under way now (call on the server's loop); how many there were."""
        stalls, self._stalls = self._stalls, set()
        for stall in stalls:
            stall.set()
        return len(stalls)

    async def _stall(self, seconds: float) -> None:
        """A stall: `seconds` of `self.sleep`, or less if `release_stalls` ends it."""
        released = asyncio.Event()
        self._stalls.add(released)
        waits = {asyncio.ensure_future(self.sleep(seconds)), asyncio.ensure_future(released.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            self._stalls.discard(released)

    def reset_stats(self) -> None:
        self.stats = {"requests": 0, "completions_started": 0, "completions_finished": 0,
                      "aborted": 0, "disconnected": 0, "by_status": {}}

    def _count_status(self, status: int) -> None:
        by_status = self.stats["by_status"]
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    # -- application

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors_middleware])
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/_faults", self._post_faults)
        app.router.add_delete("/_faults", self._delete_faults)
        app.router.add_post("/_faults/release", self._release_stalls)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_get("/_timings", self._get_timings)
        app.on_shutdown.append(self._cancel_inflight)
        return app

    async def _cancel_inflight(self, _app: web.Application) -> None:
        """Stop sleeping handlers (delays, stalls, slow streams) so shutdown is prompt."""
        for task in list(self._inflight):
            task.cancel()

    @web.middleware
    async def _errors_middleware(self, request: web.Request,
                                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                 ) -> web.StreamResponse:
        """Answer every failure in OpenAI's error shape; never let a handler crash the server."""
        try:
            return await handler(request)
        except web.HTTPException as exc:  # 404, 405, 413 ... raised by aiohttp itself
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason or "error",
                          "invalid_request_error" if exc.status < 500 else "server_error")
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:  # a bug here must not take the demo down
            return _error(500, f"offline model error: {type(exc).__name__}: {exc}", "server_error")

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _unauthorized(self) -> web.Response:
        return _error(401, "Incorrect API key provided.", param=None, code="invalid_api_key")

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({"object": "list", "data": [_model_object(MODEL_ID)]})

    async def _model(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response(_model_object(request.match_info["model"]))

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            faults = body.get("faults") if isinstance(body, dict) else None
            if not isinstance(faults, list):
                raise BadRequest('expected {"faults": [...]}', "faults")
            self.add_faults(faults)
        except ValueError:
            return _error(400, "body is not JSON")
        except BadRequest as exc:
            return _error(400, str(exc), param=exc.param)
        return web.json_response({"pending": len(self.faults)})

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"pending": 0})

    async def _release_stalls(self, request: web.Request) -> web.Response:
        return web.json_response({"released": self.release_stalls()})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "faults_pending": len(self.faults), "stalled": len(self._stalls)})

    async def _get_timings(self, request: web.Request) -> web.Response:
        return web.json_response(self.timings.document())

    # -- chat completions

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        timing = self.timings.start(time.monotonic())  # None unless timings are on
        self.stats["requests"] += 1
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            response = await self._complete(request, timing)
        except ConnectionError:
            self.stats["disconnected"] += 1
            stamp(timing, "outcome", "disconnected")
            return web.Response()  # the peer is gone; aiohttp drops this quietly
        finally:
            self._inflight.discard(task)
        stamp(timing, "status", response.status)
        if timing is not None and timing["outcome"] is None:
            timing["outcome"] = "cut" if isinstance(response, _Aborted) else "error"
        if not response.prepared and not isinstance(response, _Aborted):
            self._count_status(response.status)  # streams count theirs when the headers go out
        return response

    async def _complete(self, request: web.Request, timing: dict[str, Any] | None = None) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthorized()
        try:
            body = _parse_request(await request.read())
        except BadRequest as exc:
            return _error(400, str(exc), param=exc.param)
        stamp(timing, "marker", marker_of(body["messages"]))

        fault = self.next_fault()
        if fault and fault.kind == "status":
            message, type_, code = _STATUS_ERRORS.get(
                fault.status, (f"Injected HTTP {fault.status} from the offline model.",
                               "server_error" if fault.status >= 500 else "invalid_request_error", None))
            if fault.echo:
                message, code = f"Invalid request: {json.dumps(body, ensure_ascii=False)}", "request_echoed"
            headers = {}
            if self.retry_after_ms is not None and (fault.status == 429 or fault.status >= 500):
                headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
            return _error(fault.status, message, type_, code=code, headers=headers)
        if fault and fault.kind == "delay":
            await self.sleep(fault.seconds)

        messages = body["messages"]
        reply = tokenize(write_reply(messages))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish_reason = "stop"
        if limit is not None and len(reply) > limit:
            reply, finish_reason = reply[:limit], "length"
        usage = _usage(sum(count_tokens(content_text(m.get("content"))) for m in messages), len(reply))

        self.stats["completions_started"] += 1
        reply_id = f"chatcmpl-offline-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, reply, finish_reason, usage if include_usage else None,
                                      fault, reply_id, created, snapshot_of(body["model"]), timing)

        stall = fault.seconds if fault and fault.kind == "stall" else 0.0
        await self.sleep(self.ttft + self._pace(len(reply)) + stall)
        if fault and fault.kind == "cut":
            self.stats["aborted"] += 1
            _abort(request)
            return _Aborted()
        self.stats["completions_finished"] += 1
        for key in ("first_token", "last_token", "done"):
            stamp(timing, key)
        stamp(timing, "outcome", "done")
        return web.json_response({
            "id": reply_id, "object": "chat.completion", "created": created, "model": snapshot_of(body["model"]),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(reply),
                                                  "refusal": None, "annotations": []},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage, "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT,
        })

    def _pace(self, tokens: int) -> float:
        return tokens / self.tokens_per_second if self.tokens_per_second > 0 else 0.0

    async def _stream(self, request: web.Request, reply: list[str], finish_reason: str,
                      usage: dict[str, int] | None, fault: Fault | None, reply_id: str,
                      created: int, model: str, timing: dict[str, Any] | None = None) -> web.StreamResponse:
        """OpenAI's SSE stream: role chunk, one chunk per token, finish chunk, usage, [DONE]."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if usage is not None:
                data["usage"] = None
            return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

        await self.sleep(self.ttft)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        self._count_status(response.status)
        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        start = self.clock()
        at = fault.position(reply) if fault and fault.kind in ("cut", "stall") else None
        for i, token in enumerate(reply):
            if fault and i == at:
                if fault.kind == "cut":
                    return await self._cut(request, response)
                stalled_at = self.clock()
                await self._stall(fault.seconds)
                start += self.clock() - stalled_at  # the pace goes on from where it stopped
            wait = start + self._pace(i) - self.clock()
            if wait > 0:
                await self.sleep(wait)
            data = chunk({"content": token})
            if timing is not None:  # stamped just before the write, so never after the peer has it
                stamp(timing, "last_token")
                if i == 0:
                    timing["first_token"] = timing["last_token"]
            await response.write(data)
        if fault and fault.kind == "cut":  # after_tokens >= the reply's length
            return await self._cut(request, response)
        await response.write(chunk({}, finish_reason))
        if usage is not None:
            await response.write(b"data: " + json.dumps({
                "id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": usage,
            }).encode() + b"\n\n")
        stamp(timing, "done")
        stamp(timing, "outcome", "done")  # before the peer can have [DONE] (and read /_timings)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.stats["completions_finished"] += 1
        return response

    async def _cut(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Drop the connection mid-body: no finish_reason, no usage, no [DONE], no final chunk."""
        transport = request.transport
        for _ in range(100):  # let what was written reach the socket first (at most ~0.1 s)
            if transport is None or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        self.stats["aborted"] += 1
        _abort(request)
        return _Aborted()


class _Aborted(web.StreamResponse):
    """Returned after the connection was aborted; aiohttp's attempt to finish it fails quietly."""


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def snapshot_of(model: str) -> str:
    """The snapshot that answers a request for `model`: an alias gets SNAPSHOT_DATE, as OpenAI
    answers gpt-4o-mini with gpt-4o-mini-2024-07-18; a dated name is answered as asked."""
    return model if _DATED.search(model) else f"{model}-{SNAPSHOT_DATE}"


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "offline"}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _parse_request(raw: bytes) -> dict[str, Any]:
    """Decode and validate a chat completions request body; raises BadRequest."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("We could not parse the JSON body of your request. (HINT: This likely means "
                         "you aren't using your HTTP library correctly.)") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of message objects.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRequest(f"Invalid value for 'messages[{i}].role'.", f"messages.[{i}].role")
        content = message.get("content")
        valid = (isinstance(content, str)
                 or (isinstance(content, list) and all(isinstance(p, dict) for p in content))
                 or (content is None and message["role"] == "assistant"))
        if not valid:
            raise BadRequest(f"Invalid type for 'messages[{i}].content'.", f"messages.[{i}].content")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"Invalid '{key}': expected an integer >= 1.", key)
    if not isinstance(body.get("stream", False), (bool, type(None))):
        raise BadRequest("Invalid type for 'stream': expected a boolean.", "stream")
    if not isinstance(body.get("stream_options") or {}, dict):
        raise BadRequest("Invalid type for 'stream_options': expected an object.", "stream_options")
    if body.get("n") not in (None, 1):
        raise BadRequest("The offline model only supports n=1.", "n")
    return body


# ---------------------------------------------------------------- CLI


async def _serve(model: OfflineModel, host: str, port: int) -> None:
    runner = web.AppRunner(model.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"offline model serving at http://{host}:{bound}/v1 (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve an offline OpenAI-compatible chat model.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--ttft-ms", type=float, default=None,
                        help="time to first token in ms (env OFFLINE_MODEL_TTFT_MS, default 300)")
    parser.add_argument("--tokens-per-second", type=float, default=None,
                        help="token rate, <= 0 for unpaced (env OFFLINE_MODEL_TOKENS_PER_SECOND, default 40)")
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: accept any)")
    args = parser.parse_args(argv)
    model = OfflineModel(ttft=None if args.ttft_ms is None else args.ttft_ms / 1000,
                         tokens_per_second=args.tokens_per_second, api_key=args.api_key)
    asyncio.run(_serve(model, args.host, args.port))


if __name__ == "__main__":
    main()
