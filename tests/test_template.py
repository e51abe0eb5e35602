"""template.yaml against the code: handlers resolve, environment variables are declared,
and the settings the design depends on (async replies, TTL, PITR, routes, scoped
Management API access) stay in place. `make check-template` lints and builds it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from local_gateway.template import read_template  # !Ref, !Sub, !GetAtt ... as {"Ref": ...} etc.
from ws_handlers.config import NAMES

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "template.yaml"
POWERTOOLS = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"}
PLAIN_SECRETS = {"TICKET_SECRET", "OPENAI_API_KEY"}  # local development only, never on AWS

TEMPLATE = read_template(TEMPLATE_PATH)
RESOURCES = TEMPLATE.get("Resources", {})
FUNCTIONS = {k: v["Properties"] for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function"}


def of_type(kind: str) -> dict[str, dict]:
    return {k: v.get("Properties", {}) for k, v in RESOURCES.items() if v["Type"] == kind}


def env(properties: dict) -> dict:
    return properties.get("Environment", {}).get("Variables", {})


def statements(properties: dict) -> list[dict]:
    """Inline statements of a function's Policies (SAM policy templates are skipped)."""
    return [s for p in properties.get("Policies", []) if isinstance(p, dict) for s in p.get("Statement", [])]


def actions(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_template_loads_with_four_functions():
    assert set(FUNCTIONS) == {"ConnectFunction", "DisconnectFunction", "MessageFunction", "ReplyFunction"}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_handler_resolves_to_a_callable(name):
    module, attribute = FUNCTIONS[name]["Handler"].rsplit(".", 1)
    assert module.startswith("ws_handlers."), "the zip holds the ws_handlers package"
    assert callable(getattr(importlib.import_module(module), attribute))


@pytest.mark.parametrize("name", ["Globals", *sorted(FUNCTIONS)])
def test_environment_names_are_declared_in_config(name):
    variables = env(TEMPLATE["Globals"]["Function"] if name == "Globals" else FUNCTIONS[name])
    assert set(variables) <= NAMES | POWERTOOLS, set(variables) - NAMES - POWERTOOLS
    assert not set(variables) & PLAIN_SECRETS


def test_only_the_message_function_invokes_replies():
    # ws_handlers.runtime builds a Lambda invoker exactly when REPLY_FUNCTION_NAME is set
    assert [n for n, p in FUNCTIONS.items() if "REPLY_FUNCTION_NAME" in env(p)] == ["MessageFunction"]
    invoke = [s for s in statements(FUNCTIONS["MessageFunction"]) if "lambda:InvokeFunction" in actions(s)]
    assert [s["Resource"] for s in invoke] == [{"Fn::GetAtt": ["ReplyFunction", "Arn"]}]


def test_reply_function_runs_once_async_and_capped():
    reply = FUNCTIONS["ReplyFunction"]
    assert reply["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    assert 60 <= reply["EventInvokeConfig"]["MaximumEventAgeInSeconds"] <= 3600
    assert reply["Timeout"] > 29  # longer than API Gateway's integration timeout: it is async
    assert "LlmConcurrency" in str(reply["ReservedConcurrentExecutions"])


def test_tables_expire_by_ttl_and_have_point_in_time_recovery():
    tables = of_type("AWS::DynamoDB::Table")
    assert set(tables) == {"ConnectionsTable", "ChatsTable"}
    for table in tables.values():
        assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["SSESpecification"]["SSEEnabled"] is True
    assert RESOURCES["ChatsTable"]["DeletionPolicy"] == "Retain"
    assert [i["IndexName"] for i in tables["ChatsTable"]["GlobalSecondaryIndexes"]] == ["by_experiment"]


def test_websocket_api_routes_on_action():
    (api,) = of_type("AWS::ApiGatewayV2::Api").values()
    assert api["ProtocolType"] == "WEBSOCKET"
    assert api["RouteSelectionExpression"] == "$request.body.action"
    routes = {r["RouteKey"]: r["Target"] for r in of_type("AWS::ApiGatewayV2::Route").values()}
    assert set(routes) == {"$connect", "$disconnect", "start", "send", "history", "ping", "$default"}
    for key in ("start", "send", "history", "ping", "$default"):
        assert routes[key] == {"Fn::Sub": "integrations/${MessageIntegration}"}
    (deployment,) = [r for r in RESOURCES.values() if r["Type"] == "AWS::ApiGatewayV2::Deployment"]
    assert len(deployment["DependsOn"]) == len(routes)


def test_manage_connections_is_scoped_to_this_api():
    granted = {}
    for name, properties in FUNCTIONS.items():
        for statement in statements(properties):
            if "execute-api:ManageConnections" in actions(statement):
                granted[name] = statement["Resource"]
    assert set(granted) == {"MessageFunction", "ReplyFunction"}
    for name, resource in granted.items():
        assert "${WebSocketApi}/${Stage}/POST/@connections/*" in str(resource), (name, resource)
