"""Shared fixtures: moto's AWS in process, the offline model on loopback, dummy credentials."""

from __future__ import annotations

import secrets

import pytest

from local_gateway.offline_model import OfflineModel
from local_gateway.threaded import serve_in_thread


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach real AWS: dummy keys and a fixed region for every boto3 client."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "LLMChatTests")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="session")
def offline_model():
    """A fast offline model shared by the session; tests queue faults on it."""
    model = OfflineModel(ttft=0, tokens_per_second=0)
    with serve_in_thread(model.app()) as served:
        model.url = served.url
        yield model


@pytest.fixture
def model(offline_model: OfflineModel):
    offline_model.faults.clear()
    offline_model.reset_stats()
    yield offline_model
    offline_model.faults.clear()
