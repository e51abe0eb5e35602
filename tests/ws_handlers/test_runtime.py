"""The functions' wiring: a rotated OpenAI key reaches warm containers; one model per container."""

from __future__ import annotations

import threading

import boto3
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws

from ws_handlers import runtime
from ws_handlers.config import Settings


def test_a_rotated_openai_key_is_picked_up_without_a_new_container():
    with mock_aws():
        secrets = boto3.client("secretsmanager")
        arn = secrets.create_secret(Name="openai-key", SecretString="sk-old")["ARN"]
        settings = Settings.from_env({"OPENAI_API_KEY_SECRET_ARN": arn, "TICKET_SECRET": "t" * 40})
        services = runtime.from_settings(settings)
        parameters.clear_caches()

        first = services.model()
        assert services.model() is first  # one client while the key stays the same
        assert first._client.api_key == "sk-old"

        secrets.put_secret_value(SecretId=arn, SecretString="sk-new")
        parameters.clear_caches()  # what the secret cache's max_age does after 5 minutes
        rotated = services.model()
        assert rotated is not first
        assert rotated._client.api_key == "sk-new"


def test_threads_asking_for_the_model_at_once_share_one():
    """The local stack's reply threads start together; each model loads the CA store (~60 ms)."""
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-local", "TICKET_SECRET": "t" * 40})
    services = runtime.from_settings(settings)
    barrier, got = threading.Barrier(8), []

    def ask() -> None:
        barrier.wait()
        got.append(services.model())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 8 and len({id(m) for m in got}) == 1
