from __future__ import annotations

import collections
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

sys.path.insert(0, str(Path(__file__).parent))

from harness import Harness  # noqa: E402

from local_gateway.management_api import RecordingRegistry, management_app  # noqa: E402
from local_gateway.threaded import serve_in_thread  # noqa: E402
from ws_handlers import observability  # noqa: E402
from ws_handlers.adapters.dynamodb import DynamoStore  # noqa: E402
from ws_handlers.adapters.sqlite import SqliteStore  # noqa: E402


@pytest.fixture(params=["dynamodb", "sqlite"])
def store(request, tmp_path, dynamodb_tables):
    """Each store adapter in turn, empty: DynamoStore on moto (through the strict emulation), SqliteStore
    on a file; the contract tests run every test on both."""
    if request.param == "dynamodb":
        with mock_aws():
            client = boto3.client("dynamodb")
            dynamodb_tables(client, "conns", "chats")
            yield DynamoStore("conns", "chats", client=client)
    else:
        sqlite = SqliteStore(tmp_path / "store.sqlite3")
        yield sqlite
        sqlite.close()


@pytest.fixture
def make_harness(secret, model, dynamodb_tables):
    """Build a harness on moto with extra settings: make_harness(MAX_CHATS_PER_PARTICIPANT="1")."""
    made: list[Harness] = []
    with mock_aws():

        def make(**env: str) -> Harness:
            h = Harness(secret, model.url, env, tables=dynamodb_tables)
            made.append(h)
            return h

        yield make
        for h in made:
            h.close()


@pytest.fixture
def harness(make_harness) -> Harness:
    return make_harness()


@pytest.fixture
def emulated(secret, model, dynamodb_tables):
    """A harness whose Management API is the local emulator, which can answer 410 Gone."""
    registry = RecordingRegistry()
    faults: collections.deque[int] = collections.deque()
    with mock_aws(), serve_in_thread(management_app(registry, "test", faults)) as served:
        h = Harness(secret, model.url, {"WEBSOCKET_ENDPOINT": f"{served.url}/test"}, registry=registry,
                    tables=dynamodb_tables)
        h.push_faults = faults  # statuses the next pushes get instead of delivery
        yield h
        h.close()


@pytest.fixture
def logs(caplog) -> Iterator[io.StringIO]:
    """Everything logged: the service's Powertools logger at DEBUG, through its own formatter
    (so appended keys and exception fields are rendered as on CloudWatch), and every other
    logger (openai, httpx, botocore) at INFO through caplog."""
    service = logging.getLogger(observability.SERVICE)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(observability.logger.registered_formatter)
    level = service.level
    service.addHandler(handler)
    service.setLevel(logging.DEBUG)
    caplog.set_level(logging.INFO)
    try:
        yield stream
    finally:
        service.removeHandler(handler)
        service.setLevel(level)
