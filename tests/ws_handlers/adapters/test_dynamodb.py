"""What is DynamoStore's own, beside the contract both stores keep: items earlier versions wrote."""

from __future__ import annotations

import boto3
from moto import mock_aws

from ws_handlers import breaker
from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.store import BreakerState

NOW = 1_800_000_000.0


def test_a_breaker_item_written_by_the_earlier_code_goes_on_counting(dynamodb_tables):
    """The earlier code counted with ADD and if_not_exists, and wrote open_until only on opening:
    after a deploy, the first failures are counted on top of that item."""
    with mock_aws():
        client = boto3.client("dynamodb")
        dynamodb_tables(client, "conns", "chats")
        store = DynamoStore("conns", "chats", client=client)
        client.put_item(TableName="chats", Item={
            "pk": {"S": "SERVICE"}, "sk": {"S": "LLM"}, "failures": {"N": "1"}, "window_start": {"N": str(NOW + 0.1)},
        })
        assert store.read_breaker() == BreakerState(failures=1, window_start=NOW + 0.1)
        assert not breaker.record_failure(store, NOW + 1, 3, 30, 20)
        assert breaker.record_failure(store, NOW + 2, 3, 30, 20)
        assert store.read_breaker() == BreakerState(failures=0, window_start=NOW + 2, open_until=NOW + 22)
