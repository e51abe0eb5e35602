"""The AWS paths on moto: --dynamodb-endpoint (moto's server) and --stack (a CloudFormation stack in moto)."""

from __future__ import annotations

import json

import boto3
import pytest
from conftest import SEEDED_PROVENANCE, cli, one_line_error, reset_moto, seed_store, stored_rows
from moto import mock_aws

from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.controls import obeyed
from ws_handlers.ops.template import read_template
from ws_handlers.store import Connection, StoreThrottled

PEOPLE = [("P1", "s1"), ("P2", "s1"), ("P3", "s2")]
NOW = 1_800_000_000


def _seed(store, experiment: str = "exp1") -> list[str]:
    chats = seed_store(store, experiment, PEOPLE)
    for n, chat in enumerate(chats):
        store.put_connection(Connection(f"{experiment}-k{n}", chat.identity, NOW, 4_000_000_000))
    return [c.chat_id for c in chats]


def test_endpoint_export_status_and_delete(server, ops):
    url, store = server
    ids = _seed(store)
    _seed(store, "exp2")
    expected = stored_rows(store, ids)
    assert len(expected) == 15
    assert {r["model_snapshot"] for r in expected if r["role"] == "assistant"} == {SEEDED_PROVENANCE.model_snapshot, None}

    done = cli("export", "--dynamodb-endpoint", url, "--experiment", "exp1", "--format", "jsonl", "-q")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == expected

    code, out, err = ops("status", "--dynamodb-endpoint", url, "--experiment", "exp1", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert (status["connections"], status["chats"], status["participants"], status["replies"]) == (3, 3, 3, 6)
    assert (status["prompt_tokens"], status["completion_tokens"], status["tokens_used"]) == (18, 12, 30)
    assert status["llm_usd"] == pytest.approx((18 * 0.15 + 12 * 0.60) / 1e6)

    code, out, err = ops("delete-participant", "--dynamodb-endpoint", url, "--experiment", "exp1", "--participant", "P1",
                         "--yes")
    assert code == 0, err
    assert "1 chats, 5 messages, 1 connections, 3 other records" in out
    assert stored_rows(store, ids) == expected[5:]
    assert {c.identity.participant for c in store.connections("exp1")} == {"P2", "P3"}
    # nothing of P1 is left anywhere in the chats table, not even a counter
    items = store._db.scan(TableName="chat-chats")["Items"]
    assert not [i for i in items if "P1" in json.dumps(i) and "exp1" in json.dumps(i)]
    assert len([i for i in items if "exp2" in json.dumps(i)]) > 0

    code, out, err = ops("delete-experiment", "--dynamodb-endpoint", url, "--experiment", "exp1", "--yes")
    assert code == 0 and "2 chats, 10 messages, 2 connections" in out, err
    items = store._db.scan(TableName="chat-chats")["Items"]
    assert not [i for i in items if "exp1" in json.dumps(i)]
    assert list(store.connections("exp1")) == []


def _stack_template() -> dict:
    """A tiny stack: template.yaml's two tables and the outputs that name them, and its TokenBudget."""
    real = read_template()
    return {
        "Parameters": {"TokenBudget": real["Parameters"]["TokenBudget"] | {"Default": "5000"}},
        "Resources": {k: real["Resources"][k] for k in ("ConnectionsTable", "ChatsTable")},
        "Outputs": {k: real["Outputs"][k] for k in ("ConnectionsTableName", "ChatsTableName")},
    }


def test_stack_outputs_name_the_tables(moto_url, monkeypatch, ops):
    """The CLI (a process of its own, then in this one) with every AWS call sent to moto's server."""
    reset_moto(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    boto3.client("cloudformation").create_stack(StackName="lab", TemplateBody=json.dumps(_stack_template()))
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in boto3.client("cloudformation").describe_stacks(StackName="lab")["Stacks"][0]["Outputs"]}
    store = DynamoStore(outputs["ConnectionsTableName"], outputs["ChatsTableName"], client=boto3.client("dynamodb"))
    ids = _seed(store)

    done = cli("export", "--stack", "lab", "--region", "us-east-1", "--experiment", "exp1", "--format", "jsonl", "-q")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == stored_rows(store, ids)

    monkeypatch.setenv("CHAT_OPS_STACK", "lab")  # the environment names the target as well
    code, out, err = ops("budget", "--experiment", "exp1")
    assert code == 0, err
    assert "30 tokens used; no budget of its own: the stack's TokenBudget (5000) applies [stack lab (us-east-1)]" in out
    code, out, err = ops("delete-participant", "--experiment", "exp1", "--participant", "P2", "--yes")
    assert code == 0 and "1 chats, 5 messages, 1 connections" in out, err
    assert [c.identity.participant for c in store.experiment_chats("exp1")] == ["P1", "P3"]
    code, out, _ = ops("status", "--experiment", "exp1", "--json")
    assert json.loads(out)["chats"] == 2


def test_pause_and_budget_on_a_stack(ops):
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name="eu-west-1")
        cloudformation.create_stack(StackName="lab", TemplateBody=json.dumps(_stack_template()))
        outputs = {o["OutputKey"]: o["OutputValue"] for o in cloudformation.describe_stacks(StackName="lab")["Stacks"][0]["Outputs"]}
        store = DynamoStore(outputs["ConnectionsTableName"], outputs["ChatsTableName"],
                            client=boto3.client("dynamodb", region_name="eu-west-1"))
        seed_store(store, "exp1", PEOPLE[:1])
        target = ("--stack", "lab", "--region", "eu-west-1")
        assert ops("pause", *target, "--experiment", "exp1")[0] == 0
        def obeyed_by(experiment: str):  # what the request paths obey: the service's pause counts too
            return obeyed(store.get_controls(experiment))

        assert obeyed_by("exp1").paused and not obeyed_by("exp2").paused
        code, out, _ = ops("pause", *target)
        assert code == 0 and "new connections and messages are refused" in out
        assert obeyed_by("exp2").paused
        assert ops("resume", *target)[0] == ops("resume", *target, "--experiment", "exp1")[0] == 0
        assert not obeyed_by("exp1").paused
        code, out, _ = ops("budget", *target, "--experiment", "exp1", "--set", "10")
        assert code == 0 and "10 tokens used of a budget of 10 (100.0%)" in out and "budget_exhausted" in out
        assert obeyed_by("exp1").token_budget == 10
        code, out, _ = ops("status", *target)
        assert code == 0 and "stack lab (eu-west-1)" in out

        code, _, err = ops("status", "--stack", "nope", "--region", "eu-west-1")
        assert code == 2 and one_line_error(err) == "chat-ops: no stack 'nope' in eu-west-1 (check --stack and --region)"


def test_bad_endpoints_and_tables_are_one_line_errors(server, ops):
    url, _ = server
    code, _, err = ops("export", "--dynamodb-endpoint", url, "--chats-table", "chats", "--experiment", "exp1")
    assert code == 2
    assert one_line_error(err) == (f"chat-ops: no table 'chats' at {url} (tables there: chat-chats, chat-connections); "
                                   "name them with --connections-table/--chats-table")
    code, _, err = ops("status", "--dynamodb-endpoint", "http://127.0.0.1:9")
    assert code == 1 and one_line_error(err).startswith("chat-ops: cannot reach DynamoDB at http://127.0.0.1:9")
    code, _, err = ops("status", "--dynamodb-endpoint", "127.0.0.1:9")
    assert code == 2 and "must be an http(s) URL" in one_line_error(err)
    code, _, err = ops("export", "--dynamodb-endpoint", url, "--experiment", "nobody")
    assert code == 1 and "no chats in experiment 'nobody'" in one_line_error(err)


class _Stingy:
    """DynamoDB short of capacity: each BatchWriteItem processes only the first half of its items
    and returns the rest as UnprocessedItems (or, `forever`, all of them), which moto never does."""

    def __init__(self, client, forever: bool = False) -> None:
        self._client, self.forever, self.batches = client, forever, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def batch_write_item(self, RequestItems):
        self.batches += 1
        [(table, requests)] = RequestItems.items()
        half = (len(requests) + 1) // 2
        done = self._client.batch_write_item(RequestItems={table: requests[:half]})
        assert not done.get("UnprocessedItems")
        rest = requests if self.forever else requests[half:]
        return {"UnprocessedItems": {table: rest} if rest else {}}


def test_deletion_retries_unprocessed_items_and_gives_up_boundedly(monkeypatch, dynamodb_tables):
    monkeypatch.setattr("ws_handlers.adapters.dynamodb.time.sleep", lambda _s: None)
    with mock_aws():
        client = boto3.client("dynamodb")
        dynamodb_tables(client, "conns", "chats")
        store = DynamoStore("conns", "chats", client=_Stingy(client))
        seed_store(store, "exp1", [("P1", "s1")], turns=15)  # 31 messages and 15 client ids: two batches
        deleted = store.delete_participant("exp1", "P1")
        assert (deleted.chats, deleted.messages) == (1, 31)
        left = {i["pk"]["S"] for i in client.scan(TableName="chats")["Items"]}
        assert left == {"EXP#exp1"}  # the experiment's token counter: spent is spent
        assert store._db.batches > 2  # the unprocessed halves were sent again until none was left

        seed_store(store, "exp1", [("P1", "s1")], turns=1)
        store._db.forever = True
        with pytest.raises(StoreThrottled):
            store.delete_experiment("exp1")


def test_the_environment_names_an_endpoint(server, monkeypatch, ops):
    url, store = server
    _seed(store)
    monkeypatch.setenv("CHAT_OPS_DYNAMODB_ENDPOINT", url)
    code, out, _ = ops("budget", "--experiment", "exp1")
    assert code == 0 and f"[DynamoDB at {url}]" in out
    code, _, err = ops("budget", "--local", "--experiment", "exp1")  # an option wins over the environment
    assert code == 2 and "no local store" in err
