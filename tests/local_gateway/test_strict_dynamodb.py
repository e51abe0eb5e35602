"""The strict DynamoDB emulation (local_gateway/strict_dynamodb.py), through real boto3 clients.

Each test runs on moto in process (mock_aws) and on moto's server on loopback (what the local
stack's `--store dynamodb` runs), which share one patched handler. Overlaps are made certain
with `holding()`, which keeps transactions in flight until the test lets them go, and the
tests assert on the emulation's counters instead of timing anything.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from local_gateway import strict_dynamodb
from local_gateway.stack import StackConfig, running
from local_gateway.strict_dynamodb import StrictDynamoDB, Strictness, Throttle

TABLE = "items"
STANDARD = Config(retries={"mode": "standard", "max_attempts": 3})
ONCE = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture(params=["mock_aws", "server"])
def connect(request) -> Iterator[Callable[[Config], Any]]:
    """Make DynamoDB clients (with a retry config) on one backend; the table exists."""
    if request.param == "mock_aws":
        with mock_aws():
            yield _with_table(lambda config: boto3.client("dynamodb", config=config))
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield _with_table(lambda config: boto3.client("dynamodb", endpoint_url=endpoint, config=config))
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        server.stop()


def _with_table(make: Callable[[Config], Any]) -> Callable[[Config], Any]:
    make(STANDARD).create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return make


@pytest.fixture
def ddb(connect) -> Any:
    return connect(STANDARD)


@pytest.fixture
def strict(strict_dynamodb: StrictDynamoDB) -> StrictDynamoDB:
    strict_dynamodb.configure(Strictness(hold_seconds=0))  # holding() makes the overlaps
    return strict_dynamodb


def key(name: str) -> dict[str, Any]:
    return {"pk": {"S": "P"}, "sk": {"S": name}}


def put(name: str) -> dict[str, Any]:
    return {"Put": {"TableName": TABLE, "Item": key(name) | {"v": {"S": name}}}}


def add(name: str, n: int = 1) -> dict[str, Any]:
    return {"Update": {"TableName": TABLE, "Key": key(name), "UpdateExpression": "ADD n :n",
                       "ExpressionAttributeValues": {":n": {"N": str(n)}}}}


def count(ddb: Any, name: str) -> int:
    item = ddb.get_item(TableName=TABLE, Key=key(name), ConsistentRead=True).get("Item")
    return int(item["n"]["N"]) if item else 0


def run_together(*calls: Callable[[], Any]) -> tuple[list[threading.Thread], list[Any]]:
    """Run the calls on threads released at once by a barrier; each one's result or exception."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, results


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def code(result: Any) -> str:
    """"ok", a DynamoDB error code, or what else was raised."""
    if isinstance(result, ClientError):
        return result.response["Error"]["Code"]
    return repr(result) if isinstance(result, Exception) else "ok"


def reasons(result: ClientError) -> list[str]:
    return [r["Code"] for r in result.response["CancellationReasons"]]


# -- conflicts ---------------------------------------------------------------------------------
def test_overlapping_transactions_one_commits_and_the_other_is_cancelled_at_the_shared_item(ddb, strict):
    first = [add("counter"), put("a")]  # the shared counter at index 0 here, at index 1 there
    second = [put("b"), add("counter")]
    with strict.holding():
        threads, results = run_together(
            lambda: ddb.transact_write_items(TransactItems=first),
            lambda: ddb.transact_write_items(TransactItems=second),
        )
        assert strict.wait_for(lambda c: c.held == 1 and c.transaction_conflicts == 1)
    join(threads)
    assert sorted(map(code, results)) == ["TransactionCanceledException", "ok"]
    loser = next(r for r in results if isinstance(r, ClientError))
    expected = ["TransactionConflict", "None"] if results[0] is loser else ["None", "TransactionConflict"]
    assert reasons(loser) == expected
    assert loser.response["ResponseMetadata"]["RetryAttempts"] == 0  # botocore does not retry it
    assert count(ddb, "counter") == 1
    assert strict.counters.transaction_conflicts == 1


def test_transactions_on_different_items_commit_while_both_are_in_flight(ddb, strict):
    with strict.holding():
        threads, results = run_together(
            lambda: ddb.transact_write_items(TransactItems=[add("x"), put("a")]),
            lambda: ddb.transact_write_items(TransactItems=[add("y"), put("b")]),
        )
        assert strict.wait_for(lambda c: c.held == 2)  # both in flight at once, neither cancelled
    join(threads)
    assert list(map(code, results)) == ["ok", "ok"]
    assert (count(ddb, "x"), count(ddb, "y"), strict.counters.transaction_conflicts) == (1, 1, 0)


def test_a_write_meeting_a_transaction_in_flight_gets_transaction_conflict(connect, strict):
    ddb = connect(STANDARD)
    wire: dict[str, Any] = {}  # what the refused PutItem got on the wire
    ddb.meta.events.register("after-call.dynamodb.PutItem", lambda http_response, **_: wire or wire.update(
        status=http_response.status_code, type=http_response.headers.get("x-amzn-ErrorType"),
        body=http_response.content))
    with strict.holding():
        threads, results = run_together(lambda: ddb.transact_write_items(TransactItems=[add("counter"), put("a")]))
        assert strict.wait_for(lambda c: c.held == 1)
        with pytest.raises(ClientError) as refused:
            ddb.put_item(TableName=TABLE, Item=key("counter"))
        ddb.put_item(TableName=TABLE, Item=key("elsewhere"))  # other items are free
    join(threads)
    error = refused.value.response
    assert error["Error"]["Code"] == "TransactionConflictException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["ResponseMetadata"]["RetryAttempts"] == 0  # standard mode does not retry it
    assert wire["status"] == 400 and wire["type"] == "TransactionConflictException"
    assert b'"__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException"' in wire["body"]
    assert code(results[0]) == "ok" and count(ddb, "counter") == 1
    assert strict.counters.write_conflicts == 1


def test_a_transaction_meeting_a_write_in_flight_is_cancelled(ddb, strict):
    with strict.holding(writes=True):
        threads, results = run_together(lambda: ddb.put_item(TableName=TABLE, Item=key("a")))
        assert strict.wait_for(lambda c: c.held == 1)
        with pytest.raises(ClientError) as cancelled:
            ddb.transact_write_items(TransactItems=[add("counter"), put("a")])
        with pytest.raises(ClientError) as read:  # a transactional read meets it too
            ddb.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": key("a")}}])
    join(threads)
    assert reasons(cancelled.value) == ["None", "TransactionConflict"]
    assert reasons(read.value) == ["TransactionConflict"]
    assert count(ddb, "counter") == 0
    assert (strict.counters.transaction_conflicts, strict.counters.read_conflicts) == (1, 1)


def test_a_batch_write_leaves_the_items_of_a_transaction_in_flight_unprocessed(ddb, strict):
    with strict.holding():
        threads, results = run_together(lambda: ddb.transact_write_items(TransactItems=[put("a")]))
        assert strict.wait_for(lambda c: c.held == 1)
        mixed = ddb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": key(n)}} for n in ("a", "b")]})
        alone = ddb.batch_write_item(RequestItems={TABLE: [{"DeleteRequest": {"Key": key("a")}}]})
    join(threads)
    assert mixed["UnprocessedItems"] == {TABLE: [{"PutRequest": {"Item": key("a")}}]}
    assert alone["UnprocessedItems"] == {TABLE: [{"DeleteRequest": {"Key": key("a")}}]}
    assert ddb.get_item(TableName=TABLE, Key=key("a"))["Item"]["v"] == {"S": "a"}  # the transaction's
    assert "Item" in ddb.get_item(TableName=TABLE, Key=key("b"))
    assert strict.counters.batch_conflicts == 2


def test_plain_updates_from_many_threads_all_apply(ddb, strict):
    threads_n, rounds = 8, 20

    def bump() -> None:
        for _ in range(rounds):
            ddb.update_item(TableName=TABLE, Key=key("counter"), UpdateExpression="ADD n :one",
                            ExpressionAttributeValues={":one": {"N": "1"}})

    with strict.holding(writes=True):
        threads, results = run_together(*[bump] * threads_n)
        assert strict.wait_for(lambda c: c.held == threads_n)  # all first updates in flight at once
    join(threads)
    assert list(map(code, results)) == ["ok"] * threads_n
    assert count(ddb, "counter") == threads_n * rounds  # no lost update
    assert strict.counters.write_conflicts == 0


def test_many_threads_hammering_moto_see_no_errors(ddb, strict):
    """moto is not thread-safe: a transaction deep-copies its tables (for rollback) while other
    writes change them, which fails with "dictionary changed size during iteration" (and a
    rollback would undo those writes) unless moto's execution stays serialised."""
    for start in range(0, 200, 25):  # a table big enough for the copy to take a while
        ddb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": key(f"old-{i}")}} for i in range(start, start + 25)]})
    rounds = 20

    def transact(worker: int) -> Callable[[], None]:
        return lambda: [ddb.transact_write_items(TransactItems=[add(f"counter-{worker}")]) for _ in range(rounds)]

    def write(worker: int) -> Callable[[], None]:
        return lambda: [ddb.put_item(TableName=TABLE, Item=key(f"new-{worker}-{i}")) for i in range(rounds)]

    threads, results = run_together(*[transact(w) for w in range(4)], *[write(w) for w in range(4)])
    join(threads)
    assert list(map(code, results)) == ["ok"] * 8
    assert [count(ddb, f"counter-{w}") for w in range(4)] == [rounds] * 4
    assert ddb.scan(TableName=TABLE, Select="COUNT")["Count"] == 200 + 4 + 4 * rounds
    assert strict.counters.transaction_conflicts == 0


# -- capacity ---------------------------------------------------------------------------------
def test_throttled_requests_are_retried_by_botocore_as_on_aws(ddb, strict):
    ddb.put_item(TableName=TABLE, Item=key("a"))
    with strict.throttling(first=1, error="ThrottlingException"):
        got = ddb.get_item(TableName=TABLE, Key=key("a"))
    assert got["ResponseMetadata"]["RetryAttempts"] == 1 and got["Item"] == key("a")
    assert strict.counters.throttled_requests == 1


@pytest.mark.parametrize("error", ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"])
def test_each_throttling_error_has_its_code(connect, strict, error):
    ddb = connect(ONCE)
    with strict.throttling(rate=1.0, error=error), pytest.raises(ClientError) as refused:
        ddb.put_item(TableName=TABLE, Item=key("a"))
    assert refused.value.response["Error"]["Code"] == error
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Item" not in ddb.get_item(TableName=TABLE, Key=key("a"))


@pytest.mark.parametrize("error, reason", [("ThrottlingException", "ThrottlingError"),
                                           ("ProvisionedThroughputExceededException", "ProvisionedThroughputExceeded")])
def test_a_throttled_transaction_is_cancelled_with_a_capacity_reason(ddb, strict, error, reason):
    with strict.throttling(rate=1.0, error=error), pytest.raises(ClientError) as cancelled:
        ddb.transact_write_items(TransactItems=[add("x"), add("y"), add("z")])
    found = reasons(cancelled.value)
    assert sorted(found) == ["None", "None", reason]
    assert count(ddb, "x") + count(ddb, "y") + count(ddb, "z") == 0
    assert strict.counters.throttled_transactions == 1


def test_throttled_batches_leave_keys_and_items_unprocessed(ddb, strict):
    names = ["a", "b", "c", "d"]
    for name in names:
        ddb.put_item(TableName=TABLE, Item=key(name))
    with strict.throttling(rate=1.0, unprocessed=0.5):
        got = ddb.batch_get_item(RequestItems={TABLE: {"Keys": [key(n) for n in names], "ConsistentRead": True}})
        wrote = ddb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": key(f"new-{n}")}} for n in names]})
    unprocessed = got["UnprocessedKeys"][TABLE]
    assert len(unprocessed["Keys"]) == 2 and unprocessed["ConsistentRead"] is True
    assert sorted(got["Responses"][TABLE] + unprocessed["Keys"], key=str) == sorted(map(key, names), key=str)
    left = [r["PutRequest"]["Item"] for r in wrote["UnprocessedItems"][TABLE]]
    assert len(left) == 2
    for name in names:
        stored = "Item" in ddb.get_item(TableName=TABLE, Key=key(f"new-{name}"))
        assert stored == (key(f"new-{name}") not in left)
    assert (strict.counters.unprocessed_keys, strict.counters.unprocessed_items) == (2, 2)


def test_throttling_is_repeatable_under_a_seed_and_limited_to_matching_requests(ddb, strict):
    for name in "abcdef":
        ddb.put_item(TableName=TABLE, Item=key(name))

    def unprocessed() -> list[Any]:
        got = ddb.batch_get_item(RequestItems={TABLE: {"Keys": [key(n) for n in "abcdef"]}})
        return got["UnprocessedKeys"][TABLE]["Keys"]

    with strict.throttling(rate=1.0, unprocessed=0.5):
        once = unprocessed()
    with strict.throttling(rate=1.0, unprocessed=0.5):
        assert unprocessed() == once
    with strict.throttling(rate=1.0, tables=frozenset({"other"}), operations=frozenset({"BatchGetItem"})):
        ddb.put_item(TableName=TABLE, Item=key("g"))
        assert ddb.batch_get_item(RequestItems={TABLE: {"Keys": [key("g")]}})["UnprocessedKeys"] == {}


def test_a_batch_with_nothing_processable_fails_whole(connect, strict):
    ddb = connect(ONCE)
    with strict.throttling(rate=1.0), pytest.raises(ClientError) as refused:
        ddb.batch_get_item(RequestItems={TABLE: {"Keys": [key("a")]}})
    assert refused.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"


# -- ClientRequestToken ----------------------------------------------------------------------
def test_a_client_request_token_makes_a_transaction_idempotent(ddb, strict, monkeypatch):
    items = [add("counter"), put("a")]
    ddb.transact_write_items(TransactItems=items, ClientRequestToken="token-1")
    ddb.transact_write_items(TransactItems=items, ClientRequestToken="token-1")
    assert count(ddb, "counter") == 1 and strict.counters.replays == 1
    with pytest.raises(ClientError) as mismatch:
        ddb.transact_write_items(TransactItems=[add("counter", 2), put("a")], ClientRequestToken="token-1")
    assert mismatch.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    now = strict_dynamodb._clock()
    monkeypatch.setattr(strict_dynamodb, "_clock", lambda: now + 601)  # ten minutes on: a new request
    ddb.transact_write_items(TransactItems=items, ClientRequestToken="token-1")
    assert count(ddb, "counter") == 2


def test_a_token_repeated_while_its_transaction_runs_is_in_progress(connect, strict):
    ddb, once = connect(STANDARD), connect(ONCE)
    items = [add("counter")]
    with strict.holding():
        threads, results = run_together(lambda: ddb.transact_write_items(TransactItems=items, ClientRequestToken="t"))
        assert strict.wait_for(lambda c: c.held == 1)
        with pytest.raises(ClientError) as busy:
            once.transact_write_items(TransactItems=items, ClientRequestToken="t")
    join(threads)
    assert busy.value.response["Error"]["Code"] == "TransactionInProgressException"
    once.transact_write_items(TransactItems=items, ClientRequestToken="t")  # now a replay
    assert code(results[0]) == "ok" and count(ddb, "counter") == 1


def test_a_cancelled_transaction_is_not_remembered_under_its_token(ddb, strict):
    guarded = {"Put": put("a")["Put"] | {"ConditionExpression": "attribute_not_exists(pk)"}}
    ddb.put_item(TableName=TABLE, Item=key("a"))
    with pytest.raises(ClientError):
        ddb.transact_write_items(TransactItems=[guarded], ClientRequestToken="t2")
    ddb.delete_item(TableName=TABLE, Key=key("a"))
    ddb.transact_write_items(TransactItems=[guarded], ClientRequestToken="t2")  # runs again, and commits
    assert ddb.get_item(TableName=TABLE, Key=key("a"))["Item"]["v"] == {"S": "a"}


# -- settings ----------------------------------------------------------------------------------
def test_settings_from_the_environment():
    assert Strictness.from_env({}) == Strictness()
    env = {"LOCAL_DYNAMODB_CONFLICTS": "off", "LOCAL_DYNAMODB_HOLD_MS": "20", "LOCAL_DYNAMODB_THROTTLE_RATE": "0.1",
           "LOCAL_DYNAMODB_THROTTLE_ERROR": "ThrottlingException", "LOCAL_DYNAMODB_SEED": "7"}
    assert Strictness.from_env(env) == Strictness(
        conflicts=False, hold_seconds=0.02, throttle=Throttle(rate=0.1, error="ThrottlingException"), seed=7)
    for bad in ({"LOCAL_DYNAMODB_CONFLICTS": "maybe"}, {"LOCAL_DYNAMODB_THROTTLE_RATE": "2"},
                {"LOCAL_DYNAMODB_THROTTLE_ERROR": "Slow"}, {"LOCAL_DYNAMODB_HOLD_MS": "soon"}):
        with pytest.raises(ValueError):
            Strictness.from_env(bad)


def test_without_conflicts_overlapping_transactions_are_serialised(ddb, strict):
    strict.configure(conflicts=False)
    threads, results = run_together(*[lambda: ddb.transact_write_items(TransactItems=[add("counter")])] * 4)
    join(threads)
    assert list(map(code, results)) == ["ok"] * 4 and count(ddb, "counter") == 4


def test_one_emulation_at_a_time(strict):
    assert strict_dynamodb.installed() is strict
    with pytest.raises(RuntimeError):
        strict_dynamodb.install()


def test_the_local_stack_installs_the_emulation_from_its_environment(_strict_moto_dynamodb, tmp_path, monkeypatch):
    """`--store dynamodb` outside tests: the stack installs its own, from LOCAL_DYNAMODB_*, and
    takes it away at stop; the moto server it starts answers through it."""
    monkeypatch.setenv("LOCAL_DYNAMODB_HOLD_MS", "7")
    config = StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp_path, store="dynamodb")
    _strict_moto_dynamodb.uninstall()  # as if no test session were running
    try:
        with running(config) as stack:
            own = strict_dynamodb.installed()
            assert own is not None and own is not _strict_moto_dynamodb
            assert own.strictness == Strictness(hold_seconds=0.007)
            own.configure(throttle=Throttle(first=1, operations=frozenset({"GetItem"})))
            assert stack.store.get_chat("c_missing") is None  # through the stack's moto server, retried once
            assert own.counters.throttled_requests == 1
        assert strict_dynamodb.installed() is None
    finally:
        _strict_moto_dynamodb.install()
