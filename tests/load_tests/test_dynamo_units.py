"""The cost meter prices DynamoDB calls by DynamoDB's on-demand rules, on the template's tables."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from load_tests.dynamo_units import Meter, Table, item_bytes, rru, wru
from local_gateway.template import create_tables, load


@pytest.fixture
def db():
    """The template's tables on moto; a client the meter counts, and the meter."""
    template = load()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_tables(client, template)
        tables = {kw["TableName"]: Table.from_create_table(kw) for kw in template.tables.values()}
        meter = Meter(tables, peek=boto3.client("dynamodb", region_name="us-east-1"))
        meter.attach(client)
        yield client, meter


def item(pk: str, sk: str, size: int, **extra: dict) -> dict:
    """An item of exactly `size` bytes (as DynamoDB counts them)."""
    base = {"pk": {"S": pk}, "sk": {"S": sk}, "pad": {"S": ""}} | extra
    base["pad"] = {"S": "x" * (size - item_bytes(base))}
    assert item_bytes(base) == size
    return base


def last(meter: Meter) -> tuple[float, float, float]:
    r = meter.requests[-1]
    return r.rru, r.wru, r.index_wru


def test_item_sizes_follow_dynamodb():
    assert item_bytes({"pk": {"S": "ab"}}) == 4
    assert item_bytes({"n": {"N": "123"}}) == 1 + 3  # 2 bytes for 3 digits, plus 1
    assert item_bytes({"n": {"N": "-0.0012500"}}) == 1 + 3  # the significant digits: "125"
    assert item_bytes({"b": {"BOOL": True}, "z": {"NULL": True}}) == 4
    assert item_bytes({"l": {"L": [{"S": "x"}]}, "m": {"M": {"k": {"S": "v"}}}}) == (1 + 3 + 2) + (1 + 3 + 3)
    assert item_bytes({"t": {"S": "é"}}) == 1 + 2  # UTF-8
    assert wru(1024) == 1 and wru(1025) == 2 and rru(4096) == 1 and rru(0) == 1


def test_writes_cost_per_started_kb_and_a_transaction_doubles(db):
    client, meter = db
    client.put_item(TableName="ChatsTable", Item=item("A", "1", 1500))
    assert last(meter) == (0, 2, 0)
    client.update_item(TableName="ChatsTable", Key={"pk": {"S": "A"}, "sk": {"S": "1"}},
                       UpdateExpression="SET grown = :g", ExpressionAttributeValues={":g": {"S": "x" * 600}})
    assert last(meter) == (0, 3, 0)  # the larger of before and after: 2,1xx bytes
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": "ChatsTable", "Item": item("B", "1", 500)}},
        {"Delete": {"TableName": "ChatsTable", "Key": {"pk": {"S": "A"}, "sk": {"S": "1"}}}},
    ])
    assert last(meter) == (0, 2 * 1 + 2 * 3, 0)


def test_a_failed_condition_still_costs_the_item_and_writes_no_index(db):
    client, meter = db
    client.put_item(TableName="ChatsTable", Item=item("A", "1", 1500, gsi1pk={"S": "E"}, gsi1sk={"S": "s"}))
    assert last(meter) == (0, 2, 2)  # the item carries the index's keys: a copy in the index
    with pytest.raises(ClientError):
        client.update_item(TableName="ChatsTable", Key={"pk": {"S": "A"}, "sk": {"S": "1"}},
                           UpdateExpression="SET c = :c", ConditionExpression="attribute_not_exists(pk)",
                           ExpressionAttributeValues={":c": {"S": "x"}})
    assert last(meter) == (0, 2, 0)


def test_the_index_is_written_only_when_its_copy_changes(db):
    client, meter = db
    indexed = {"gsi1pk": {"S": "E"}, "gsi1sk": {"S": "s"}}
    client.put_item(TableName="ChatsTable", Item=item("A", "1", 500, c={"S": "a"}, **indexed))
    key = {"pk": {"S": "A"}, "sk": {"S": "1"}}
    set_c = {"UpdateExpression": "SET c = :c", "TableName": "ChatsTable", "Key": key}
    client.update_item(**set_c, ExpressionAttributeValues={":c": {"S": "b"}})
    assert last(meter) == (0, 1, 1)
    client.update_item(**set_c, ExpressionAttributeValues={":c": {"S": "b"}})  # the same value again
    assert last(meter) == (0, 1, 0)
    client.update_item(TableName="ChatsTable", Key=key, UpdateExpression="SET gsi1sk = :s",
                       ExpressionAttributeValues={":s": {"S": "t"}})
    assert last(meter) == (0, 1, 2)  # the index entry moves: a delete and a put
    client.put_item(TableName="ChatsTable", Item=item("B", "1", 500))
    assert last(meter) == (0, 1, 0)  # no index keys: not in the index


def test_reads_cost_per_started_4_kb_of_whole_items(db):
    client, meter = db
    for n in range(3):
        client.put_item(TableName="ChatsTable", Item=item("A", str(n), 1500))
    client.get_item(TableName="ChatsTable", Key={"pk": {"S": "A"}, "sk": {"S": "9"}}, ConsistentRead=True)
    assert last(meter) == (1, 0, 0)  # a missing item costs a read too
    client.get_item(TableName="ChatsTable", Key={"pk": {"S": "A"}, "sk": {"S": "0"}}, ProjectionExpression="pk")
    assert last(meter) == (0.5, 0, 0)  # eventually consistent: half; projected: priced whole
    client.query(TableName="ChatsTable", KeyConditionExpression="pk = :p",
                 ExpressionAttributeValues={":p": {"S": "A"}}, ConsistentRead=True)
    assert last(meter) == (2, 0, 0)  # 4,500 bytes in all
    keys = [{"pk": {"S": "A"}, "sk": {"S": s}} for s in ("0", "1", "9")]
    client.batch_get_item(RequestItems={"ChatsTable": {"Keys": keys, "ConsistentRead": True}})
    assert last(meter) == (3, 0, 0)  # each item on its own


def test_an_operation_without_a_rule_is_refused_not_priced_as_free(db):
    client, meter = db
    with pytest.raises(NotImplementedError, match="Scan"):
        client.scan(TableName="ChatsTable")
    assert meter.requests == []


def test_calls_are_labelled_by_action_and_outermost_method(db):
    client, meter = db
    meter.action = "send 1"
    with meter.method("append_user_message"), meter.method("get_chat"):
        client.get_item(TableName="ChatsTable", Key={"pk": {"S": "A"}, "sk": {"S": "1"}}, ConsistentRead=True)
    r = meter.requests[-1]
    assert (r.action, r.method, r.operation) == ("send 1", "append_user_message", "GetItem")
