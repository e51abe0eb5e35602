"""AWS CloudFormation and SAM templates, read as plain data: the operator's side and the local stack's.

A template (ours, or the one a stack has deployed) is read with CloudFormation's short tags in
their long form, and its intrinsic functions are resolved by a small resolver (local values for
pseudo parameters, `refs` for physical names). It knows the functions our templates use, those
of today and those deployed before (`preflight` reads a stack's deployed template): Ref,
Fn::GetAtt, Fn::Sub, Fn::If and the conditions Fn::Equals, Fn::Not, Fn::Or. What it does not
know raises `TemplateError` with the path in the template, instead of guessing. `reservations`
is what `chat-ops`' preflight needs: the Lambda concurrency a stack takes. The local stack's model
of the template (routes, functions, tables) is built on this in local_gateway/template.py, which
imports it from here: the operator's CLI never imports the local stack.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "template.yaml"

#: Pseudo parameters as the local stack presents them.
PSEUDO_PARAMETERS = {
    "AWS::StackName": "local",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "000000000000",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}

class TemplateError(ValueError):
    """The template holds something this reader cannot turn into the local stack."""


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

NO_VALUE = object()  # AWS::NoValue: the key (or list item) holding it is dropped
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def as_text(value: Any, path: str) -> str:
    """A scalar as CloudFormation passes it on: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TemplateError(f"{path}: expected a string, got {value!r}")


def as_int(value: Any, path: str) -> int:
    try:
        return int(as_text(value, path))
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
                value = as_text(spec["Default"], where)
            else:
                raise TemplateError(f"{where}: no Default; pass a value in parameters")
            kind = spec.get("Type", "String")
            if "AllowedValues" in spec and value not in [as_text(v, where) for v in spec["AllowedValues"]]:
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
            return [item for item in items if item is not NO_VALUE]
        if isinstance(node, dict):
            if len(node) == 1:
                ((key, argument),) = node.items()
                if key == "Ref" or key.startswith("Fn::"):
                    return self._intrinsic(key, argument, f"{path}.{key}")
            resolved = {key: self.resolve(value, f"{path}.{key}") for key, value in node.items()}
            return {key: value for key, value in resolved.items() if value is not NO_VALUE}
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
            return NO_VALUE
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
                return as_text(variables[name], path)
            if "." in name:
                return as_text(self.get_att(name.split(".", 1), path), path)
            return as_text(self.ref(name, path), path)

        return _SUB_VARIABLE.sub(substitute, as_text(text, path))

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
                return as_text(left, path) == as_text(right, path)
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


def mentions(node: Any) -> set[str]:
    """Names a template fragment refers to (Ref, GetAtt, ${Name} and ${Name.Attr} in Sub);
    SAM's `Ref Function.Alias` mentions Function."""
    if isinstance(node, list):
        return set().union(*(mentions(item) for item in node))
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
            found |= (names - set(variables)) | mentions(variables)
        else:
            found |= mentions(arg)
    return found


def of_type(resolver: Resolver, kind: str) -> dict[str, dict]:
    """Properties of the resources of one type that the stack would create."""
    return {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in resolver.resources.items()
        if resource.get("Type") == kind and resolver.exists(logical_id)
    }


# ------------------------------------------------------------------------------ concurrency


@dataclass(frozen=True)
class Reservation:
    """What one function takes from the account's Lambda concurrency with given parameters."""

    function: str
    reserved: int = 0  #: ReservedConcurrentExecutions (0: unreserved)
    provisioned: int = 0  #: ProvisionedConcurrencyConfig of its alias (0: none)
    #: the template's parameters these settings refer to (what an operator lowers to take less)
    parameters: tuple[str, ...] = ()

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
    declared = set(document.get("Parameters") or {})
    found = []
    for logical_id, own in of_type(resolver, "AWS::Serverless::Function").items():
        where = f"Resources.{logical_id}.Properties"
        settings = {"reserved": own.get("ReservedConcurrentExecutions", defaults.get("ReservedConcurrentExecutions")),
                    "provisioned": own.get("ProvisionedConcurrencyConfig")}
        resolved = resolver.resolve(settings, where)
        reserved = resolved.get("reserved")
        provisioned = (resolved.get("provisioned") or {}).get("ProvisionedConcurrentExecutions")
        taken = {"reserved": 0 if reserved is None else as_int(reserved, where),
                 "provisioned": 0 if provisioned is None else as_int(provisioned, where)}
        levers = set().union(*(mentions(settings[name]) for name, value in taken.items() if value)) & declared
        reservation = Reservation(logical_id, taken["reserved"], taken["provisioned"], tuple(sorted(levers)))
        if reservation.taken:
            found.append(reservation)
    return found
