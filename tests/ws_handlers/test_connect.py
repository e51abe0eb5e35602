"""$connect: who may open a socket. A refused connection writes nothing."""

from __future__ import annotations

import time

import pytest
from harness import ORIGIN

from ws_handlers.tickets import mint_token


def _connections(harness) -> list:
    return harness.table_items("conns")


def test_a_valid_token_connects_and_stores_the_connection_with_a_ttl(harness):
    assert harness.connect("c1") == {"statusCode": 200}
    [item] = _connections(harness)
    assert item["participant"]["S"] == "P1" and item["experiment"]["S"] == "exp1"
    assert int(item["expires_at"]["N"]) > time.time() + 7000


@pytest.mark.parametrize(
    "token, status, reason",
    [
        (None, 401, "invalid_token"),
        ("", 401, "invalid_token"),
        ("not-a-jwt", 401, "invalid_token"),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJQMSJ9.", 401, "invalid_token"),  # alg=none
        ("x" * 5000, 401, "invalid_token"),
    ],
)
def test_bad_tokens_are_refused_with_401_and_write_nothing(harness, token, status, reason):
    response = harness.connect("c1", token=token)
    assert response == {"statusCode": status, "body": reason}
    assert _connections(harness) == []


def test_a_token_signed_with_another_secret_is_refused(harness):
    forged = mint_token("another-secret-that-is-long-enough-to-be-used", harness.identity())
    assert harness.connect("c1", token=forged)["statusCode"] == 401
    assert _connections(harness) == []


def test_a_tampered_token_is_refused(harness):
    header, payload, signature = harness.token().split(".")
    tampered = ".".join((header, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1], signature))
    assert harness.connect("c1", token=tampered)["statusCode"] == 401


def test_an_expired_token_is_refused(harness):
    expired = mint_token(harness.secret, harness.identity(), ttl=60, now=time.time() - 3600)
    assert harness.connect("c1", token=expired) == {"statusCode": 401, "body": "token_expired"}
    assert _connections(harness) == []


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        ORIGIN + ".evil.net",  # prefix tricks
        ORIGIN + "/",
        "http://lab.example.org",
        ORIGIN.upper(),
        "null",
    ],
)
def test_origins_must_match_exactly(harness, origin):
    assert harness.connect("c1", origin=origin) == {"statusCode": 403, "body": "origin_not_allowed"}
    assert _connections(harness) == []


def test_missing_origin_follows_the_setting(make_harness):
    assert make_harness().connect("c1", origin=None)["statusCode"] == 200
    strict = make_harness(ALLOW_MISSING_ORIGIN="false", CONNECTIONS_TABLE="conns2", CHATS_TABLE="chats2")
    assert strict.connect("c1", origin=None) == {"statusCode": 403, "body": "origin_required"}


def test_an_allowlist_admits_only_its_codes_until_it_is_cleared(harness):
    assert harness.connect("c0", participant="P3")["statusCode"] == 200  # no allowlist: any valid token
    harness.store.add_to_allowlist("exp1", ["P1", "P2"])  # what `chat-ops allowlist add` calls
    assert harness.connect("c1", participant="P2")["statusCode"] == 200
    assert harness.connect("c2", participant="P3") == {"statusCode": 403, "body": "participant_not_allowed"}
    harness.store.add_to_allowlist("other", ["P3"])  # another experiment's list admits nobody here
    assert harness.connect("c3", participant="P3")["statusCode"] == 403
    assert {i["connection_id"]["S"] for i in _connections(harness)} == {"c0", "c1"}
    harness.store.clear_allowlist("exp1")
    assert harness.connect("c4", participant="P3")["statusCode"] == 200


def _requests_of_a_connect(harness, cid: str, participant: str) -> list[tuple[str, dict]]:
    """The DynamoDB requests one $connect makes (operation, parameters), seen by botocore's own events."""
    seen: list[tuple[str, dict]] = []

    def record(model, params, **_):
        seen.append((model.name, params))

    events = harness.store._db.meta.events
    events.register("provide-client-params.dynamodb.*", record)
    try:
        harness.connect(cid, participant=participant)
    finally:
        events.unregister("provide-client-params.dynamodb.*", record)
    return seen


def test_the_connect_path_reads_one_code_by_key_and_only_when_the_experiment_has_an_allowlist(harness):
    """A list of any length costs one GetItem of the participant's item; an open experiment nothing more."""
    open_ = _requests_of_a_connect(harness, "c1", "P2")
    harness.store.add_to_allowlist("exp1", [f"P{i}" for i in range(300)])
    listed = _requests_of_a_connect(harness, "c2", "P2")
    assert sorted(op for op, _ in listed) == sorted([op for op, _ in open_] + ["GetItem"])  # one read more
    extra = [params for op, params in listed if op == "GetItem" and params["Key"]["pk"]["S"].startswith("ALLOW#")]
    assert [p["Key"] for p in extra] == [{"pk": {"S": "ALLOW#exp1"}, "sk": {"S": "P2"}}]
    assert not {"Query", "Scan", "BatchGetItem"} & {op for op, p in listed if "ALLOW#" in str(p)}


def test_kill_switch_in_the_environment_refuses_connections(make_harness):
    harness = make_harness(CHAT_PAUSED="true")
    assert harness.connect("c1") == {"statusCode": 403, "body": "paused"}
    assert _connections(harness) == []


@pytest.mark.parametrize("pk", ["EXP#exp1", "SERVICE"])
def test_kill_switch_in_the_table_refuses_connections(harness, pk):
    harness.ddb.put_item(TableName="chats", Item={"pk": {"S": pk}, "sk": {"S": "CONTROL"}, "paused": {"BOOL": True}})
    assert harness.connect("c1") == {"statusCode": 403, "body": "paused"}
    assert _connections(harness) == []


def test_another_experiments_pause_does_not_refuse(harness):
    harness.ddb.put_item(
        TableName="chats", Item={"pk": {"S": "EXP#other"}, "sk": {"S": "CONTROL"}, "paused": {"BOOL": True}}
    )
    assert harness.connect("c1")["statusCode"] == 200
