"""template.yaml, read into plain dataclasses for the local stack.

The local stack must run what production runs: the same routes, the same handlers, each
function's environment, timeouts and concurrency, the same tables. Rather than restating
any of that (and drifting the day someone edits the template), it is all read from the
SAM template here. Nothing in this module names a resource of our template: the WebSocket
API, its routes, integrations and stage, the functions and the tables are discovered by
type. Reading the template and resolving its intrinsic functions is `ws_handlers.ops.template`'s
(the operator's CLI reads deployed templates with it too); what it cannot read raises
`TemplateError`, with the path in the template.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ws_handlers.ops.template import (
    DEFAULT_PATH,
    NO_VALUE,
    Resolver,
    TemplateError,
    as_int,
    as_text,
    mentions,
    of_type,
    read_template,
)

#: create_table arguments that CloudFormation spells as boto3 does.
_TABLE_ARGUMENTS = (
    "AttributeDefinitions",
    "KeySchema",
    "BillingMode",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "ProvisionedThroughput",
)


class NoRoute(LookupError):
    """A frame matches no route and the API has no $default: API Gateway answers an error."""


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class QueueSource:
    """An SQS queue that a function drains through an event source mapping (SAM `Events`
    of Type SQS), with what the local queue needs of the queue and of the mapping."""

    queue: str  #: the queue's logical id (what Ref of it resolves to locally)
    batch_size: int
    maximum_concurrency: int | None  #: ScalingConfig.MaximumConcurrency; None: unbounded
    visibility_timeout: int  #: seconds
    retention: int  #: MessageRetentionPeriod, seconds
    max_receive_count: int | None  #: RedrivePolicy; None: no dead-letter queue


@dataclass(frozen=True)
class Function:
    logical_id: str
    handler: str  #: "package.module.function", relative to CodeUri's root
    environment: dict[str, str]  #: Globals then own variables, intrinsics resolved
    timeout: int  #: seconds
    memory_mb: int
    reserved_concurrency: int | None  #: None when unreserved
    max_retry_attempts: int | None  #: EventInvokeConfig; None = not configured (Lambda's default)
    max_event_age: int | None  #: seconds; EventInvokeConfig, as above
    queue_sources: tuple[QueueSource, ...] = ()

    def load(self) -> Callable[[dict, Any], Any]:
        """Import the handler's module and return the handler."""
        module, _, attribute = self.handler.replace("/", ".").rpartition(".")
        handler = getattr(importlib.import_module(module), attribute, None)
        if not callable(handler):
            raise TemplateError(f"{self.logical_id}: handler {self.handler!r} is not a callable")
        return handler


@dataclass(frozen=True)
class WebSocketApi:
    route_selection_expression: str  #: e.g. "$request.body.action"
    routes: dict[str, str]  #: route key -> function logical id (Lambda proxy integrations)
    stage: str
    throttling_rate: float | None  #: stage DefaultRouteSettings, requests per second
    throttling_burst: int | None
    #: route key -> what its MOCK integration sends back (None: a one-way route, nothing); no function runs
    mocks: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpRoute:
    """A route of an HTTP API (a function's `Type: HttpApi` event): payload 2.0 events to `function`."""

    method: str  #: POST, GET ... (upper case)
    path: str  #: "/studies/{study}/entry": API Gateway's path parameters, which aiohttp reads alike
    function: str  #: the function's logical id
    #: the stage's route settings for this route (the API's DefaultRouteSettings, then its RouteSettings
    #: for the route key): requests per second and burst; None where nothing is set (the account's limits only)
    throttling_rate: float | None = None
    throttling_burst: int | None = None


@dataclass(frozen=True)
class Template:
    api: WebSocketApi
    functions: dict[str, Function]
    tables: dict[str, dict[str, Any]]  #: logical id -> boto3 create_table kwargs
    ttl: dict[str, str] = field(default_factory=dict)  #: logical id -> TTL attribute (enabled ones)
    http_routes: tuple[HttpRoute, ...] = ()  #: the HTTP APIs' routes (the study entry)


# ------------------------------------------------------------------------------ reading


def load(
    path: str | Path = DEFAULT_PATH,
    *,
    parameters: Mapping[str, str] | None = None,
    refs: Mapping[str, str] | None = None,
    pseudo: Mapping[str, str] | None = None,
) -> Template:
    """Read the template. `parameters` override Defaults; `refs` give resources' physical
    names (Ref X -> refs[X], GetAtt X.Attr -> refs["X.Attr"]), else the logical id; `pseudo`
    overrides PSEUDO_PARAMETERS (another AWS::StackName, AWS::Region ...)."""
    document = read_template(path)
    resolver = Resolver(document, parameters, refs, pseudo)
    defaults = (document.get("Globals") or {}).get("Function") or {}  # SAM's Globals
    tables = of_type(resolver, "AWS::DynamoDB::Table")
    return Template(
        api=_websocket_api(resolver),
        functions={
            logical_id: _function(resolver, logical_id, properties, defaults)
            for logical_id, properties in of_type(resolver, "AWS::Serverless::Function").items()
        },
        tables={logical_id: _table(resolver, logical_id) for logical_id in tables},
        ttl={logical_id: name for logical_id in tables if (name := _ttl(resolver, logical_id))},
        http_routes=tuple(
            route for logical_id, properties in of_type(resolver, "AWS::Serverless::Function").items()
            for route in _http_routes(resolver, logical_id, properties)
        ),
    )


def _http_routes(resolver: Resolver, logical_id: str, own: dict) -> list[HttpRoute]:
    """The function's HttpApi events. Payload 2.0 only (the HTTP API's default): that is what the handlers read."""
    routes = []
    for name, event in (own.get("Events") or {}).items():
        if event.get("Type") != "HttpApi":
            continue
        where = f"Resources.{logical_id}.Properties.Events.{name}.Properties"
        properties = resolver.resolve(event.get("Properties") or {}, where)
        if str(properties.get("PayloadFormatVersion", "2.0")) != "2.0":
            raise TemplateError(f"{where}.PayloadFormatVersion: the local stack serves payload 2.0 only")
        method = as_text(properties["Method"], f"{where}.Method").upper()
        path = as_text(properties["Path"], f"{where}.Path")
        rate, burst = _route_throttling(resolver, (event.get("Properties") or {}).get("ApiId"), f"{method} {path}")
        routes.append(HttpRoute(method, path, logical_id, rate, burst))
    return routes


def _route_throttling(resolver: Resolver, api: Any, route_key: str) -> tuple[float | None, int | None]:
    """The rate and burst API Gateway applies to one route of an AWS::Serverless::HttpApi: its
    DefaultRouteSettings, overridden by RouteSettings[route key] (each route has its own bucket).
    An event without ApiId belongs to SAM's implicit API, which sets none."""
    names = mentions(api) & set(of_type(resolver, "AWS::Serverless::HttpApi"))
    if not names:
        return None, None
    name = _only(names, "ApiId", "AWS::Serverless::HttpApi")
    where = f"Resources.{name}.Properties"
    properties = of_type(resolver, "AWS::Serverless::HttpApi")[name]
    settings = resolver.resolve(properties.get("DefaultRouteSettings") or {}, f"{where}.DefaultRouteSettings")
    own = resolver.resolve(properties.get("RouteSettings") or {}, f"{where}.RouteSettings").get(route_key) or {}
    settings = {k: v for k, v in (settings | own).items() if v is not NO_VALUE}
    rate, burst = settings.get("ThrottlingRateLimit"), settings.get("ThrottlingBurstLimit")
    return (None if rate is None else float(as_text(rate, f"{where}.DefaultRouteSettings.ThrottlingRateLimit")),
            None if burst is None else as_int(burst, f"{where}.DefaultRouteSettings.ThrottlingBurstLimit"))


def _only(found: set[str], path: str, what: str) -> str:
    if len(found) != 1:
        raise TemplateError(f"{path}: expected exactly one {what}, found {sorted(found) or 'none'}")
    return next(iter(found))


def _function(resolver: Resolver, logical_id: str, own: dict, defaults: dict) -> Function:
    where = f"Resources.{logical_id}.Properties"

    def prop(name: str, default: Any = None) -> Any:  # own wins over Globals
        if name in own:
            value = resolver.resolve(own[name], f"{where}.{name}")
        elif name in defaults:
            value = resolver.resolve(defaults[name], f"Globals.Function.{name}")
        else:
            return default
        return default if value is NO_VALUE else value

    def optional_int(value: Any, name: str) -> int | None:
        return None if value is None else as_int(value, f"{where}.{name}")

    environment: dict[str, str] = {}  # merged key by key, as SAM merges Globals
    for origin, properties in (("Globals.Function", defaults), (where, own)):
        path = f"{origin}.Environment.Variables"
        variables = resolver.resolve((properties.get("Environment") or {}).get("Variables") or {}, path)
        environment |= {name: as_text(value, f"{path}.{name}") for name, value in variables.items()}

    handler = prop("Handler")
    if handler is None:
        raise TemplateError(f"{where}: no Handler")
    invoke_config = prop("EventInvokeConfig", {})
    return Function(
        logical_id=logical_id,
        handler=as_text(handler, f"{where}.Handler"),
        environment=environment,
        timeout=as_int(prop("Timeout", 3), f"{where}.Timeout"),  # 3 s and 128 MB are Lambda's defaults
        memory_mb=as_int(prop("MemorySize", 128), f"{where}.MemorySize"),
        reserved_concurrency=optional_int(prop("ReservedConcurrentExecutions"), "ReservedConcurrentExecutions"),
        max_retry_attempts=optional_int(invoke_config.get("MaximumRetryAttempts"), "EventInvokeConfig"),
        max_event_age=optional_int(invoke_config.get("MaximumEventAgeInSeconds"), "EventInvokeConfig"),
        queue_sources=tuple(_queue_sources(resolver, logical_id, own)),
    )


def _queue_sources(resolver: Resolver, logical_id: str, own: dict) -> list[QueueSource]:
    """The function's SQS events, with the properties of the queues they name (SQS's defaults
    where the template sets none: visibility 30 s, retention 4 days, batches of 10)."""
    sources = []
    for name, event in (own.get("Events") or {}).items():
        where = f"Resources.{logical_id}.Properties.Events.{name}"
        if event.get("Type") != "SQS":
            continue
        properties = event.get("Properties") or {}
        queue = _only(mentions(properties.get("Queue")), f"{where}.Properties.Queue", "queue")
        queue_where = f"Resources.{queue}.Properties"
        queue_properties = resolver.resolve(resolver.resources[queue].get("Properties") or {}, queue_where)
        redrive = queue_properties.get("RedrivePolicy") or {}
        scaling = resolver.resolve(properties.get("ScalingConfig") or {}, f"{where}.Properties.ScalingConfig")
        maximum = scaling.get("MaximumConcurrency")
        receives = redrive.get("maxReceiveCount")
        sources.append(QueueSource(
            queue=queue,
            batch_size=as_int(resolver.resolve(properties.get("BatchSize", 10), where), f"{where}.Properties.BatchSize"),
            maximum_concurrency=None if maximum is None else as_int(maximum, f"{where}.ScalingConfig"),
            visibility_timeout=as_int(queue_properties.get("VisibilityTimeout", 30), f"{queue_where}.VisibilityTimeout"),
            retention=as_int(queue_properties.get("MessageRetentionPeriod", 345_600), f"{queue_where}.MessageRetentionPeriod"),
            max_receive_count=None if receives is None else as_int(receives, f"{queue_where}.RedrivePolicy"),
        ))
    return sources


def _websocket_api(resolver: Resolver) -> WebSocketApi:
    apis = {
        logical_id: properties
        for logical_id, properties in of_type(resolver, "AWS::ApiGatewayV2::Api").items()
        if resolver.resolve(properties.get("ProtocolType"), f"Resources.{logical_id}.Properties") == "WEBSOCKET"
    }
    api_id = _only(set(apis), "Resources", "AWS::ApiGatewayV2::Api with ProtocolType WEBSOCKET")
    where = f"Resources.{api_id}.Properties.RouteSelectionExpression"
    expression = as_text(resolver.resolve(apis[api_id].get("RouteSelectionExpression"), where), where)
    if "$" in _SELECTION_VARIABLE.sub("", expression):
        raise TemplateError(f"{where}: only $request.body.* variables are supported, got {expression!r}")

    def of_api(kind: str) -> dict[str, dict]:
        return {k: p for k, p in of_type(resolver, kind).items() if api_id in mentions(p.get("ApiId"))}

    integrations = of_api("AWS::ApiGatewayV2::Integration")
    route_responses = of_api("AWS::ApiGatewayV2::RouteResponse")
    integration_responses = of_api("AWS::ApiGatewayV2::IntegrationResponse")
    functions = set(of_type(resolver, "AWS::Serverless::Function"))
    routes: dict[str, str] = {}
    mocks: dict[str, str | None] = {}
    for route_id, properties in of_api("AWS::ApiGatewayV2::Route").items():
        where = f"Resources.{route_id}.Properties"
        key = as_text(resolver.resolve(properties.get("RouteKey"), f"{where}.RouteKey"), f"{where}.RouteKey")
        target = resolver.choose(properties.get("Target"), f"{where}.Target")
        if not str(resolver.resolve(target, f"{where}.Target")).startswith("integrations/"):
            raise TemplateError(f"{where}.Target: expected integrations/<integration>, got {target!r}")
        integration = _only(mentions(target) & set(integrations), f"{where}.Target", "integration of the API")
        if key in routes or key in mocks:
            raise TemplateError(f"{where}.RouteKey: route {key!r} is defined twice")
        kind = resolver.resolve(integrations[integration].get("IntegrationType"), f"Resources.{integration}.Properties")
        if kind == "MOCK":
            two_way = any(route_id in mentions(p.get("RouteId")) for p in route_responses.values())
            mocks[key] = _mock_answer(resolver, integration, integration_responses) if two_way else None
            continue
        where_uri = f"Resources.{integration}.Properties.IntegrationUri"
        # e.g. !If [Provisioned, <the function's alias>, <the function>]: the branch these parameters pick
        uri = resolver.choose(integrations[integration].get("IntegrationUri"), where_uri)
        routes[key] = _only(mentions(uri) & functions, where_uri, "AWS::Serverless::Function")

    stages = of_api("AWS::ApiGatewayV2::Stage")
    stage_id = _only(set(stages), "Resources", f"AWS::ApiGatewayV2::Stage of {api_id}")
    stage, where = stages[stage_id], f"Resources.{stage_id}.Properties"
    settings = resolver.resolve(stage.get("DefaultRouteSettings") or {}, f"{where}.DefaultRouteSettings")
    rate, burst = settings.get("ThrottlingRateLimit"), settings.get("ThrottlingBurstLimit")
    return WebSocketApi(
        route_selection_expression=expression,
        routes=routes,
        stage=as_text(resolver.resolve(stage.get("StageName"), f"{where}.StageName"), f"{where}.StageName"),
        throttling_rate=None if rate is None else float(as_text(rate, f"{where}.DefaultRouteSettings")),
        throttling_burst=None if burst is None else as_int(burst, f"{where}.DefaultRouteSettings"),
        mocks=mocks,
    )


def _mock_answer(resolver: Resolver, integration: str, responses: dict[str, dict]) -> str:
    """The frame a MOCK integration answers with: its one integration response, keyed `$default`,
    with one template and no Velocity in it (what the local stack can send as API Gateway would)."""
    found = {k: p for k, p in responses.items() if integration in mentions(p.get("IntegrationId"))}
    name = _only(set(found), f"Resources.{integration}", "AWS::ApiGatewayV2::IntegrationResponse")
    where = f"Resources.{name}.Properties"
    response = resolver.resolve(found[name], where)
    templates = list((response.get("ResponseTemplates") or {}).values())
    if response.get("IntegrationResponseKey") != "$default" or len(templates) != 1:
        raise TemplateError(f"{where}: the local stack emulates one $default response with one template")
    template = as_text(templates[0], f"{where}.ResponseTemplates")
    if "$" in template or "#" in template:
        raise TemplateError(f"{where}.ResponseTemplates: Velocity ($, #) is not emulated, got {template!r}")
    return template


def _table(resolver: Resolver, logical_id: str) -> dict[str, Any]:
    """create_table kwargs; the name is what Ref of the table gives, so it matches the environment."""
    where = f"Resources.{logical_id}.Properties"
    properties = resolver.resources[logical_id].get("Properties") or {}
    kwargs = {"TableName": resolver.ref(logical_id, where)}
    for name in _TABLE_ARGUMENTS:
        if name in properties and (value := resolver.resolve(properties[name], f"{where}.{name}")) is not NO_VALUE:
            kwargs[name] = value
    if "StreamSpecification" in properties:
        stream = resolver.resolve(properties["StreamSpecification"], f"{where}.StreamSpecification")
        kwargs["StreamSpecification"] = {"StreamEnabled": True, **stream}
    return kwargs


def _ttl(resolver: Resolver, logical_id: str) -> str | None:
    where = f"Resources.{logical_id}.Properties.TimeToLiveSpecification"
    spec = (resolver.resources[logical_id].get("Properties") or {}).get("TimeToLiveSpecification")
    spec = resolver.resolve(spec, where) if spec is not None else {}
    if spec is NO_VALUE or as_text(spec.get("Enabled", False), where) != "true":
        return None
    return as_text(spec["AttributeName"], f"{where}.AttributeName")


def create_tables(client: Any, template: Template, names: Mapping[str, str] | None = None) -> None:
    """Create the template's tables (existing ones are kept) and enable their TTL. `names` renames
    tables by logical id (a test's own names); the others are named as Ref of them resolves."""
    existing = {name for page in client.get_paginator("list_tables").paginate() for name in page["TableNames"]}
    for logical_id, kwargs in template.tables.items():
        name = (names or {}).get(logical_id, kwargs["TableName"])
        kwargs = kwargs | {"TableName": name}
        if name not in existing:
            try:
                client.create_table(**kwargs)
            except client.exceptions.ResourceInUseException:
                pass  # created meanwhile by another process
            client.get_waiter("table_exists").wait(TableName=name)
        attribute = template.ttl.get(logical_id)
        if attribute is None:
            continue
        current = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute}
            )


# ------------------------------------------------------------------------------ routing

# `\$` is a literal dollar; $request.body.a.b and ${request.body.a.b} are JSON paths.
_SELECTION_VARIABLE = re.compile(r"\\\$|\$\{request\.body\.([^}]+)\}|\$request\.body\.(\w+(?:\.\w+)*)")


def route_for(api: WebSocketApi, body: str | bytes | None) -> str:
    """The route key API Gateway picks for a frame: the route selection expression
    evaluated on the JSON body, else $default (non-JSON, non-object, missing or non-string
    value, unknown key). Raises NoRoute when there is no $default either."""
    try:
        document = json.loads(body)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError):  # None, non-JSON, bytes not UTF-8, nested too deep
        document = None
    missing = False

    def value(match: re.Match) -> str:
        nonlocal missing
        if match.group(0) == "\\$":
            return "$"
        node: Any = document
        for part in (match.group(1) or match.group(2)).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, str):
            missing = True
            return ""
        return node

    key = _SELECTION_VARIABLE.sub(value, api.route_selection_expression)
    keys = api.routes.keys() | api.mocks.keys()
    # $connect and $disconnect are lifecycle routes: a message never selects them.
    if not missing and key in keys and key not in ("$connect", "$disconnect"):
        return key
    if "$default" in keys:
        return "$default"
    raise NoRoute(f"no route matches {key if not missing else 'the frame'!r} and there is no $default route")
