"""template.yaml against the code: handlers resolve, environment variables are declared and
stay within Lambda's 4 KB, and the settings the design depends on (async replies, TTL, PITR,
routes, scoped Management API access, alarms, the provisioned alias, optional access logs,
names that let stacks coexist) stay in place. `make check-template` lints and builds it."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from local_gateway.template import load
from ws_handlers.config import NAMES
from ws_handlers.ops.template import (  # !Ref, !Sub, !GetAtt ... as {"Ref": ...} etc.
    Resolver,
    TemplateError,
    read_template,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "template.yaml"
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


def test_template_loads_with_five_functions():
    assert set(FUNCTIONS) == {"ConnectFunction", "DisconnectFunction", "MessageFunction", "ReplyFunction", "EnrolFunction"}


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


def test_only_the_message_function_queues_replies():
    # ws_handlers.runtime builds an SQS job queue exactly when REPLY_QUEUE_URL is set
    assert [n for n, p in FUNCTIONS.items() if "REPLY_QUEUE_URL" in env(p)] == ["MessageFunction"]
    assert env(FUNCTIONS["MessageFunction"])["REPLY_QUEUE_URL"] == {"Ref": "ReplyQueue"}
    send = [s for s in statements(FUNCTIONS["MessageFunction"]) if "sqs:SendMessage" in actions(s)]
    assert [s["Resource"] for s in send] == [{"Fn::GetAtt": ["ReplyQueue", "Arn"]}]
    assert not any("lambda:InvokeFunction" in actions(s) for p in FUNCTIONS.values() for s in statements(p))


def test_replies_wait_in_a_queue_capped_without_throttling():
    reply = FUNCTIONS["ReplyFunction"]
    assert "ReservedConcurrentExecutions" not in reply and "EventInvokeConfig" not in reply
    (event,) = reply["Events"].values()
    assert event["Type"] == "SQS" and event["Properties"]["Queue"] == {"Fn::GetAtt": ["ReplyQueue", "Arn"]}
    assert event["Properties"]["BatchSize"] == 1  # a slow reply never holds another back
    assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "LlmConcurrency"}
    concurrency = TEMPLATE["Parameters"]["LlmConcurrency"]
    assert (concurrency["MinValue"], concurrency["MaxValue"]) == (2, 1000)  # what MaximumConcurrency accepts
    queue = RESOURCES["ReplyQueue"]["Properties"]
    assert reply["Timeout"] > 29  # longer than API Gateway's integration timeout: replies run apart
    assert queue["VisibilityTimeout"] >= 6 * reply["Timeout"]  # AWS's advice for event source mappings
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["ReplyFailuresQueue", "Arn"]}, "maxReceiveCount": 5}
    alarms = of_type("AWS::CloudWatch::Alarm")
    watched = {str(a.get("Dimensions")) for a in alarms.values() if a.get("Namespace") == "AWS/SQS"}
    assert any("ReplyQueue" in w for w in watched) and any("ReplyFailuresQueue" in w for w in watched)
    assert any(a.get("MetricName") == "RepliesNotStored" for a in alarms.values())


def test_tables_expire_by_ttl_and_have_point_in_time_recovery():
    tables = of_type("AWS::DynamoDB::Table")
    assert set(tables) == {"ConnectionsTable", "ChatsTable"}
    for table in tables.values():
        assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["SSESpecification"]["SSEEnabled"] is True
    # kept when the stack is deleted or the table replaced, but not after a failed first create (empty then)
    assert RESOURCES["ChatsTable"]["DeletionPolicy"] == "RetainExceptOnCreate"
    assert RESOURCES["ChatsTable"]["UpdateReplacePolicy"] == "Retain"
    assert [i["IndexName"] for i in tables["ChatsTable"]["GlobalSecondaryIndexes"]] == ["by_experiment"]


def test_websocket_api_routes_on_action():
    (api,) = of_type("AWS::ApiGatewayV2::Api").values()
    assert api["ProtocolType"] == "WEBSOCKET"
    assert api["RouteSelectionExpression"] == "$request.body.action"
    routes = {r["RouteKey"]: r["Target"] for r in of_type("AWS::ApiGatewayV2::Route").values()}
    assert set(routes) == {"$connect", "$disconnect", "start", "send", "history", "ping", "$default"}
    for key in ("start", "send", "history", "$default"):
        assert routes[key] == {"Fn::Sub": "integrations/${MessageIntegration}"}
    snapshotted = {k for k, v in RESOURCES.items() if v["Type"] in (
        "AWS::ApiGatewayV2::Route", "AWS::ApiGatewayV2::RouteResponse", "AWS::ApiGatewayV2::IntegrationResponse")}
    deployments = [r for r in RESOURCES.values() if r["Type"] == "AWS::ApiGatewayV2::Deployment"]
    assert len(deployments) == 2  # one per MessageProvisionedConcurrency setting (see below)
    for deployment in deployments:
        assert snapshotted <= set(deployment["DependsOn"]), "a deployment snapshots every route and response"


def test_api_gateway_answers_ping_without_a_function():
    """A MOCK integration, its pong as the integration response, sent back by a route response:
    a ping flood costs no invocation (docs/security.md)."""
    ping = next(p for p in of_type("AWS::ApiGatewayV2::Route").values() if p["RouteKey"] == "ping")
    (name,) = re.findall(r"\$\{(\w+)\}", ping["Target"]["Fn::Sub"])
    integration = RESOURCES[name]["Properties"]
    assert integration["IntegrationType"] == "MOCK"
    assert integration["RequestTemplates"] == {"$default": '{"statusCode": 200}'}
    (response,) = [p for p in of_type("AWS::ApiGatewayV2::IntegrationResponse").values()
                   if p["IntegrationId"] == {"Ref": name}]
    assert response["IntegrationResponseKey"] == "$default"
    assert json.loads(response["ResponseTemplates"]["$default"]) == {"type": "pong"}
    assert ping["RouteResponseSelectionExpression"] == "$default"  # two-way: the answer is sent back
    route_id = next(k for k, v in RESOURCES.items() if v.get("Properties") is ping)
    (route_response,) = [p for p in of_type("AWS::ApiGatewayV2::RouteResponse").values()
                         if p["RouteId"] == {"Ref": route_id}]
    assert route_response["RouteResponseKey"] == "$default"


def test_manage_connections_is_scoped_to_this_api():
    granted = {}
    for name, properties in FUNCTIONS.items():
        for statement in statements(properties):
            if "execute-api:ManageConnections" in actions(statement):
                granted[name] = statement["Resource"]
    assert set(granted) == {"MessageFunction", "ReplyFunction"}
    for name, resource in granted.items():
        assert "${WebSocketApi}/${Stage}/POST/@connections/*" in str(resource), (name, resource)


# ------------------------------------------------------------------------------ alarms

ALARMS = of_type("AWS::CloudWatch::Alarm")


def _watched(alarm: dict) -> set[tuple[str, str, str]]:
    """(namespace, metric, the resource in its first dimension) of an alarm, metric math included."""
    stats = [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m] or [alarm]
    return {(s["Namespace"], s["MetricName"], str(s["Dimensions"][0]["Value"])) for s in stats}


def test_every_alarm_notifies_the_optional_email_topic():
    topic = RESOURCES["AlarmTopic"]
    assert topic["Condition"] == "HasAlarmEmail"
    assert topic["Properties"]["Subscription"] == [{"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}]
    assert TEMPLATE["Parameters"]["AlarmEmail"]["Default"] == ""
    when_set = {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
    assert len(ALARMS) >= 10
    for name, alarm in ALARMS.items():
        assert alarm["AlarmActions"] == when_set, name
        assert alarm["OKActions"] == when_set, name
        assert "AlarmName" not in alarm, f"{name}: generated names let stacks coexist"


def test_alarms_cover_errors_throttles_and_budget():
    watched = set().union(*map(_watched, ALARMS.values()))
    for function in FUNCTIONS:
        assert ("AWS/Lambda", "Errors", str({"Ref": function})) in watched, function
    for function in ("ConnectFunction", "MessageFunction"):  # the synchronous ones: a throttle fails a request
        assert ("AWS/Lambda", "Throttles", str({"Ref": function})) in watched, function
    for table in ("ConnectionsTable", "ChatsTable"):
        for metric in ("ReadThrottleEvents", "WriteThrottleEvents"):
            assert ("AWS/DynamoDB", metric, str({"Ref": table})) in watched, (table, metric)
    assert ("AWS/ApiGateway", "ExecutionError", str({"Ref": "WebSocketApi"})) in watched
    assert ("LLMChat", "BudgetUsedPercent", str({"Ref": "AWS::StackName"})) in watched
    assert TEMPLATE["Parameters"]["BudgetAlarmPercent"]["Default"] == 80


# ------------------------------------------------------------------------------ provisioned concurrency


def _stack(parameters: dict[str, str] | None = None, document: dict = TEMPLATE) -> Resolver:
    return Resolver(document, parameters)


@pytest.mark.parametrize("provisioned", ["0", "4"])
def test_the_message_route_targets_the_alias_only_when_provisioned(provisioned):
    stack = _stack({"MessageProvisionedConcurrency": provisioned})
    message = stack.resolve(FUNCTIONS["MessageFunction"], "MessageFunction")
    uri = stack.resolve(RESOURCES["MessageIntegration"]["Properties"]["IntegrationUri"], "uri")
    deployment = stack.resolve(RESOURCES["WebSocketStage"]["Properties"]["DeploymentId"], "stage")
    assert message["AutoPublishAlias"] == "live"
    assert stack.exists(deployment)  # the stage serves the deployment that exists with these parameters
    assert stack.exists("MessagePermission")  # $LATEST stays invocable while a switch rolls out
    if provisioned == "0":
        assert "ProvisionedConcurrencyConfig" not in message
        assert uri.endswith("functions/arn:aws:local:::MessageFunction/invocations")
        assert not stack.exists("MessageAliasPermission") and not stack.exists("MessageSpilloverAlarm")
    else:
        assert message["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": "4"}
        assert uri.endswith("functions/MessageFunction.Alias/invocations")
        assert stack.exists("MessageAliasPermission") and stack.exists("MessageSpilloverAlarm")
        assert RESOURCES["MessageAliasPermission"]["Properties"]["FunctionName"] == {"Ref": "MessageFunction.Alias"}
        assert "MessageAliasPermission" in RESOURCES[deployment]["DependsOn"]


SAM_PYTHON = ROOT / ".venv-sam" / "bin" / "python"  # `make check-template` creates it
_TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samcli.yamlhelper import yaml_parse
document = yaml_parse(open(sys.argv[1]).read())
document["Globals"]["Function"]["CodeUri"] = "s3://bucket/code.zip"  # what sam package would write
for resource in document["Resources"].values():
    if resource["Type"] == "AWS::Serverless::LayerVersion":
        resource["Properties"]["ContentUri"] = "s3://bucket/layer.zip"
class NoManagedPolicies:
    def load(self): return {}
print(json.dumps(transform(document, {}, NoManagedPolicies())))
"""


@pytest.fixture(scope="module")
def transformed() -> dict:
    """template.yaml through SAM's own transform (samtranslator, in sam's venv), as
    CloudFormation receives it: the functions' aliases and versions made explicit."""
    if not SAM_PYTHON.exists():
        pytest.skip("sam's venv is missing: run `make check-template`")
    env = os.environ | {"AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}
    out = subprocess.run([str(SAM_PYTHON), "-c", _TRANSLATE, str(TEMPLATE_PATH)], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return json.loads(out.stdout)


def _alias_of(resources: dict, function: str) -> str:
    """The logical id of the one AWS::Lambda::Alias SAM made for `function` (its AutoPublishAlias)."""
    (alias,) = [k for k, v in resources.items()
                if v["Type"] == "AWS::Lambda::Alias" and v["Properties"]["FunctionName"] == {"Ref": function}]
    return alias


@pytest.mark.parametrize("provisioned", ["0", "2"])
def test_the_transformed_template_invokes_the_alias_when_provisioned(transformed, provisioned):
    stack = _stack({"MessageProvisionedConcurrency": provisioned}, transformed)
    resources = transformed["Resources"]
    alias = _alias_of(resources, "MessageFunction")
    assert resources[alias]["Properties"]["FunctionName"] == {"Ref": "MessageFunction"}
    assert resources[alias]["Properties"]["Name"] == "live"
    config = stack.resolve({"c": resources[alias]["Properties"].get("ProvisionedConcurrencyConfig")}, alias).get("c")
    uri = stack.resolve(resources["MessageIntegration"]["Properties"]["IntegrationUri"], "uri")
    permissions = {stack.resolve(r["Properties"]["FunctionName"], k) for k, r in resources.items()
                   if r["Type"] == "AWS::Lambda::Permission" and stack.exists(k)}
    deployment = stack.resolve(resources["WebSocketStage"]["Properties"]["DeploymentId"], "stage")
    assert stack.exists(deployment)
    if provisioned == "0":
        assert config is None
        assert uri.endswith("functions/arn:aws:local:::MessageFunction/invocations")
        assert alias not in permissions
    else:
        assert config == {"ProvisionedConcurrentExecutions": "2"}
        assert uri.endswith(f"functions/{alias}/invocations")  # Ref of an alias is its ARN
        assert {alias, "MessageFunction"} <= permissions


@pytest.mark.parametrize("provisioned", ["0", "3"])
def test_the_reply_function_has_its_own_provisioned_alias_off_by_default(provisioned):
    parameter = TEMPLATE["Parameters"]["ReplyProvisionedConcurrency"]
    assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 0, 0)
    assert TEMPLATE["Conditions"]["ProvisionReplyConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ReplyProvisionedConcurrency"}, "0"]}]}
    stack = _stack({"ReplyProvisionedConcurrency": provisioned})
    reply = stack.resolve(FUNCTIONS["ReplyFunction"], "ReplyFunction")
    message = stack.resolve(FUNCTIONS["MessageFunction"], "MessageFunction")
    assert reply["AutoPublishAlias"] == "live"
    assert "ProvisionedConcurrencyConfig" not in message  # each function has its own setting
    (event,) = reply["Events"].values()
    assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == "50"  # LlmConcurrency still caps it
    alarm = RESOURCES["ReplySpilloverAlarm"]["Properties"]
    assert alarm["MetricName"] == "ProvisionedConcurrencySpilloverInvocations"
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ReplyFunction"}},
                                   {"Name": "Resource", "Value": {"Fn::Sub": "${ReplyFunction}:live"}}]
    if provisioned == "0":
        assert "ProvisionedConcurrencyConfig" not in reply
        assert not stack.exists("ReplySpilloverAlarm")
    else:
        assert reply["ProvisionedConcurrencyConfig"] == {"ProvisionedConcurrentExecutions": "3"}
        assert stack.exists("ReplySpilloverAlarm")
    with pytest.raises(TemplateError, match="MinValue"):
        _stack({"ReplyProvisionedConcurrency": "-1"})


@pytest.mark.parametrize("provisioned", ["0", "2"])
def test_the_transformed_template_has_the_reply_queue_invoke_the_alias(transformed, provisioned):
    """SAM points the SQS event source mapping at the alias whatever the setting: the provisioned
    environments are the ones the queue's jobs reach, and a reply never goes to $LATEST."""
    stack = _stack({"ReplyProvisionedConcurrency": provisioned}, transformed)
    resources = transformed["Resources"]
    alias = _alias_of(resources, "ReplyFunction")
    assert resources[alias]["Properties"]["Name"] == "live"
    config = stack.resolve({"c": resources[alias]["Properties"].get("ProvisionedConcurrencyConfig")}, alias).get("c")
    (mapping,) = [stack.resolve(v["Properties"], k) for k, v in resources.items()
                  if v["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert mapping["FunctionName"] == alias  # Ref of an alias is its ARN
    assert mapping["EventSourceArn"] == "arn:aws:local:::ReplyQueue"
    assert (mapping["BatchSize"], mapping["ScalingConfig"]) == (1, {"MaximumConcurrency": "50"})
    assert config == (None if provisioned == "0" else {"ProvisionedConcurrentExecutions": "2"})
    assert stack.exists("ReplySpilloverAlarm") == (provisioned != "0")


# ------------------------------------------------------------------------------ names: many stacks, many regions

#: The property holding the physical name of each kind of resource whose name is unique per
#: account and region. Left out, CloudFormation generates one from the stack name.
NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Serverless::LayerVersion": "LayerName",
    "AWS::Lambda::LayerVersion": "LayerName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::SSM::Parameter": "Name",
    "AWS::ApiGatewayV2::Api": "Name",
    "AWS::Serverless::HttpApi": "Name",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::S3::Bucket": "BucketName",
}
#: Kinds without a name of their own (or one scoped inside another resource of the stack).
UNNAMED = {
    "AWS::ApiGatewayV2::Integration", "AWS::ApiGatewayV2::Route", "AWS::ApiGatewayV2::Deployment",
    "AWS::ApiGatewayV2::IntegrationResponse", "AWS::ApiGatewayV2::RouteResponse",
    "AWS::ApiGatewayV2::Stage", "AWS::Lambda::Permission",
    "AWS::ApiGateway::Account",  # one per account and Region: a setting, not a named resource
    "AWS::CloudFormation::WaitConditionHandle",
}
REGION = re.compile(r"\b(us|eu|ap|sa|ca|me|af|il|mx|cn)(-gov|-iso[a-z]?)?-(north|south|east|west|central)"
                    r"(east|west)?-\d\b")


def _named() -> list[tuple[str, str, object]]:
    """(logical id, type, value) of every physical name written in the template."""
    return [
        (logical_id, resource["Type"], resource["Properties"][NAME_PROPERTY[resource["Type"]]])
        for logical_id, resource in RESOURCES.items()
        if NAME_PROPERTY.get(resource["Type"]) in resource.get("Properties", {})
    ]


def test_every_kind_of_resource_is_classified():
    unknown = {r["Type"] for r in RESOURCES.values()} - set(NAME_PROPERTY) - UNNAMED
    assert not unknown, f"add the name property of {unknown} to NAME_PROPERTY (or to UNNAMED)"


@pytest.mark.parametrize(("logical_id", "kind", "value"), _named(), ids=lambda v: str(v)[:40])
def test_no_name_is_written_literally(logical_id, kind, value):
    assert not isinstance(value, (str, int, float)), f"{logical_id}: the literal name {value!r}"
    mentioned = str(value)
    assert "AWS::StackName" in mentioned or any(name in mentioned for name in RESOURCES), (
        f"{logical_id} must derive its name from the stack name or a generated name: {value!r}"
    )


def test_names_of_two_stacks_never_collide():
    def names(stack: str) -> set[str]:
        refs = {logical_id: f"{stack}-{logical_id}-GENERATED" for logical_id in RESOURCES}  # as CloudFormation names them
        resolver = Resolver(TEMPLATE, refs=refs, pseudo={"AWS::StackName": stack})
        written = {(kind, resolver.resolve(value, logical_id)) for logical_id, kind, value in _named()}
        generated = {(r["Type"], refs[k]) for k, r in RESOURCES.items() if r["Type"] in NAME_PROPERTY
                     and NAME_PROPERTY[r["Type"]] not in r.get("Properties", {})}
        return written | generated

    first, second = names("llm-chat"), names("llm-chat-study2")
    assert len(first) == len([r for r in RESOURCES.values() if r["Type"] in NAME_PROPERTY])  # none shared in a stack
    assert not first & second


def _strings(node: object, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_no_region_account_or_partition_is_written():
    for path, text in _strings({"Resources": RESOURCES, "Outputs": TEMPLATE["Outputs"], "Globals": TEMPLATE["Globals"]}):
        assert not REGION.search(text), f"{path}: a region literal in {text!r}"
        assert not re.search(r"(?<!\d)\d{12}(?!\d)", text), f"{path}: an account id in {text!r}"
        assert "arn:aws:" not in text, f"{path}: use arn:${{AWS::Partition}}: in {text!r}"


def test_the_experiment_server_policy_reads_only_the_secret_and_the_transcripts():
    (statement_secret, statement_table) = RESOURCES["ExperimentServerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement_secret == {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                                "Resource": {"Ref": "TicketSecret"}}
    assert set(statement_table["Action"]) == {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"}
    assert statement_table["Resource"] == {"Fn::GetAtt": ["ChatsTable", "Arn"]}


# ------------------------------------------------------------------------------ Lambda's 4 KB of environment

#: Lambda refuses a function whose variables exceed 4 KB, measured as their JSON (its error quotes
#: "String measured: {...}"): keys, values, quotes and separators.
ENVIRONMENT_LIMIT = 4096
LONGEST = {  # pseudo parameters, longer than any AWS gives
    "AWS::StackName": "s" * 128,  # CloudFormation's maximum
    "AWS::Region": "r" * 20,  # the longest Region names have 15 characters (us-isof-south-1)
    "AWS::AccountId": "1" * 12,
    "AWS::Partition": "aws-iso-b-xx",  # aws-us-gov, aws-iso-b: 10 or fewer
    "AWS::URLSuffix": "amazonaws.com.cn-xxxx",  # amazonaws.com.cn: 16
}


def _arn(service: str, resource: str) -> str:
    return f"arn:{LONGEST['AWS::Partition']}:{service}:{LONGEST['AWS::Region']}:{LONGEST['AWS::AccountId']}:{resource}"


def _generated(logical_id: str) -> str:
    """A name CloudFormation generates: stack name, logical id, a random suffix."""
    return f"{LONGEST['AWS::StackName']}-{logical_id}-ABCDEFGHIJKLM"


#: The longest value Ref (and GetAtt) can give, by resource type, within each service's limits.
LONGEST_REFS = {
    "AWS::DynamoDB::Table": lambda lid: {lid: "t" * 255, f"{lid}.Arn": _arn("dynamodb", "table/" + "t" * 255)},
    "AWS::Serverless::Function": lambda lid: {lid: "f" * 64, f"{lid}.Arn": _arn("lambda", "function:" + "f" * 64)},
    "AWS::SecretsManager::Secret": lambda lid: {lid: _arn("secretsmanager", f"secret:{_generated(lid)}-AbCdEf")},
    "AWS::SQS::Queue": lambda lid: {
        lid: f"https://sqs.{LONGEST['AWS::Region']}.{LONGEST['AWS::URLSuffix']}/{LONGEST['AWS::AccountId']}/{'q' * 80}",
        f"{lid}.Arn": _arn("sqs", "q" * 80), f"{lid}.QueueName": "q" * 80},
    "AWS::ApiGatewayV2::Api": lambda lid: {lid: "a" * 10},  # API ids have 10 characters
    "AWS::Serverless::HttpApi": lambda lid: {lid: "a" * 10},
}


def _longest_refs() -> dict[str, str]:
    refs: dict[str, str] = {}
    for logical_id, resource in RESOURCES.items():
        longest = LONGEST_REFS.get(resource["Type"])
        unknown = f"<add the longest Ref of {resource['Type']} to LONGEST_REFS>"
        refs |= longest(logical_id) if longest else {logical_id: unknown, f"{logical_id}.Arn": unknown}
    return refs


def _longest_parameters() -> dict[str, str]:
    """Every parameter that reaches an environment at its maximum."""
    declared = TEMPLATE["Parameters"]
    origins = [f"https://study-{i:02d}.{'x' * 70}.example.org" for i in range(20)]  # 20 origins of 99 characters
    values = {
        "AllowedOrigins": ",".join(origins),
        "OpenAIBaseUrl": "https://" + "m" * (declared["OpenAIBaseUrl"]["MaxLength"] - len("https://")),
        "Stage": "S" * 128,
        "TokenBudget": "9" * 15,
        "MaxChatsPerParticipant": "9" * 6,
        "ChatPaused": "false",
    }
    assert len(values["AllowedOrigins"]) <= declared["AllowedOrigins"]["MaxLength"] < len(values["AllowedOrigins"]) + 100
    return {k: v for k, v in values.items() if k in declared}


def test_long_parameters_are_refused_before_they_reach_an_environment():
    """The maxima below are the template's: CloudFormation refuses longer values (the Resolver checks as it does)."""
    for name in ("AllowedOrigins", "OpenAIBaseUrl"):
        limit = TEMPLATE["Parameters"][name]["MaxLength"]
        Resolver(TEMPLATE, {name: "x" * limit})
        with pytest.raises(TemplateError, match="MaxLength"):
            Resolver(TEMPLATE, {name: "x" * (limit + 1)})


@pytest.mark.parametrize("provisioned", ["0", "5"])
def test_every_environment_stays_under_lambdas_4_kb_at_the_longest_values(provisioned):
    parameters = _longest_parameters() | {"MessageProvisionedConcurrency": provisioned}
    functions = load(TEMPLATE_PATH, parameters=parameters, refs=_longest_refs(), pseudo=LONGEST).functions
    assert set(functions) == set(FUNCTIONS)
    for name, function in functions.items():
        measured = json.dumps(function.environment, separators=(",", ":"), ensure_ascii=False).encode()
        assert not [v for v in function.environment.values() if "<add the longest Ref" in v or ":local:::" in v], name
        assert len(measured) <= ENVIRONMENT_LIMIT, f"{name}: {len(measured)} bytes of environment"


# ------------------------------------------------------------------------------ stage: throttling, access logs


def test_the_throttling_parameters_say_their_limits_hold_for_each_route():
    for name in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
        description = TEMPLATE["Parameters"][name]["Description"]
        assert "each route" in description and "all routes together" not in description, name
    settings = RESOURCES["WebSocketStage"]["Properties"]["DefaultRouteSettings"]
    assert settings == {"ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
                        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"}}


@pytest.mark.parametrize(("logs", "role"), [("false", "false"), ("true", "false"), ("true", "true"), ("false", "true")])
def test_access_logs_and_the_accounts_cloudwatch_role_are_separate_opt_ins(logs, role):
    stack = _stack({"StageAccessLogs": logs, "ApiGatewayAccountRole": role})
    stage = stack.resolve(RESOURCES["WebSocketStage"]["Properties"], "stage")
    assert TEMPLATE["Parameters"]["StageAccessLogs"]["Default"] == "false"
    assert TEMPLATE["Parameters"]["ApiGatewayAccountRole"]["Default"] == "false"
    assert stack.exists("StageAccessLogGroup") == ("AccessLogSettings" in stage) == (logs == "true")
    assert stack.exists("ApiGatewayAccount") == stack.exists("ApiGatewayCloudWatchRole") == (role == "true")
    # the stage waits for the account's role when this stack sets it (a plain DependsOn could not be conditional)
    assert RESOURCES["WebSocketStage"]["DependsOn"] == "AccountRoleReady"
    ready = stack.resolve(RESOURCES["AccountRoleReady"]["Metadata"], "AccountRoleReady")
    assert ready == {"AccountRole": "ApiGatewayAccount" if role == "true" else ""}
    if logs == "true":
        settings = stage["AccessLogSettings"]
        assert settings["DestinationArn"] == "arn:aws:local:::StageAccessLogGroup"
        assert stack.resolve(RESOURCES["StageAccessLogGroup"]["Properties"]["RetentionInDays"], "r") == "30"
        fields = json.loads(settings["Format"])  # one JSON object per line
        assert "\n" not in settings["Format"] and len(settings["Format"].encode()) <= 3 * 1024  # API Gateway's limit
        assert {"requestId", "ip", "connectionId", "eventType", "routeKey", "status", "integrationError",
                "integrationLatency"} <= set(fields)
        assert all(value.startswith("$context.") for value in fields.values())
        assert not [v for v in fields.values() if "body" in v.lower() or v.startswith("$context.authorizer")]


def test_the_accounts_cloudwatch_role_is_api_gateways_and_outlives_the_stack():
    role = RESOURCES["ApiGatewayCloudWatchRole"]
    assert role["DeletionPolicy"] == "Retain"  # the account setting outlives the stack; other APIs use it
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert role["Properties"]["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"}]
    assert RESOURCES["ApiGatewayAccount"]["Properties"] == {"CloudWatchRoleArn": {"Fn::GetAtt":
                                                                                  ["ApiGatewayCloudWatchRole", "Arn"]}}
    description = TEMPLATE["Parameters"]["ApiGatewayAccountRole"]["Description"]
    assert "ACCOUNT-WIDE" in description and "every API" in description
