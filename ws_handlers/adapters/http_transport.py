"""The model client's HTTP transport: the `openai` SDK's httpx interface on urllib3's connections.

Why: a streamed reply arrives as one HTTP chunk per token, and the SDK's default transport
(httpcore and h11, pure Python) runs a long path for each one, on caches gone cold since the last
token. urllib3 reads chunked bodies through the standard library's buffered socket file
(`http.client`), in C for the most part: the model adapter's CPU per 40-token reply went from
13.7-16.1 to 11.4-11.7 ms on this project's 2-core machine (`python -m load_tests.model_client`;
docs/benchmarks.md, "Phase 3"), and the same code runs in Lambda at a third of a vCPU. httpx
documents custom transports for this purpose, and urllib3 is already a dependency of botocore
(the dependency layer ships urllib3 2, see below).

What the SDK keeps: the request (auth, headers, body), its retries and their backoff, the status
handling and its error classes. For those the transport raises httpx's own exceptions (a timeout
as `TimeoutException`, anything else as a `TransportError`), as the default transport does.

Not supported, and therefore left to httpx's own transport (`transport_for` returns None): proxies
from the environment (`HTTPS_PROXY` and the like, which the default client honours), and urllib3
before 2 (which cannot verify a certificate issued to an IP address with a shared context). The
dependency layer ships urllib3 2 (ws_handlers/requirements.txt), ahead of the runtime's own.
"""

from __future__ import annotations

import importlib
import os
import ssl
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import openai
import urllib3

#: The httpx the installed SDK is built on (`httpx`, or `httpx2` for the newer SDKs).
httpx: ModuleType = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])

_URLLIB3_MAJOR = int(urllib3.__version__.partition(".")[0])
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def _read_error(exc: Exception) -> Exception:
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return httpx.ReadTimeout(str(exc))
    return httpx.ReadError(str(exc))


class _Body(httpx.SyncByteStream):  # type: ignore[misc, name-defined]
    """A response body, as it arrives (one piece per HTTP chunk). Closing it returns the connection
    to the pool only if the body was read to its end; otherwise the connection is closed, since
    unread bytes would be taken for the next response."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        try:
            pieces = response.read_chunked(decode_content=False) if response.chunked else \
                response.stream(65536, decode_content=False)
            yield from pieces
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _read_error(exc) from exc
        self._finished = True

    def close(self) -> None:
        if not self._finished:
            self._response.close()
        self._response.release_conn()


class Urllib3Transport(httpx.BaseTransport):  # type: ignore[misc, name-defined]
    """httpx's transport interface on one urllib3 pool manager (no retries, no redirects: the SDK
    decides both)."""

    def __init__(self, ssl_context: ssl.SSLContext, connections: int = 1) -> None:
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=connections, ssl_context=ssl_context, retries=False)

    def handle_request(self, request: Any) -> Any:
        timeouts = request.extensions.get("timeout") or {}
        timeout = urllib3.Timeout(connect=timeouts.get("connect"), read=timeouts.get("read"))
        headers = urllib3.HTTPHeaderDict()
        for name, value in request.headers.raw:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        try:
            response = self._pool.urlopen(request.method, str(request.url), body=request.read(), headers=headers,
                                          retries=False, redirect=False, assert_same_host=False,
                                          preload_content=False, decode_content=False, timeout=timeout)
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.SSLError) as exc:  # (the first
            raise httpx.ConnectError(str(exc)) from exc  # is a ConnectTimeoutError to urllib3: caught before)
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc)) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:  # the response's head took too long
            raise httpx.ReadTimeout(str(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        return httpx.Response(response.status, headers=list(response.headers.items()), stream=_Body(response),
                              extensions={"http_version": b"HTTP/1.1"})

    def close(self) -> None:
        self._pool.clear()


def transport_for(ssl_context: ssl.SSLContext) -> Urllib3Transport | None:
    """The transport for a new model client, or None (httpx's own) if the environment names a proxy."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES) or _URLLIB3_MAJOR < 2:
        return None
    return Urllib3Transport(ssl_context)
