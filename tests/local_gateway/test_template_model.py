"""local_gateway.template: the local stack reads routes, handlers, environment and tables
from template.yaml, so it cannot drift from production."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import boto3
import pytest

from local_gateway.template import (
    NoRoute,
    QueueSource,
    WebSocketApi,
    create_tables,
    load,
    route_for,
)
from ws_handlers.ops.template import TemplateError

TEMPLATE = load()


# ------------------------------------------------------------------------------ the real template


def test_routes_map_to_their_functions():
    assert TEMPLATE.api.route_selection_expression == "$request.body.action"
    assert TEMPLATE.api.routes == {
        "$connect": "ConnectFunction",
        "$disconnect": "DisconnectFunction",
        "start": "MessageFunction",
        "send": "MessageFunction",
        "history": "MessageFunction",
        "$default": "MessageFunction",
    }
    # API Gateway answers ping itself (a MOCK integration with a route response): no function
    assert TEMPLATE.api.mocks == {"ping": '{"type":"pong"}'}


@pytest.mark.parametrize("provisioned", ["0", "3"])
def test_routes_survive_the_provisioned_alias(provisioned):
    # with provisioned concurrency the message integration targets the function's alias
    # (SAM's `Ref MessageFunction.Alias`): locally that is the same handler
    template = load(parameters={"MessageProvisionedConcurrency": provisioned})
    assert template.api.routes == TEMPLATE.api.routes
    assert template.functions["MessageFunction"] == TEMPLATE.functions["MessageFunction"]


@pytest.mark.parametrize("provisioned", ["0", "3"])
def test_the_reply_queue_survives_the_provisioned_alias(provisioned):
    # with AutoPublishAlias the queue's event source mapping invokes the reply function's alias
    # (provisioned or not): locally the same handler drains the same queue, capped by LlmConcurrency
    template = load(parameters={"ReplyProvisionedConcurrency": provisioned, "LlmConcurrency": "7"})
    reply = template.functions["ReplyFunction"]
    assert reply == load(parameters={"LlmConcurrency": "7"}).functions["ReplyFunction"]
    assert reply.handler == "ws_handlers.reply.handler" and reply.reserved_concurrency is None
    assert [(s.queue, s.maximum_concurrency) for s in reply.queue_sources] == [("ReplyQueue", 7)]
    assert template.api.routes == TEMPLATE.api.routes


def test_stage_and_throttling_come_from_parameters():
    assert (TEMPLATE.api.stage, TEMPLATE.api.throttling_rate, TEMPLATE.api.throttling_burst) == ("prod", 500.0, 1000)
    api = load(parameters={"Stage": "dev", "ThrottlingRateLimit": "5"}).api
    assert (api.stage, api.throttling_rate) == ("dev", 5.0)


def test_the_entry_routes_throttling_and_concurrency_come_from_the_http_api():
    [route] = TEMPLATE.http_routes
    assert (route.method, route.path, route.function) == ("POST", "/studies/{study}/entry", "EnrolFunction")
    assert (route.throttling_rate, route.throttling_burst) == (50.0, 200)  # EntryApi's DefaultRouteSettings
    [route] = load(parameters={"EntryThrottlingRateLimit": "2", "EntryThrottlingBurstLimit": "3"}).http_routes
    assert (route.throttling_rate, route.throttling_burst) == (2.0, 3)
    assert TEMPLATE.functions["EnrolFunction"].reserved_concurrency is None  # nothing reserved: no 500 of its own


@pytest.mark.parametrize("name", sorted(TEMPLATE.functions))
def test_handlers_load(name):
    function = TEMPLATE.functions[name]
    assert callable(function.load())
    assert function.load().__module__ == function.handler.rsplit(".", 1)[0]


def test_environment_merges_globals_and_resolves_refs():
    template = load(refs={"ReplyQueue": "http://queue.local/reply", "ConnectionsTable": "conns-local"})
    env = template.functions["MessageFunction"].environment
    assert env["REPLY_QUEUE_URL"] == "http://queue.local/reply"
    assert env["CONNECTIONS_TABLE"] == "conns-local"  # from Globals
    assert env["CHATS_TABLE"] == "ChatsTable"  # no ref given: the logical id
    assert env["TICKET_SECRET_ARN"] == "TicketSecret"  # the function's own
    assert env["POWERTOOLS_SERVICE_NAME"] == "local"  # AWS::StackName
    assert env["WEBSOCKET_ENDPOINT"] == "https://WebSocketApi.execute-api.us-east-1.amazonaws.com/prod"
    assert template.tables["ConnectionsTable"]["TableName"] == "conns-local"  # the same name as the env
    assert "REPLY_QUEUE_URL" not in template.functions["ReplyFunction"].environment


def test_parameters_override_defaults():
    assert TEMPLATE.functions["ConnectFunction"].environment["ALLOWED_ORIGINS"] == ""
    template = load(parameters={"AllowedOrigins": "https://a.example", "ChatPaused": "true"})
    for function in template.functions.values():
        assert function.environment["ALLOWED_ORIGINS"] == "https://a.example"
        assert function.environment["CHAT_PAUSED"] == "true"


@pytest.mark.parametrize(
    "parameters",
    [{"NoSuchParameter": "1"}, {"ChatPaused": "maybe"}, {"Stage": "a/b"}, {"LlmConcurrency": "1"},
     {"LlmConcurrency": "1001"}],
)
def test_bad_parameters_are_refused_as_at_deploy(parameters):
    with pytest.raises(TemplateError):
        load(parameters=parameters)


def test_reply_function_sizing_and_its_queue():
    reply = TEMPLATE.functions["ReplyFunction"]
    assert (reply.timeout, reply.memory_mb) == (300, 512)
    assert reply.reserved_concurrency is None and reply.max_retry_attempts is None
    assert reply.queue_sources == (QueueSource(queue="ReplyQueue", batch_size=1, maximum_concurrency=50,
                                               visibility_timeout=1800, retention=3600, max_receive_count=5),)
    (source,) = load(parameters={"LlmConcurrency": "7"}).functions["ReplyFunction"].queue_sources
    assert source.maximum_concurrency == 7
    disconnect = TEMPLATE.functions["DisconnectFunction"]
    assert (disconnect.timeout, disconnect.memory_mb, disconnect.reserved_concurrency) == (10, 256, None)
    assert disconnect.max_retry_attempts is None and disconnect.queue_sources == ()


def test_tables():
    chats = TEMPLATE.tables["ChatsTable"]
    assert chats["TableName"] == "ChatsTable"
    assert chats["BillingMode"] == "PAY_PER_REQUEST"
    assert [k["AttributeName"] for k in chats["KeySchema"]] == ["pk", "sk"]
    assert [i["IndexName"] for i in chats["GlobalSecondaryIndexes"]] == ["by_experiment"]
    assert TEMPLATE.ttl == {"ConnectionsTable": "expires_at", "ChatsTable": "expires_at"}


# ------------------------------------------------------------------------------ routing

API = TEMPLATE.api


@pytest.mark.parametrize(
    ("body", "route"),
    [
        ('{"action": "send", "text": "hi"}', "send"),
        ('{"action":"ping"}', "ping"),
        ('{"action":"nope"}', "$default"),
        ('{"action":"$connect"}', "$default"),
        ('{"action":"$disconnect"}', "$default"),
        ('{"text": "no action"}', "$default"),
        ("not json", "$default"),
        ("", "$default"),
        (None, "$default"),
        ("[1]", "$default"),
        ('"send"', "$default"),
        ('{"action": 5}', "$default"),
        ('{"action": null}', "$default"),
        ('{"action": {"x": 1}}', "$default"),
        (b'{"action":"history"}', "history"),
        (b"\xff\xfe", "$default"),
        # nested too deep for the parser: unparseable, so $default (the handler answers bad_frame)
        ("[" * 1_000 + "]" * 1_000, "$default"),
        ('{"action":"send","x":' + "[" * 5_000 + "]" * 5_000 + "}", "$default"),
        ('{"action":"ping","x":' + '{"a":' * 5_000 + "1" + "}" * 5_000 + "}", "$default"),
        ("[" * 10_000 + "]" * 10_000, "$default"),
        # parseable: routed by its action, however deep or wide the rest
        ('{"action":"send","x":' + "[" * 100 + "]" * 100 + "}", "send"),
        ('{"action":"ping","x":[' + ",".join(["0"] * 10_000) + "]}", "ping"),
    ],
)
def test_route_for(body, route):
    assert route_for(API, body) == route


def test_route_for_dotted_and_braced_paths():
    api = WebSocketApi("${request.body.meta.kind}-v1", {"a-v1": "F", "$default": "G"}, "s", None, None)
    assert route_for(api, '{"meta": {"kind": "a"}}') == "a-v1"
    assert route_for(api, '{"meta": {"kind": "b"}}') == "$default"
    assert route_for(api, '{"meta": "a"}') == "$default"
    dotted = WebSocketApi("$request.body.a.b", {"x": "F"}, "s", None, None)
    assert route_for(dotted, '{"a": {"b": "x"}}') == "x"


def test_route_for_without_default_raises():
    api = WebSocketApi("$request.body.action", {"send": "F", "$connect": "C"}, "s", None, None)
    assert route_for(api, '{"action": "send"}') == "send"
    with pytest.raises(NoRoute):
        route_for(api, '{"action": "nope"}')
    with pytest.raises(LookupError):  # what the gateway catches
        route_for(api, "not json")


MOCKED = """
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties: {Handler: ws_handlers.message.handler}
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: {ProtocolType: WEBSOCKET, RouteSelectionExpression: $request.body.op}
  Proxy:
    Type: AWS::ApiGatewayV2::Integration
    Properties: {ApiId: !Ref Api, IntegrationType: AWS_PROXY, IntegrationUri: !GetAtt Fn.Arn}
  Mock:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: MOCK
      RequestTemplates: {$default: '{"statusCode": 200}'}
      TemplateSelectionExpression: \\$default
  MockResponse:
    Type: AWS::ApiGatewayV2::IntegrationResponse
    Properties:
      ApiId: !Ref Api
      IntegrationId: !Ref Mock
      IntegrationResponseKey: $default
      ResponseTemplates: {$default: '{"type":"pong"}'}
  Default:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: $default, Target: !Sub "integrations/${Proxy}"}
  TwoWay:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: ping, RouteResponseSelectionExpression: $default,
                 Target: !Sub "integrations/${Mock}"}
  TwoWayResponse:
    Type: AWS::ApiGatewayV2::RouteResponse
    Properties: {ApiId: !Ref Api, RouteId: !Ref TwoWay, RouteResponseKey: $default}
  OneWay:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: noop, Target: !Sub "integrations/${Mock}"}
  Stage:
    Type: AWS::ApiGatewayV2::Stage
    Properties: {ApiId: !Ref Api, StageName: s}
"""


def test_mock_integrations_answer_without_a_function(mini):
    api = load(mini(MOCKED)).api
    assert api.routes == {"$default": "Fn"}
    # two-way (a route response): the integration response's template; one-way: nothing at all
    assert api.mocks == {"ping": '{"type":"pong"}', "noop": None}
    assert route_for(api, '{"op": "ping"}') == "ping" and route_for(api, '{"op": "noop"}') == "noop"
    assert route_for(api, '{"op": "other"}') == "$default"


@pytest.mark.parametrize("change", [
    ("ResponseTemplates: {$default: '{\"type\":\"pong\"}'}", "ResponseTemplates: {$default: '$input.body'}"),
    ("IntegrationResponseKey: $default", "IntegrationResponseKey: /2\\d\\d/"),
])
def test_a_mock_response_the_stack_cannot_emulate_is_refused(mini, change):
    with pytest.raises(TemplateError, match="MockResponse"):
        load(mini(MOCKED.replace(*change)))


# ------------------------------------------------------------------------------ tables on moto


def test_create_tables_on_moto_server(moto_url):
    client = boto3.client(
        "dynamodb", endpoint_url=moto_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    suffix = uuid.uuid4().hex[:8]  # moto's backend is shared by the process: names of our own
    refs = {"ConnectionsTable": f"connections-{suffix}", "ChatsTable": f"chats-{suffix}"}
    try:
        create_tables(client, TEMPLATE, names=refs)
        create_tables(client, TEMPLATE, names=refs)  # idempotent
        for logical_id, name in refs.items():
            table = client.describe_table(TableName=name)["Table"]
            assert table["KeySchema"] == TEMPLATE.tables[logical_id]["KeySchema"]
            ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
        (index,) = client.describe_table(TableName=refs["ChatsTable"])["Table"]["GlobalSecondaryIndexes"]
        assert index["IndexName"] == "by_experiment"
        assert [k["AttributeName"] for k in index["KeySchema"]] == ["gsi1pk", "gsi1sk"]
    finally:
        for name in refs.values():
            client.delete_table(TableName=name)


# ------------------------------------------------------------------------------ the resolver

MINI = """
Parameters:
  Mode: {Type: String, Default: fast, AllowedValues: [fast, slow]}
  Cap: {Type: Number, Default: 0}
Conditions:
  IsFast: !Equals [!Ref Mode, fast]
  Capped: !Not [!Equals [!Ref Cap, 0]]
  Both: !Not [!Or [!Equals [!Ref Mode, slow], !Equals [!Ref Cap, 0]]]
Globals:
  Function:
    Timeout: 7
    Environment:
      Variables: {SHARED: one, OVERRIDDEN: globals}
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
      KeySchema: [{AttributeName: id, KeyType: HASH}]
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: ws_handlers.message.handler
      ReservedConcurrentExecutions: !If [Capped, !Ref Cap, !Ref AWS::NoValue]
      Environment:
        Variables:
          OVERRIDDEN: own
          SUB_MAP: !Sub ["${Name}-${AWS::Region}-${Table}-${!Literal}", {Name: !Ref Mode}]
          SUB_ATTR: !Sub "${Table.Arn}|${Table.StreamArn}"
          IF: !If [IsFast, quick, !Ref Mode]
          BOTH: !If [Both, yes-both, no-both]
          GONE: !If [IsFast, !Ref AWS::NoValue, kept]
          NUMBER: 42
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: {ProtocolType: WEBSOCKET, RouteSelectionExpression: $request.body.op}
  Integration:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationUri: !Sub ["arn:...:functions/${Target}/invocations", {Target: !GetAtt [Fn, Arn]}]
  Route:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: go, Target: !Sub "integrations/${Integration}"}
  Stage:
    Type: AWS::ApiGatewayV2::Stage
    Properties: {ApiId: !Ref Api, StageName: !Sub "${Mode}-stage"}
"""


@pytest.fixture
def mini(tmp_path: Path):
    def write(text: str = MINI) -> Path:
        path = tmp_path / "template.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def test_resolver_on_a_mini_template(mini):
    template = load(mini(), refs={"Table.StreamArn": "stream-arn"})
    function = template.functions["Fn"]
    assert function.environment == {
        "SHARED": "one",
        "OVERRIDDEN": "own",
        "SUB_MAP": "fast-us-east-1-Table-${Literal}",
        "SUB_ATTR": "arn:aws:local:::Table|stream-arn",
        "IF": "quick",
        "BOTH": "no-both",
        "NUMBER": "42",
    }  # GONE is dropped by AWS::NoValue
    assert (function.timeout, function.memory_mb, function.reserved_concurrency) == (7, 128, None)
    assert template.api.routes == {"go": "Fn"}
    assert template.api.stage == "fast-stage"
    assert (template.api.throttling_rate, template.api.throttling_burst) == (None, None)
    assert template.ttl == {}


def test_conditions_follow_parameters(mini):
    function = load(mini(), parameters={"Mode": "slow", "Cap": "3"}, refs={"Table.StreamArn": "s"}).functions["Fn"]
    assert function.environment["IF"] == "slow"
    assert function.environment["GONE"] == "kept"
    assert function.environment["BOTH"] == "no-both"  # IsFast is false
    assert function.reserved_concurrency == 3
    capped = load(mini(), parameters={"Cap": "3"}, refs={"Table.StreamArn": "s"}).functions["Fn"]
    assert capped.environment["BOTH"] == "yes-both"


def test_a_get_att_without_a_local_value_names_its_path(mini):
    with pytest.raises(TemplateError, match=r"Fn\.Properties\.Environment\.Variables\.SUB_ATTR.*refs"):
        load(mini())


@pytest.mark.parametrize("intrinsic", ["!ImportValue other-stack-export", '!Join ["-", [a, b]]',
                                       "!FindInMap [Sizes, !Ref Mode, Memory]"])
def test_an_unknown_intrinsic_names_its_path(mini, intrinsic):
    """Only what our templates use is resolved; anything else is refused where it stands."""
    path = mini(MINI.replace("NUMBER: 42", f"NUMBER: {intrinsic}"))
    with pytest.raises(TemplateError, match=r"Resources\.Fn\.Properties\.Environment\.Variables\.NUMBER"):
        load(path, refs={"Table.StreamArn": "s"})


def test_an_unknown_ref_and_a_duplicate_key_are_refused(mini):
    with pytest.raises(TemplateError, match="NoSuchThing"):
        load(mini(MINI.replace("${Integration}", "${NoSuchThing}")), refs={"Table.StreamArn": "s"})
    with pytest.raises(TemplateError, match="duplicate key 'OVERRIDDEN'"):
        load(mini(MINI.replace("OVERRIDDEN: own", "OVERRIDDEN: own\n          OVERRIDDEN: again")))


CHOSEN = """
Parameters:
  Variant: {Type: String, Default: a, AllowedValues: [a, b]}
Conditions:
  IsA: !Equals [!Ref Variant, a]
Resources:
  FnA:
    Type: AWS::Serverless::Function
    Properties: {Handler: ws_handlers.message.handler, AutoPublishAlias: live}
  FnB:
    Type: AWS::Serverless::Function
    Properties: {Handler: ws_handlers.connect.handler}
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: {ProtocolType: WEBSOCKET, RouteSelectionExpression: $request.body.action}
  Integration:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationUri: !If
        - IsA
        - !Sub ["arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/functions/${Target}/invocations",
                {Target: !Ref FnA.Alias}]
        - !Sub "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/functions/${FnB.Arn}/invocations"
  Route:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: go, Target: !Sub "integrations/${Integration}"}
  Stage:
    Type: AWS::ApiGatewayV2::Stage
    Properties: {ApiId: !Ref Api, StageName: s}
"""


def test_an_integration_chosen_by_a_condition_follows_the_parameters(mini):
    # both branches name a function: only the one the condition picks is routed to;
    # SAM's `!Ref Function.Alias` counts as the function
    path = mini(CHOSEN)
    assert load(path).api.routes == {"go": "FnA"}
    assert load(path, parameters={"Variant": "b"}).api.routes == {"go": "FnB"}
