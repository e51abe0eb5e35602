"""The model client's transport (urllib3 under the SDK's httpx interface), over real sockets on
127.0.0.1: TLS verified against the trust store, a model that is down, a proxy from the
environment, and connections reused only when their body was read to the end. Timeouts, cuts,
stalls and error statuses through it are in tests/ws_handlers/test_faults.py."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from local_gateway.offline_model import OfflineModel
from local_gateway.threaded import serve_in_thread
from ws_handlers.adapters import http_transport
from ws_handlers.adapters.openai_model import OpenAIChatModel
from ws_handlers.bot import Bot
from ws_handlers.model import LLMError, Usage

BOT = Bot(name="ada", model="gpt-4o-mini", system_prompt="Be brief.", max_tokens=12)
ASK = [{"role": "user", "content": "Hello?"}]


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in http_transport._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _text(model: OpenAIChatModel) -> str:
    *pieces, usage = model.stream(BOT, ASK)
    assert isinstance(usage, Usage)
    return "".join(pieces)


def _certificate(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA file naming 127.0.0.1, and the server's TLS context with it (self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offline model test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "model.pem", tmp / "model.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return cert_path, server


@pytest.fixture
def tls_model(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca, context = _certificate(tmp_path)
    with serve_in_thread(OfflineModel(ttft=0, tokens_per_second=0).app(), ssl_context=context) as served:
        yield served.url + "/v1", ca


def test_a_model_over_tls_is_verified_against_the_trust_store(tls_model, monkeypatch):
    url, ca = tls_model
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # how a lab adds its own CA to the trust store
    assert _text(OpenAIChatModel("test", url, timeout=10, max_retries=0))


def test_a_certificate_nobody_vouches_for_is_refused_as_unavailable(tls_model, monkeypatch, tmp_path):
    url, _ = tls_model
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-file.pem"))
    with pytest.raises(LLMError) as refused:
        _text(OpenAIChatModel("test", url, timeout=10, max_retries=0))
    assert refused.value.code == "llm_unavailable"


def test_a_model_that_is_down_is_unavailable_and_retryable():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LLMError) as down:
        _text(OpenAIChatModel("test", f"http://127.0.0.1:{port}/v1", timeout=5, max_retries=1))
    assert down.value.code == "llm_unavailable"


def test_a_proxy_in_the_environment_is_honoured(monkeypatch):
    """With HTTP_PROXY set, requests go to the proxy (here the offline model itself, which answers
    the absolute-form request a proxy receives), not to the host of the base URL."""
    with serve_in_thread(OfflineModel(ttft=0, tokens_per_second=0).app()) as served:
        monkeypatch.setenv("HTTP_PROXY", served.url)
        assert _text(OpenAIChatModel("test", "http://model.invalid/v1", timeout=10, max_retries=0))


def test_replies_one_after_another_reuse_one_connection_and_a_cut_one_is_not_reused():
    """A body read to its end leaves its connection for the next request; one left unread (the
    stream cut short) is closed, since its unread bytes would be taken for the next response."""
    peers: list[int] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])
        return await handler(request)

    model = OfflineModel(ttft=0, tokens_per_second=0)
    app = model.app()
    app.middlewares.append(record)
    with serve_in_thread(app) as served:
        client = OpenAIChatModel("test", served.url + "/v1", timeout=10, max_retries=0)
        for _ in range(3):
            assert _text(client)
        assert len(peers) == 3 and len(set(peers)) == 1
        replies = client.stream(BOT, ASK)
        next(replies)
        replies.close()  # the reply abandoned after its first token
        assert _text(client)
        assert len(peers) == 5 and peers[4] != peers[3]


def test_a_connection_the_server_dropped_while_idle_is_not_reused_and_the_reply_still_comes():
    """Providers close idle keep-alive connections without warning (the offline model's aiohttp
    would keep them 75 s): here the server closes each socket right after its response. The next
    reply opens a new connection, whether the pool sees the close first or meets it on the request
    (then the SDK's retry, as httpx's own transport does)."""
    peers: list[int] = []

    @web.middleware
    async def drop_after(request: web.Request, handler: Any) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])
        response = await handler(request)
        request.transport.close()  # after the response's bytes: a keep-alive socket closed while idle
        return response

    app = OfflineModel(ttft=0, tokens_per_second=0).app()
    app.middlewares.append(drop_after)
    with serve_in_thread(app) as served:
        client = OpenAIChatModel("test", served.url + "/v1", timeout=10, max_retries=1)
        assert _text(client) and _text(client) and _text(client)
    assert len(set(peers)) == 3
