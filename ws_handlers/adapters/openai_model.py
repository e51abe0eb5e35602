"""The model port (`model.ChatModel`) on the official `openai` client.

Only the reply function imports this module: connect and message handlers never load
`openai`, which keeps their cold starts short.
"""

from __future__ import annotations

import itertools
import json
import re
import ssl
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from . import lazy_types

lazy_types.install()  # before the SDK's first import (lazy_types.py says why)

import openai  # noqa: E402

from ..bot import Bot
from ..model import LLMError, Provenance, Usage
from .http_transport import transport_for

#: A provider's error code worth logging: a short identifier ("context_length_exceeded"), not prose.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _failed(code: str, exc: Exception) -> LLMError:
    """`exc` as an LLMError: its class, the provider's error code if it is an identifier, the
    HTTP status and the length of the response's body; never its message or the body itself."""
    error_type = type(exc).__name__
    provider_code = getattr(exc, "code", None)
    if isinstance(provider_code, str) and _ERROR_CODE.fullmatch(provider_code):
        error_type += f"/{provider_code}"
    body_bytes = None
    if isinstance(exc, openai.APIStatusError):
        try:
            body_bytes = len(exc.response.content)
        except Exception:  # a body that was never read
            pass
    return LLMError(code, error_type, getattr(exc, "status_code", None), body_bytes)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _chunks(pieces: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a chat completion's server-sent events, from the body's bytes as they
    arrive: `data:` lines, an event ending at a blank line (lines end with LF, CRLF or CR), comments
    and other fields skipped. Parsed from bytes, with no text decoding layer in between: this runs
    once per token. Reads to the end of the body past `[DONE]`, so the connection goes back to the
    client's pool rather than being closed unread."""
    pending = b""
    data: list[bytes] = []
    for piece in itertools.chain(pieces, (b"\n\n",)):
        lines = (pending + piece).splitlines(keepends=True)
        # a last line without its end (or ending in CR, which LF may follow) waits for the next piece
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for line in lines:
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif not line and data:
                payload = b"\n".join(data)
                data.clear()
                if payload.startswith(b"[DONE]"):
                    continue
                chunk = json.loads(payload)
                if isinstance(chunk, dict):
                    yield chunk


class OpenAIChatModel:
    """`ChatModel` on OpenAI or any OpenAI-compatible server (Ollama, vLLM, the offline model).

    The SDK retries 429 and 5xx with exponential backoff before the stream starts
    (`max_retries`); once text has flowed nothing is retried, since a retry would repeat
    tokens the participant has already seen.
    """

    def __init__(self, api_key: str, base_url: str | None, timeout: float, max_retries: int) -> None:
        self._options = {"api_key": api_key, "base_url": base_url, "timeout": timeout, "max_retries": max_retries}
        # Loading the CA certificates is most of a client's construction (~50 ms of CPU): one context,
        # the system's trust store (as httpx's default on Linux), shared by every thread's client.
        self._tls = ssl.create_default_context()
        self._local = threading.local()
        self._local.client = self._new_client()  # the building thread's (on Lambda, every invocation's)
        # OpenAI's own newer models only take max_completion_tokens; compatible servers know max_tokens.
        self._max_tokens_field = "max_completion_tokens" if base_url is None else "max_tokens"

    @property
    def _client(self) -> openai.OpenAI:
        """This thread's client, with a connection pool of its own. One client shared by the local
        stack's 200 reply threads spent a tenth of the stack's GIL time in httpx's pool: each request
        and each response's release scans every pooled connection (probing the idle ones' sockets)
        under one lock, and the pool keeps at most 100 idle connections for 200 streams. A reply
        thread streams one reply at a time: a pool of its own keeps its one connection, reused. On
        Lambda the handler runs on the thread that built the model: one client, as before."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        return client

    def _new_client(self) -> openai.OpenAI:
        transport = transport_for(self._tls)  # urllib3's connections (http_transport.py says why)
        http_client = openai.DefaultHttpxClient(verify=self._tls) if transport is None else \
            openai.DefaultHttpxClient(transport=transport)
        return openai.OpenAI(**self._options, http_client=http_client)

    def stream(self, bot: Bot, messages: list[dict[str, str]]) -> Iterator[str | Usage]:
        request: dict[str, Any] = {
            "model": bot.model,
            "messages": messages,
            "temperature": bot.temperature,
            self._max_tokens_field: bot.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = False
        finished = False
        usage: Usage | None = None
        served: dict[str, Any] = {}  #: the first chunk that names the model: its snapshot (provenance)
        text: list[str] = []
        try:
            # The SDK sends the request (its public `post`, as for any endpoint): auth, retries of 429/5xx
            # before the stream starts, timeouts and its error classes for a refused request. What it
            # skips: validating the request against its TypedDicts (~1.5 ms a request, growing with the
            # chat) and a pydantic object per chunk (~0.2 ms each, ~40 a reply); together most of a
            # reply's CPU (docs/benchmarks.md, "A classroom that starts at once"). The chunks are read
            # here as plain JSON from the stream's HTTP response.
            with self._client.post("/chat/completions", body=request, cast_to=object, stream=True,
                                   stream_cls=openai.Stream[object]) as stream:
                for chunk in _chunks(stream.response.iter_bytes()):
                    if chunk.get("error"):  # an error event mid-stream, raised as the SDK's iteration does
                        raise openai.APIError("An error occurred during streaming", stream.response.request,
                                              body=chunk["error"])
                    if not served and chunk.get("model"):
                        served = chunk
                    if counted := chunk.get("usage"):
                        usage = Usage(counted.get("prompt_tokens") or 0, counted.get("completion_tokens") or 0)
                    for choice in chunk.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            started = True
                            text.append(content)
                            yield content
                        if choice.get("finish_reason") is not None:
                            finished = True
        except openai.RateLimitError as exc:
            raise _failed("llm_rate_limited", exc) from None
        except openai.APITimeoutError as exc:
            raise _failed("reply_interrupted" if started else "llm_timeout", exc) from None
        except openai.APIConnectionError as exc:
            raise _failed("reply_interrupted" if started else "llm_unavailable", exc) from None
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code in (408, 409)
            raise _failed("llm_unavailable" if retryable else "llm_error", exc) from None
        except Exception as exc:  # OpenAIError, or the transport broke mid-stream (httpx errors are not OpenAIError)
            raise _failed("reply_interrupted" if started else "llm_unavailable", exc) from None
        if not finished:
            raise LLMError("reply_interrupted", "no_finish_reason")
        if usage is None:  # some compatible servers ignore include_usage
            prompt = sum(_estimate_tokens(m["content"]) for m in messages)
            usage = Usage(prompt, _estimate_tokens("".join(text)))
        yield Usage(usage.prompt_tokens, usage.completion_tokens,
                    Provenance.of_request(request, _name(served.get("model")), _name(served.get("system_fingerprint"))))


def _name(value: Any) -> str | None:
    """A provider's model or fingerprint name, if it sent a string (some compatible servers send
    null), at most 256 characters: it is stored with every reply."""
    return value[:256] if isinstance(value, str) else None
