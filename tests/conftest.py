"""Shared fixtures: moto's AWS in process, the offline model on loopback, dummy credentials."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.core.config import default_user_config

from local_gateway.offline_model import OfflineModel
from local_gateway.strict_dynamodb import StrictDynamoDB, Strictness, install
from local_gateway.template import Template, create_tables, load
from local_gateway.threaded import serve_in_thread
from waiting import Hold


# moto replaces boto3's default session on every mock_aws(), and each new session parses the
# services' JSON models again (most of a second per client on a busy machine, several clients per
# test). The session's clients all go through moto's hook whatever session made them.
default_user_config["core"]["reset_boto3_session"] = False


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach real AWS: dummy keys and a fixed region for every boto3 client."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "LLMChatTests")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session", autouse=True)
def _strict_moto_dynamodb() -> Iterator[StrictDynamoDB]:
    """Hold moto's DynamoDB to DynamoDB's behaviour under concurrency, for the whole session.

    moto runs requests one after another and never cancels a transaction, so concurrency bugs
    would pass here and fail on AWS. The emulation (local_gateway/strict_dynamodb.py) keeps
    moto serialised (it is not thread-safe) but makes overlapping transactions and writes
    conflict as DynamoDB's do. Throttling stays off unless a test asks through `strict_dynamodb`.
    """
    emulation = install(Strictness())
    yield emulation
    emulation.uninstall()


@pytest.fixture
def strict_dynamodb(_strict_moto_dynamodb: StrictDynamoDB) -> Iterator[StrictDynamoDB]:
    """The session's emulation with its counters at zero; what a test configures is undone after it."""
    before = _strict_moto_dynamodb.strictness
    _strict_moto_dynamodb.reset()
    yield _strict_moto_dynamodb
    _strict_moto_dynamodb.configure(before)


@pytest.fixture(scope="session")
def service_template() -> Template:
    """template.yaml as the local stack reads it, read once (parsing it takes a good part of a second)."""
    return load()


@pytest.fixture(scope="session")
def dynamodb_tables(service_template: Template) -> Callable[..., None]:
    """dynamodb_tables(client, connections="conns", chats="chats"): template.yaml's DynamoDB tables,
    created on `client` (moto) under a test's names, as the local stack creates them."""

    def create(client: Any, connections: str = "conns", chats: str = "chats") -> None:
        create_tables(client, service_template, {"ConnectionsTable": connections, "ChatsTable": chats})

    return create


@pytest.fixture(scope="module")
def moto_url():
    """moto's server on loopback (DynamoDB, CloudFormation ... over HTTP), shared by a module's tests."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="session")
def offline_model():
    """A fast offline model shared by the session; tests queue faults on it, and end the stalls
    and delays of Hold.SECONDS they queue with `model.hold.release()`."""
    hold = Hold()
    model = OfflineModel(ttft=0, tokens_per_second=0, sleep=hold.sleep)
    model.hold = hold
    with serve_in_thread(model.app()) as served:
        model.url = served.url
        yield model


@pytest.fixture
def model(offline_model: OfflineModel):
    offline_model.faults.clear()
    offline_model.reset_stats()
    offline_model.hold.close()
    yield offline_model
    offline_model.faults.clear()
    offline_model.hold.release()  # nothing a test left held outlives it


CHROMIUM = Path("/usr/bin/chromium")  #: Debian's, installed by `make chromium`
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright (only its driver: no browser download here).

    launch() gives Chromium a fresh temporary user-data-dir of its own, removed on close.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make chromium`")
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True, timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def readme_screenshot(tmp_path):
    """Take a screenshot for docs/images/NAME, written only when it is missing or
    UPDATE_SCREENSHOT is set, so other machines' fonts do not dirty the tree."""

    def take(page, name: str) -> Path:
        shot = tmp_path / name
        page.screenshot(path=str(shot), animations="disabled", caret="hide")
        target = Path(__file__).resolve().parent.parent / "docs" / "images" / name
        if os.environ.get("UPDATE_SCREENSHOT") or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
        return shot

    return take
