"""The push port on API Gateway's Management API (boto3), and the endpoint an event came through."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from ..protocol import encode
from ..push import ConnectionGone, PushFailed


class ManagementApiPusher:
    """`Pusher` on boto3's apigatewaymanagementapi client (AWS, moto or the local emulator)."""

    def __init__(self, endpoint_url: str, client: Any | None = None, **client_args: Any) -> None:
        config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5)
        self.endpoint_url = endpoint_url
        self._client = client or boto3.client(
            "apigatewaymanagementapi", endpoint_url=endpoint_url, config=config, **client_args
        )

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=encode(frame))
        except ClientError as exc:
            # boto3 maps GoneException only when x-amzn-ErrorType says so; the status is the truth.
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 410 or exc.response.get("Error", {}).get("Code") == "GoneException":
                raise ConnectionGone(connection_id) from None
            raise PushFailed(f"{exc.response.get('Error', {}).get('Code')} ({status})") from exc


def endpoint_from_event(event: dict[str, Any], override: str | None = None) -> str:
    """The Management API endpoint of the API that sent `event`."""
    if override:
        return override.rstrip("/")
    context = event.get("requestContext", {})
    return f"https://{context['domainName']}/{context['stage']}"
