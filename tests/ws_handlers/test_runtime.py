"""The functions' wiring: a rotated OpenAI key reaches warm containers."""

from __future__ import annotations

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
