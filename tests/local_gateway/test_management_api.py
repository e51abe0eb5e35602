"""The Management API emulator, driven by an unmodified boto3 apigatewaymanagementapi client."""

from __future__ import annotations

import itertools
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local_gateway.management_api import MAX_DATA, RecordingRegistry, management_app
from local_gateway.threaded import serve_in_thread

# API Gateway ids are base64-like: "=" padding, and "/" "+" which boto3 percent-encodes.
IDS = ["L0SM9cOFvHcCIhw=", "a/b+c==", "/+/=", "with space", "ünï/cödé", "..", "%2F"]
_counter = itertools.count()


def _client(url: str):
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, connect_timeout=60, read_timeout=60),
    )


@pytest.fixture(scope="module")
def registry() -> RecordingRegistry:
    return RecordingRegistry()


@pytest.fixture(scope="module")
def served(registry):
    with serve_in_thread(management_app(registry, stage="local")) as served:
        yield served


@pytest.fixture(scope="module")
def client(served):
    return _client(f"{served.url}/local")


@pytest.fixture
def cid(registry) -> str:
    """A fresh open connection whose id needs URL-encoding."""
    connection_id = f"Ab/+{next(_counter)}cIhw="
    registry.open(connection_id)
    return connection_id


def _status(exc: pytest.ExceptionInfo) -> int:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.mark.parametrize("connection_id", IDS)
def test_post_is_delivered_and_recorded(client, registry, connection_id):
    registry.open(connection_id)
    response = client.post_to_connection(ConnectionId=connection_id, Data=b'{"type":"delta"}')
    client.post_to_connection(ConnectionId=connection_id, Data="second, as str")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ResponseMetadata"]["RequestId"]
    assert registry.posts(connection_id) == [b'{"type":"delta"}', b"second, as str"]


def test_ids_sharing_a_decoded_prefix_stay_apart(client, registry):
    registry.open("x/y")
    registry.open("x")
    client.post_to_connection(ConnectionId="x/y", Data=b"1")
    assert registry.posts("x/y") == [b"1"] and registry.posts("x") == []


def test_post_to_unknown_connection_is_gone(client):
    with pytest.raises(client.exceptions.GoneException) as exc:
        client.post_to_connection(ConnectionId="never-opened=", Data=b"x")
    assert _status(exc) == 410
    assert exc.value.response["Error"]["Code"] == "GoneException"


def test_gone_connection_answers_410_everywhere(client, registry, cid):
    client.post_to_connection(ConnectionId=cid, Data=b"before")
    registry.mark_gone(cid)
    with pytest.raises(client.exceptions.GoneException) as exc:
        client.post_to_connection(ConnectionId=cid, Data=b"after")
    assert _status(exc) == 410
    with pytest.raises(client.exceptions.GoneException):
        client.get_connection(ConnectionId=cid)
    with pytest.raises(client.exceptions.GoneException):
        client.delete_connection(ConnectionId=cid)
    assert registry.posts(cid) == [b"before"]


def test_exactly_128_kib_is_accepted(client, registry, cid):
    client.post_to_connection(ConnectionId=cid, Data=b"a" * MAX_DATA)
    assert registry.posts(cid) == [b"a" * 131072]


# 2 MiB also exceeds aiohttp's own body cap (client_max_size, 1 MiB).
@pytest.mark.parametrize("size", [MAX_DATA + 1, 2 * 1024 * 1024])
def test_larger_data_is_payload_too_large(client, registry, cid, size):
    with pytest.raises(client.exceptions.PayloadTooLargeException) as exc:
        client.post_to_connection(ConnectionId=cid, Data=b"a" * size)
    assert _status(exc) == 413
    assert registry.posts(cid) == []
    client.post_to_connection(ConnectionId=cid, Data=b"still usable")  # the connection is unharmed


def test_get_connection_parses(client, registry):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    registry.open("L0SM9cOFvHcCIhw=", source_ip="203.0.113.7", user_agent="Mozilla/5.0 (X11)")
    client.post_to_connection(ConnectionId="L0SM9cOFvHcCIhw=", Data=b"x")
    info = client.get_connection(ConnectionId="L0SM9cOFvHcCIhw=")
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert info["Identity"] == {"SourceIp": "203.0.113.7", "UserAgent": "Mozilla/5.0 (X11)"}
    assert before <= info["ConnectedAt"] <= info["LastActiveAt"] <= after  # tz-aware datetimes


def test_get_connection_accepts_iso_strings_and_naive_datetimes():
    class Fixed:
        async def send(self, connection_id: str, data: bytes) -> bool:
            return False

        def describe(self, connection_id: str) -> dict | None:
            return {
                "connectedAt": "2024-05-01T10:00:00.000Z",
                "lastActiveAt": datetime(2024, 5, 1, 10, 5),  # naive: taken as UTC
                "identity": {"sourceIp": "10.0.0.1", "userAgent": "ua"},
            }

        async def close(self, connection_id: str) -> bool:
            return False

    with serve_in_thread(management_app(Fixed(), stage="prod")) as served:
        info = _client(f"{served.url}/prod").get_connection(ConnectionId="any")
    assert info["ConnectedAt"] == datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
    assert info["LastActiveAt"] == datetime(2024, 5, 1, 10, 5, tzinfo=timezone.utc)


def test_delete_closes_then_gone(client, registry, cid):
    client.post_to_connection(ConnectionId=cid, Data=b"bye")
    response = client.delete_connection(ConnectionId=cid)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert not registry.is_open(cid)
    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId=cid, Data=b"late")
    with pytest.raises(client.exceptions.GoneException) as exc:
        client.delete_connection(ConnectionId=cid)
    assert _status(exc) == 410
    assert registry.posts(cid) == [b"bye"]


@pytest.mark.parametrize("path", ["/prod", "", "/loca"])
def test_wrong_stage_is_forbidden(served, registry, cid, path):
    client = _client(f"{served.url}{path}")
    with pytest.raises(ClientError) as exc:
        client.post_to_connection(ConnectionId=cid, Data=b"x")
    assert _status(exc) == 403
    assert isinstance(exc.value, client.exceptions.ForbiddenException)
    assert exc.value.response["Error"]["Message"] == "Forbidden"
    with pytest.raises(client.exceptions.ForbiddenException):
        client.get_connection(ConnectionId=cid)
    assert registry.posts(cid) == []


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/local/other/x", 404),
        ("GET", "/local/@connections/", 404),
        ("POST", "/local/@connections/a/b", 404),  # an unencoded "/" is not an id
        ("PUT", "/local/@connections/abc", 405),
        ("GET", "/prod/@connections/abc", 403),
    ],
)
def test_other_requests(served, method, path, status):
    body = b"x" if method in ("POST", "PUT") else None
    request = urllib.request.Request(served.url + path, data=body, method=method)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=60)
    assert exc.value.code == status


def test_concurrent_posts_from_threads(client, registry, cid):
    def post(worker: int) -> None:
        for i in range(20):
            client.post_to_connection(ConnectionId=cid, Data=f"{worker}:{i}".encode())

    threads = [threading.Thread(target=post, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    posts = registry.posts(cid)
    assert sorted(posts) == sorted(f"{w}:{i}".encode() for w in range(4) for i in range(20))
    for w in range(4):  # each sender's frames arrive in its own order
        mine = [p for p in posts if p.startswith(f"{w}:".encode())]
        assert mine == [f"{w}:{i}".encode() for i in range(20)]
