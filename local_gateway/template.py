"""template.yaml, read into plain dataclasses for the local stack.

The local stack must run what production runs: the same routes, the same handlers, each
function's environment, timeouts and concurrency, the same tables. Rather than restating
any of that (and drifting the day someone edits the template), it is all read from the
SAM template here. Nothing in this module names a resource of our template: the WebSocket
API, its routes, integrations and stage, the functions and the tables are discovered by
type, and intrinsic functions are resolved by a small resolver (local values for pseudo
parameters, `refs` for physical names). It knows the functions our templates use, those of
today and those deployed before (`ops.preflight` reads a stack's deployed template): Ref,
Fn::GetAtt, Fn::Sub, Fn::If and the conditions Fn::Equals, Fn::Not, Fn::Or. What it does not
know raises `TemplateError` with the path in the template, instead of guessing.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "template.yaml"

#: Pseudo parameters as the local stack presents them.
PSEUDO_PARAMETERS = {
    "AWS::StackName": "local",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "000000000000",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}

#: create_table arguments that CloudFormation spells as boto3 does.
_TABLE_ARGUMENTS = (
    "AttributeDefinitions",
    "KeySchema",
    "BillingMode",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "ProvisionedThroughput",
)


class TemplateError(ValueError):
    """The template holds something this reader cannot turn into the local stack."""


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
class Template:
    api: WebSocketApi
    functions: dict[str, Function]
    tables: dict[str, dict[str, Any]]  #: logical id -> boto3 create_table kwargs
    ttl: dict[str, str] = field(default_factory=dict)  #: logical id -> TTL attribute (enabled ones)


# ------------------------------------------------------------------------------ YAML


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, read as the long form: !Ref X -> {"Ref": "X"}."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()  # CloudFormation rejects duplicate keys; PyYAML keeps the last
        for key_node, _ in node.value:
            if key_node.value in seen:
                raise TemplateError(f"duplicate key {key_node.value!r} at line {key_node.start_mark.line + 1}")
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _short_form(name: str) -> Callable[[_Loader, yaml.Node], dict]:
    def construct(loader: _Loader, node: yaml.Node) -> dict:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return construct


for _name in ("Ref", "Condition"):
    _Loader.add_constructor(f"!{_name}", _short_form(_name))
for _name in ("And", "Base64", "Cidr", "Equals", "FindInMap", "GetAtt", "GetAZs", "If", "ImportValue",
              "Join", "Length", "Not", "Or", "Select", "Split", "Sub", "ToJsonString", "Transform"):
    _Loader.add_constructor(f"!{_name}", _short_form(f"Fn::{_name}"))


def read_template(path: str | Path = DEFAULT_PATH) -> dict[str, Any]:
    """The template as plain data, intrinsic functions in their long form (as cfn-lint reads it)."""
    with open(path, encoding="utf-8") as f:
        return parse_template(f.read(), str(path))


def parse_template(text: str, where: str = "the template") -> dict[str, Any]:
    """A template's text (YAML with short tags, or JSON) as plain data, like `read_template`."""
    document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise TemplateError(f"{where}: not a template")
    return document


# ------------------------------------------------------------------------------ intrinsics

_NO_VALUE = object()  # AWS::NoValue: the key (or list item) holding it is dropped
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def _text(value: Any, path: str) -> str:
    """A scalar as CloudFormation passes it on: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TemplateError(f"{path}: expected a string, got {value!r}")


def _int(value: Any, path: str) -> int:
    try:
        return int(_text(value, path))
    except ValueError:
        raise TemplateError(f"{path}: expected an integer, got {value!r}") from None


class Resolver:
    """Intrinsic functions of one template, evaluated with given parameters, physical names
    (`refs`) and pseudo parameters (`pseudo` overrides PSEUDO_PARAMETERS, e.g. another
    AWS::StackName). `load` uses it; tests use it to evaluate fragments as a stack would."""

    def __init__(
        self,
        document: dict,
        parameters: Mapping[str, str] | None = None,
        refs: Mapping[str, str] | None = None,
        pseudo: Mapping[str, str] | None = None,
    ) -> None:
        self.document = document
        self.resources: dict[str, dict] = document.get("Resources") or {}
        self.refs = dict(refs or {})
        self.pseudo = PSEUDO_PARAMETERS | dict(pseudo or {})
        self.parameters = self._parameter_values(document.get("Parameters") or {}, parameters or {})
        self._conditions: dict[str, bool] = {}

    @staticmethod
    def _parameter_values(declared: dict, overrides: Mapping[str, str]) -> dict[str, Any]:
        """Every parameter's value, checked as CloudFormation checks it at deploy time."""
        if unknown := set(overrides) - set(declared):
            raise TemplateError(f"unknown parameters: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            where = f"Parameters.{name}"
            if name in overrides:
                value = str(overrides[name])
            elif "Default" in spec:
                value = _text(spec["Default"], where)
            else:
                raise TemplateError(f"{where}: no Default; pass a value in parameters")
            kind = spec.get("Type", "String")
            if "AllowedValues" in spec and value not in [_text(v, where) for v in spec["AllowedValues"]]:
                raise TemplateError(f"{where}: {value!r} is not one of {spec['AllowedValues']}")
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
                raise TemplateError(f"{where}: {value!r} does not match {spec['AllowedPattern']}")
            if not int(spec.get("MinLength", 0)) <= len(value) <= int(spec.get("MaxLength", len(value))):
                raise TemplateError(f"{where}: {len(value)} characters is outside [MinLength, MaxLength]")
            if kind == "Number":
                try:
                    number = float(value)
                except ValueError:
                    raise TemplateError(f"{where}: {value!r} is not a number") from None
                if not spec.get("MinValue", number) <= number <= spec.get("MaxValue", number):
                    raise TemplateError(f"{where}: {value} is outside [MinValue, MaxValue]")
            lists = kind == "CommaDelimitedList" or kind.startswith("List<")
            values[name] = [part.strip() for part in value.split(",")] if lists else value
        return values

    def exists(self, logical_id: str) -> bool:
        """False for a resource whose Condition is false (CloudFormation does not create it)."""
        condition = self.resources[logical_id].get("Condition")
        return condition is None or self.condition(condition, f"Resources.{logical_id}.Condition")

    def choose(self, node: Any, path: str) -> Any:
        """`node` with each Fn::If replaced by the branch its condition picks, and nothing
        else resolved: what a stack with these parameters holds before Ref and Sub."""
        if isinstance(node, list):
            items = [self.choose(item, f"{path}[{i}]") for i, item in enumerate(node)]
            return [item for item in items if item != {"Ref": "AWS::NoValue"}]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Fn::If"}:
            condition, if_true, if_false = self._arguments(node["Fn::If"], 3, f"{path}.Fn::If")
            return self.choose(if_true if self.condition(condition, f"{path}.Fn::If") else if_false, path)
        return {key: self.choose(value, f"{path}.{key}") for key, value in node.items()}

    def resolve(self, node: Any, path: str) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item, f"{path}[{i}]") for i, item in enumerate(node)]
            return [item for item in items if item is not _NO_VALUE]
        if isinstance(node, dict):
            if len(node) == 1:
                ((key, argument),) = node.items()
                if key == "Ref" or key.startswith("Fn::"):
                    return self._intrinsic(key, argument, f"{path}.{key}")
            resolved = {key: self.resolve(value, f"{path}.{key}") for key, value in node.items()}
            return {key: value for key, value in resolved.items() if value is not _NO_VALUE}
        return node

    def _intrinsic(self, key: str, arg: Any, path: str) -> Any:
        if key == "Ref":
            return self.ref(arg, path)
        if key == "Fn::GetAtt":
            return self.get_att(arg.split(".", 1) if isinstance(arg, str) else arg, path)
        if key == "Fn::Sub":
            return self.sub(arg, path)
        if key == "Fn::If":
            condition, if_true, if_false = self._arguments(arg, 3, path)
            return self.resolve(if_true if self.condition(condition, path) else if_false, path)
        raise TemplateError(f"{path}: intrinsic function {key} is not supported by the local stack")

    @staticmethod
    def _arguments(arg: Any, count: int, path: str) -> list:
        if not isinstance(arg, list) or len(arg) != count:
            raise TemplateError(f"{path}: expected a list of {count} arguments, got {arg!r}")
        return arg

    def ref(self, name: Any, path: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources or _sam_reference(name) in self.resources:  # X, or SAM's X.Alias
            return self.refs.get(name, name)
        raise TemplateError(f"{path}: Ref to unknown name {name!r}")

    def get_att(self, arg: Any, path: str) -> str:
        name, attribute = self._arguments(arg, 2, path)
        if name not in self.resources:
            raise TemplateError(f"{path}: GetAtt of unknown resource {name!r}")
        if f"{name}.{attribute}" in self.refs:
            return self.refs[f"{name}.{attribute}"]
        if attribute == "Arn":
            return f"arn:aws:local:::{name}"
        raise TemplateError(f"{path}: no local value for {name}.{attribute}; pass one in refs")

    def sub(self, arg: Any, path: str) -> str:
        if isinstance(arg, list):
            text, variables = self._arguments(arg, 2, path)
            variables = {k: self.resolve(v, f"{path}.{k}") for k, v in variables.items()}
        else:
            text, variables = arg, {}

        def substitute(match: re.Match) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):  # ${!Literal} is the literal ${Literal}
                return "${" + name[1:] + "}"
            if name in variables:
                return _text(variables[name], path)
            if "." in name:
                return _text(self.get_att(name.split(".", 1), path), path)
            return _text(self.ref(name, path), path)

        return _SUB_VARIABLE.sub(substitute, _text(text, path))

    def condition(self, name: Any, path: str) -> bool:
        if name not in self._conditions:
            conditions = self.document.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"{path}: unknown condition {name!r}")
            self._conditions[name] = self._truth(conditions[name], f"Conditions.{name}")
        return self._conditions[name]

    def _truth(self, node: Any, path: str) -> bool:
        if not (isinstance(node, dict) and len(node) == 1):
            raise TemplateError(f"{path}: expected a condition function, got {node!r}")
        ((key, arg),) = node.items()
        path = f"{path}.{key}"
        if key == "Fn::Equals":
            left, right = (self.resolve(side, path) for side in self._arguments(arg, 2, path))
            scalar = (str, int, float, bool)
            if isinstance(left, scalar) and isinstance(right, scalar):
                return _text(left, path) == _text(right, path)
            return left == right
        if key == "Fn::Not":
            return not self._truth(self._arguments(arg, 1, path)[0], path)
        if key == "Fn::Or":  # templates deployed before the reply queue reserved concurrency with it
            return any(self._truth(item, f"{path}[{i}]") for i, item in enumerate(arg))
        raise TemplateError(f"{path}: not a condition function the local stack supports")


def _sam_reference(name: str) -> str:
    """The resource behind SAM's references to what it generates: `Ref MyFunction.Alias`
    (and `.Version`) name MyFunction's alias (and version)."""
    return name.split(".", 1)[0]


def _mentions(node: Any) -> set[str]:
    """Names a template fragment refers to (Ref, GetAtt, ${Name} and ${Name.Attr} in Sub);
    SAM's `Ref Function.Alias` mentions Function."""
    if isinstance(node, list):
        return set().union(*(_mentions(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found: set[str] = set()
    for key, arg in node.items():
        if key == "Ref" and isinstance(arg, str):
            found.add(_sam_reference(arg))
        elif key == "Fn::GetAtt":
            found.add((arg.split(".", 1) if isinstance(arg, str) else arg)[0])
        elif key == "Fn::Sub":
            text, variables = arg if isinstance(arg, list) else (arg, {})
            names = {m.strip().split(".")[0] for m in _SUB_VARIABLE.findall(str(text)) if not m.startswith("!")}
            found |= (names - set(variables)) | _mentions(variables)
        else:
            found |= _mentions(arg)
    return found


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
    tables = _of_type(resolver, "AWS::DynamoDB::Table")
    return Template(
        api=_websocket_api(resolver),
        functions={
            logical_id: _function(resolver, logical_id, properties, defaults)
            for logical_id, properties in _of_type(resolver, "AWS::Serverless::Function").items()
        },
        tables={logical_id: _table(resolver, logical_id) for logical_id in tables},
        ttl={logical_id: name for logical_id in tables if (name := _ttl(resolver, logical_id))},
    )


def _of_type(resolver: Resolver, kind: str) -> dict[str, dict]:
    """Properties of the resources of one type that the stack would create."""
    return {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in resolver.resources.items()
        if resource.get("Type") == kind and resolver.exists(logical_id)
    }


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
        return default if value is _NO_VALUE else value

    def optional_int(value: Any, name: str) -> int | None:
        return None if value is None else _int(value, f"{where}.{name}")

    environment: dict[str, str] = {}  # merged key by key, as SAM merges Globals
    for origin, properties in (("Globals.Function", defaults), (where, own)):
        path = f"{origin}.Environment.Variables"
        variables = resolver.resolve((properties.get("Environment") or {}).get("Variables") or {}, path)
        environment |= {name: _text(value, f"{path}.{name}") for name, value in variables.items()}

    handler = prop("Handler")
    if handler is None:
        raise TemplateError(f"{where}: no Handler")
    invoke_config = prop("EventInvokeConfig", {})
    return Function(
        logical_id=logical_id,
        handler=_text(handler, f"{where}.Handler"),
        environment=environment,
        timeout=_int(prop("Timeout", 3), f"{where}.Timeout"),  # 3 s and 128 MB are Lambda's defaults
        memory_mb=_int(prop("MemorySize", 128), f"{where}.MemorySize"),
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
        queue = _only(_mentions(properties.get("Queue")), f"{where}.Properties.Queue", "queue")
        queue_where = f"Resources.{queue}.Properties"
        queue_properties = resolver.resolve(resolver.resources[queue].get("Properties") or {}, queue_where)
        redrive = queue_properties.get("RedrivePolicy") or {}
        scaling = resolver.resolve(properties.get("ScalingConfig") or {}, f"{where}.Properties.ScalingConfig")
        maximum = scaling.get("MaximumConcurrency")
        receives = redrive.get("maxReceiveCount")
        sources.append(QueueSource(
            queue=queue,
            batch_size=_int(resolver.resolve(properties.get("BatchSize", 10), where), f"{where}.Properties.BatchSize"),
            maximum_concurrency=None if maximum is None else _int(maximum, f"{where}.ScalingConfig"),
            visibility_timeout=_int(queue_properties.get("VisibilityTimeout", 30), f"{queue_where}.VisibilityTimeout"),
            retention=_int(queue_properties.get("MessageRetentionPeriod", 345_600), f"{queue_where}.MessageRetentionPeriod"),
            max_receive_count=None if receives is None else _int(receives, f"{queue_where}.RedrivePolicy"),
        ))
    return sources


def _websocket_api(resolver: Resolver) -> WebSocketApi:
    apis = {
        logical_id: properties
        for logical_id, properties in _of_type(resolver, "AWS::ApiGatewayV2::Api").items()
        if resolver.resolve(properties.get("ProtocolType"), f"Resources.{logical_id}.Properties") == "WEBSOCKET"
    }
    api_id = _only(set(apis), "Resources", "AWS::ApiGatewayV2::Api with ProtocolType WEBSOCKET")
    where = f"Resources.{api_id}.Properties.RouteSelectionExpression"
    expression = _text(resolver.resolve(apis[api_id].get("RouteSelectionExpression"), where), where)
    if "$" in _SELECTION_VARIABLE.sub("", expression):
        raise TemplateError(f"{where}: only $request.body.* variables are supported, got {expression!r}")

    def of_api(kind: str) -> dict[str, dict]:
        return {k: p for k, p in _of_type(resolver, kind).items() if api_id in _mentions(p.get("ApiId"))}

    integrations = of_api("AWS::ApiGatewayV2::Integration")
    route_responses = of_api("AWS::ApiGatewayV2::RouteResponse")
    integration_responses = of_api("AWS::ApiGatewayV2::IntegrationResponse")
    functions = set(_of_type(resolver, "AWS::Serverless::Function"))
    routes: dict[str, str] = {}
    mocks: dict[str, str | None] = {}
    for route_id, properties in of_api("AWS::ApiGatewayV2::Route").items():
        where = f"Resources.{route_id}.Properties"
        key = _text(resolver.resolve(properties.get("RouteKey"), f"{where}.RouteKey"), f"{where}.RouteKey")
        target = resolver.choose(properties.get("Target"), f"{where}.Target")
        if not str(resolver.resolve(target, f"{where}.Target")).startswith("integrations/"):
            raise TemplateError(f"{where}.Target: expected integrations/<integration>, got {target!r}")
        integration = _only(_mentions(target) & set(integrations), f"{where}.Target", "integration of the API")
        if key in routes or key in mocks:
            raise TemplateError(f"{where}.RouteKey: route {key!r} is defined twice")
        kind = resolver.resolve(integrations[integration].get("IntegrationType"), f"Resources.{integration}.Properties")
        if kind == "MOCK":
            two_way = any(route_id in _mentions(p.get("RouteId")) for p in route_responses.values())
            mocks[key] = _mock_answer(resolver, integration, integration_responses) if two_way else None
            continue
        where_uri = f"Resources.{integration}.Properties.IntegrationUri"
        # e.g. !If [Provisioned, <the function's alias>, <the function>]: the branch these parameters pick
        uri = resolver.choose(integrations[integration].get("IntegrationUri"), where_uri)
        routes[key] = _only(_mentions(uri) & functions, where_uri, "AWS::Serverless::Function")

    stages = of_api("AWS::ApiGatewayV2::Stage")
    stage_id = _only(set(stages), "Resources", f"AWS::ApiGatewayV2::Stage of {api_id}")
    stage, where = stages[stage_id], f"Resources.{stage_id}.Properties"
    settings = resolver.resolve(stage.get("DefaultRouteSettings") or {}, f"{where}.DefaultRouteSettings")
    rate, burst = settings.get("ThrottlingRateLimit"), settings.get("ThrottlingBurstLimit")
    return WebSocketApi(
        route_selection_expression=expression,
        routes=routes,
        stage=_text(resolver.resolve(stage.get("StageName"), f"{where}.StageName"), f"{where}.StageName"),
        throttling_rate=None if rate is None else float(_text(rate, f"{where}.DefaultRouteSettings")),
        throttling_burst=None if burst is None else _int(burst, f"{where}.DefaultRouteSettings"),
        mocks=mocks,
    )


def _mock_answer(resolver: Resolver, integration: str, responses: dict[str, dict]) -> str:
    """The frame a MOCK integration answers with: its one integration response, keyed `$default`,
    with one template and no Velocity in it (what the local stack can send as API Gateway would)."""
    found = {k: p for k, p in responses.items() if integration in _mentions(p.get("IntegrationId"))}
    name = _only(set(found), f"Resources.{integration}", "AWS::ApiGatewayV2::IntegrationResponse")
    where = f"Resources.{name}.Properties"
    response = resolver.resolve(found[name], where)
    templates = list((response.get("ResponseTemplates") or {}).values())
    if response.get("IntegrationResponseKey") != "$default" or len(templates) != 1:
        raise TemplateError(f"{where}: the local stack emulates one $default response with one template")
    template = _text(templates[0], f"{where}.ResponseTemplates")
    if "$" in template or "#" in template:
        raise TemplateError(f"{where}.ResponseTemplates: Velocity ($, #) is not emulated, got {template!r}")
    return template


def _table(resolver: Resolver, logical_id: str) -> dict[str, Any]:
    """create_table kwargs; the name is what Ref of the table gives, so it matches the environment."""
    where = f"Resources.{logical_id}.Properties"
    properties = resolver.resources[logical_id].get("Properties") or {}
    kwargs = {"TableName": resolver.ref(logical_id, where)}
    for name in _TABLE_ARGUMENTS:
        if name in properties and (value := resolver.resolve(properties[name], f"{where}.{name}")) is not _NO_VALUE:
            kwargs[name] = value
    if "StreamSpecification" in properties:
        stream = resolver.resolve(properties["StreamSpecification"], f"{where}.StreamSpecification")
        kwargs["StreamSpecification"] = {"StreamEnabled": True, **stream}
    return kwargs


def _ttl(resolver: Resolver, logical_id: str) -> str | None:
    where = f"Resources.{logical_id}.Properties.TimeToLiveSpecification"
    spec = (resolver.resources[logical_id].get("Properties") or {}).get("TimeToLiveSpecification")
    spec = resolver.resolve(spec, where) if spec is not None else {}
    if spec is _NO_VALUE or _text(spec.get("Enabled", False), where) != "true":
        return None
    return _text(spec["AttributeName"], f"{where}.AttributeName")


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


# ------------------------------------------------------------------------------ concurrency


@dataclass(frozen=True)
class Reservation:
    """What one function takes from the account's Lambda concurrency with given parameters."""

    function: str
    reserved: int = 0  #: ReservedConcurrentExecutions (0: unreserved)
    provisioned: int = 0  #: ProvisionedConcurrencyConfig of its alias (0: none)

    @property
    def taken(self) -> int:
        """Provisioned environments come out of the function's reservation when it has one, else
        out of the account's unreserved pool, as a reservation would."""
        return max(self.reserved, self.provisioned)


def reservations(document: dict, parameters: Mapping[str, str] | None = None) -> list[Reservation]:
    """The functions (AWS::Serverless::Function, as `sam deploy` uploads the template) that
    reserve or provision concurrency with these parameters: what the stack takes from the
    account. Read from the template itself, so a template that stops reserving (e.g. the reply
    function capped by a queue instead) needs no change here."""
    resolver = Resolver(document, parameters)
    defaults = (document.get("Globals") or {}).get("Function") or {}
    found = []
    for logical_id, own in _of_type(resolver, "AWS::Serverless::Function").items():
        where = f"Resources.{logical_id}.Properties"
        reserved = resolver.resolve({"v": own.get("ReservedConcurrentExecutions",
                                                  defaults.get("ReservedConcurrentExecutions"))}, where).get("v")
        config = resolver.resolve({"v": own.get("ProvisionedConcurrencyConfig")}, where).get("v") or {}
        provisioned = config.get("ProvisionedConcurrentExecutions")
        reservation = Reservation(logical_id, 0 if reserved is None else _int(reserved, where),
                                  0 if provisioned is None else _int(provisioned, where))
        if reservation.taken:
            found.append(reservation)
    return found


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
