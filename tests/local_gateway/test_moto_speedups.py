"""moto_speedups change no answer: the same requests, with and without them, give the same
responses, errors, cancellation reasons and table contents (mock_aws, under the session's strict
emulation, which installs the speed-ups)."""

from __future__ import annotations

import random
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws

from local_gateway import moto_speedups

TABLES = {"pair": ("pk", "sk"), "single": ("pk", None)}


def _create(db: Any) -> None:
    for name, (hash_key, range_key) in TABLES.items():
        keys = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        attributes = [{"AttributeName": hash_key, "AttributeType": "S"}]
        if range_key:
            keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
            attributes.append({"AttributeName": range_key, "AttributeType": "S"})
        db.create_table(TableName=name, KeySchema=keys, AttributeDefinitions=attributes, BillingMode="PAY_PER_REQUEST")


def _key(table: str, n: int) -> dict[str, Any]:
    hash_key, range_key = TABLES[table]
    key = {hash_key: {"S": f"P{n % 3}" if range_key else f"K{n}"}}
    return key | ({range_key: {"S": f"S{n}"}} if range_key else {})


def _operation(rng: random.Random, table: str) -> dict[str, Any]:
    """One TransactItems entry on one of six items, conditioned or not, sometimes malformed."""
    key = _key(table, rng.randrange(6))
    kind = rng.choice(["Put", "Update", "Delete", "ConditionCheck"])
    body: dict[str, Any] = {"TableName": table}
    condition = rng.choice([None, "attribute_exists(n)", "attribute_not_exists(n)", "n < :limit"])
    values: dict[str, Any] = {}
    if kind == "Put":
        body["Item"] = key | {"n": {"N": str(rng.randrange(5))}, "text": {"S": "x" * rng.randrange(50)}}
    else:
        body["Key"] = key
    if kind == "Update":
        body["UpdateExpression"] = rng.choice(["ADD n :one", "SET text = :t", "REMOVE text", "SET n = n + :one"])
        values |= {":one": {"N": "1"}} if ":one" in body["UpdateExpression"] else {":t": {"S": "updated"}}
        if body["UpdateExpression"] == "REMOVE text":
            values = {}
    if kind == "ConditionCheck" and condition is None:
        condition = "attribute_exists(n)"
    if condition:
        body["ConditionExpression"] = condition
        if ":limit" in condition:
            values[":limit"] = {"N": "3"}
    if values:
        body["ExpressionAttributeValues"] = values
    return {kind: body}


def _outcome(call: Any, **kwargs: Any) -> Any:
    try:
        answer = call(**kwargs)
    except ClientError as exc:
        return ["error", exc.response["Error"]["Code"], [r.get("Code") for r in exc.response.get("CancellationReasons", [])]]
    answer.pop("ResponseMetadata", None)
    return answer


def _scenario(seed: int) -> list[Any]:
    """Random transactions and queries; every outcome, then every table's contents."""
    rng = random.Random(seed)
    with mock_aws():
        db = boto3.client("dynamodb", region_name="us-east-1")
        _create(db)
        seen: list[Any] = []
        for _ in range(40):
            table = rng.choice(list(TABLES))
            items = [_operation(rng, table) for _ in range(rng.randrange(1, 5))]
            seen.append(_outcome(db.transact_write_items, TransactItems=items))
            partition = f"P{rng.randrange(4)}"  # P3 never exists
            seen.append(_outcome(db.query, TableName="pair", KeyConditionExpression="pk = :p",
                                 ExpressionAttributeValues={":p": {"S": partition}}, ConsistentRead=True))
            seen.append(_outcome(db.query, TableName="pair", KeyConditionExpression="pk = :p AND sk > :s",
                                 ExpressionAttributeValues={":p": {"S": partition}, ":s": {"S": "S2"}},
                                 ScanIndexForward=False, Limit=2))
            seen.append(_outcome(db.query, TableName="single", KeyConditionExpression="pk = :p",
                                 ExpressionAttributeValues={":p": {"S": f"K{rng.randrange(6)}"}}))
        for table in TABLES:
            items = db.scan(TableName=table, ConsistentRead=True)["Items"]
            seen.append(sorted(items, key=lambda item: sorted((k, str(v)) for k, v in item.items())))
        return seen


def test_random_transactions_and_queries_answer_as_moto_does():
    assert moto_speedups.installed()  # by the session's strict emulation
    for seed in range(2):
        fast = _scenario(seed)
        with moto_speedups.off():
            slow = _scenario(seed)
        assert fast == slow
        # the scenario exercised what the speed-ups replace: commits, cancellations and rollbacks
        outcomes = [o for o in fast[:-2] if isinstance(o, list)]
        assert any(o[1] == "TransactionCanceledException" for o in outcomes)
        assert any(o[1] == "ValidationException" for o in outcomes) or seed  # a key twice, now and then


def test_a_cancelled_transaction_leaves_every_item_as_it_was():
    with mock_aws():
        db = boto3.client("dynamodb", region_name="us-east-1")
        _create(db)
        db.put_item(TableName="pair", Item=_key("pair", 0) | {"n": {"N": "1"}})
        items = [
            {"Update": {"TableName": "pair", "Key": _key("pair", 0), "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Put": {"TableName": "pair", "Item": _key("pair", 1) | {"n": {"N": "9"}}}},  # a new item
            {"Delete": {"TableName": "single", "Key": _key("single", 2)}},
            {"ConditionCheck": {"TableName": "pair", "Key": _key("pair", 4), "ConditionExpression": "attribute_exists(n)"}},
        ]
        assert _outcome(db.transact_write_items, TransactItems=items) == [
            "error", "TransactionCanceledException", ["None", "None", "None", "ConditionalCheckFailed"]]
        assert db.scan(TableName="pair")["Items"] == [_key("pair", 0) | {"n": {"N": "1"}}]
        assert db.scan(TableName="single")["Items"] == []
