"""`make deploy`'s look ahead: will Lambda accept the concurrency this deploy reserves?

Lambda keeps at least 100 of an account's concurrent executions unreserved in each Region and
refuses a reserved or provisioned concurrency that would leave fewer; CloudFormation then fails
the deploy minutes in (a failed first create rolls the whole stack back). A new account may have
a quota of 10 or 50 executions, where any reservation fails. So before anything is built this
reads the account's quota (lambda:GetAccountSettings), what the deploy will reserve and what the
stack reserves today, which an update gives back, and stops with the numbers and the quota to
request.

Both reservations are read off templates by `template.reservations`: template.yaml
with the parameters sam will pass (the template's defaults, then the stack's current values,
which sam keeps for parameters it is not given, then the overrides saved in samconfig), and the
stack's own deployed template with its current parameters. So when a template stops reserving
(the reply function capped by a queue's MaximumConcurrency instead of reserved concurrency),
nothing here changes: `llm_concurrency` is only the number of replies generated at once, for the
warning that the account itself would throttle them, and for the warning that provisioned reply
environments beyond it (ReplyProvisionedConcurrency > LlmConcurrency) are billed but never needed.
A refusal names the parameters the reserving functions' settings refer to: what to lower.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import OpsError
from .aws_errors import aws_errors
from .template import Reservation, Resolver, TemplateError, parse_template, read_template, reservations

UNRESERVED_MINIMUM = 100  #: executions Lambda never lets reservations take
#: Executions the connect, message and disconnect functions need beside the replies at peak: the
#: account limit should exceed LlmConcurrency by this much, or the account throttles replies.
HEADROOM = 100
QUOTA_CODE = "L-B99A9384"  #: Service Quotas, AWS Lambda, "Concurrent executions"
DEFAULT_QUOTA = 1000  #: what accounts get by default: a request for it is usual
_REMOVED = {  # parameters earlier templates had, and where their setting lives now
    "ParticipantAllowlist": "allowlists live in the chats table now: chat-ops allowlist add --stack {stack} "
                            "--experiment NAME --file codes.txt (docs/operations.md)",
}


@dataclass(frozen=True)
class Account:
    limit: int  #: AccountLimit.ConcurrentExecutions
    unreserved: int  #: AccountLimit.UnreservedConcurrentExecutions


@dataclass
class Plan:
    """What a deploy does to the account's concurrency, and what it should be told."""

    reserves: list[Reservation]  #: after the deploy
    gives_back: list[Reservation] = field(default_factory=list)  #: the stack's today, released by the update
    llm_concurrency: int | None = None  #: replies generated at once (LlmConcurrency), if the template has it
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ no I/O


def saved_overrides(saved: Mapping[str, Any]) -> dict[str, str] | None:
    """The parameter_overrides sam saved in samconfig (`K=V K2="v 2"`, `ParameterKey=K,ParameterValue=V`,
    a list of such strings, or a table); None when none are saved (a guided deploy will ask)."""
    value = saved.get("parameter_overrides")
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    found: dict[str, str] = {}
    for item in value if isinstance(value, list) else [value]:
        try:
            tokens = shlex.split(str(item))
        except ValueError as exc:  # an unbalanced quote
            raise OpsError(f"samconfig's parameter_overrides cannot be read ({exc}): fix them, or deploy with "
                           "GUIDED=1 to answer again", 2) from None
        for token in tokens:
            if token.startswith("ParameterKey="):
                key, _, val = token.removeprefix("ParameterKey=").partition(",ParameterValue=")
            else:
                key, _, val = token.partition("=")
            found[key] = val
    return found


def plan(template: dict, overrides: Mapping[str, str], stack: str | None = None,
         stack_parameters: Mapping[str, str] | None = None, deployed: dict | None = None) -> Plan:
    """What deploying `template` with `overrides` over `stack` (its parameters and deployed
    template, when it exists) reserves and gives back. Parameters the template does not declare
    are ignored, as sam ignores them, with a warning; TemplateError for values the template refuses."""
    declared = template.get("Parameters") or {}
    previous = dict(stack_parameters or {})
    values = {k: v for k, v in previous.items() if k in declared} | {k: v for k, v in overrides.items() if k in declared}
    result = Plan([])
    for name in sorted(set(overrides) - set(declared)):
        hint = _REMOVED.get(name, "").format(stack=stack or "STACK")
        result.warnings.append(f"samconfig sets {name}, which template.yaml does not declare: sam ignores it"
                               + (f"; {hint}" if hint else ""))
    for name in sorted(set(previous) - set(declared)):
        if name in _REMOVED and previous[name]:
            result.warnings.append(f"stack {stack} uses {name}={previous[name][:60]!r}, which this deploy removes: "
                                   + _REMOVED[name].format(stack=stack))
    result.reserves = reservations(template, values)  # TemplateError: parameters CloudFormation would refuse
    resolved = Resolver(template, values).parameters
    llm = resolved.get("LlmConcurrency")
    result.llm_concurrency = None if llm is None else int(float(llm))
    reply = int(float(resolved.get("ReplyProvisionedConcurrency", 0)))
    if result.llm_concurrency is not None and reply > result.llm_concurrency:
        result.warnings.append(
            f"ReplyProvisionedConcurrency ({reply}) exceeds LlmConcurrency ({result.llm_concurrency}): the reply "
            f"queue never runs more than LlmConcurrency replies at once, so {reply - result.llm_concurrency} "
            "provisioned reply environments are billed by the hour and never needed. Lower "
            "ReplyProvisionedConcurrency to at most LlmConcurrency (make deploy GUIDED=1)")
    if deployed is not None:
        try:
            result.gives_back = reservations(deployed, previous)
        except TemplateError as exc:
            result.warnings.append(f"could not tell what stack {stack} reserves now ({exc}): counting nothing "
                                   "given back")
    return result


def _listed(found: Sequence[Reservation]) -> str:
    parts = [f"{r.function} {r.taken} {'reserved' if r.reserved >= r.provisioned else 'provisioned'}" for r in found]
    return ", ".join(parts) or "nothing"


def _levers(found: Sequence[Reservation]) -> str:
    """The parameters that set these reservations, in the order met: "A, B or C"."""
    names = list(dict.fromkeys(name for r in found for name in r.parameters))
    if not names:
        return "the functions' reserved or provisioned concurrency"
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def _request(desired: int, region: str) -> str:
    return (f'Service Quotas, AWS Lambda, "Concurrent executions" ({QUOTA_CODE}): aws service-quotas '
            f"request-service-quota-increase --service-code lambda --quota-code {QUOTA_CODE} "
            f"--desired-value {max(desired, DEFAULT_QUOTA)} --region {region}")


def judge(account: Account, deploy: Plan, region: str, guided: bool = False) -> tuple[str | None, list[str]]:
    """The ok line (None when there is a problem) and the warnings; OpsError when Lambda would
    refuse what the deploy reserves (a warning instead for a guided deploy, whose parameters are
    still to be answered)."""
    reserve = sum(r.taken for r in deploy.reserves)
    back = sum(r.taken for r in deploy.gives_back)
    after = account.unreserved + back - reserve
    warnings = list(deploy.warnings)
    ok: str | None = (
        f"Lambda concurrency in {region}: {account.limit:,} executions, {account.unreserved:,} unreserved; this "
        f"deploy reserves {reserve:,} ({_listed(deploy.reserves)})" + (f", gives back {back:,}" if back else "")
        + f": {after:,} stay unreserved (Lambda keeps {UNRESERVED_MINIMUM})")
    if reserve and after < UNRESERVED_MINIMUM:
        ok = None
        available = max(0, account.unreserved + back - UNRESERVED_MINIMUM)
        given = f", {back:,} of them given back by the stack's update ({_listed(deploy.gives_back)})" if back else ""
        problem = (f"this deploy reserves {reserve:,} concurrent executions ({_listed(deploy.reserves)}), but the "
                   f"account has {account.limit:,} in {region}, {account.unreserved:,} unreserved{given}, and Lambda "
                   f"keeps {UNRESERVED_MINIMUM} unreserved: at most {available:,} can be reserved, so CloudFormation "
                   "would fail")
        remedy = _request(account.limit + UNRESERVED_MINIMUM - after, region)
        if not guided:
            raise OpsError(f"{problem}. Lower {_levers(deploy.reserves)} (make deploy GUIDED=1), "
                           f"or request a higher quota: {remedy}")
        warnings.append(f"{problem} with the template's defaults or the saved answers: when sam asks, lower "
                        f"{_levers(deploy.reserves)} (0 reserves nothing), or request a higher quota first: {remedy}")
    llm = deploy.llm_concurrency
    if llm is not None and account.limit < llm + HEADROOM:
        warnings.append(f"the account runs at most {account.limit:,} Lambda executions at once in {region}, fewer "
                        f"than LlmConcurrency ({llm}) replies plus {HEADROOM} for the connect, message and disconnect "
                        "functions: at a busy moment Lambda throttles replies and frames (MessageThrottlesAlarm). "
                        f"Request a higher quota: {_request(llm + HEADROOM, region)}")
    return ok, warnings


# ------------------------------------------------------------------------------ AWS


def account(client: Any, region: str) -> Account | None:
    """The account's Lambda concurrency in the region; None when the credentials may not read it."""
    from botocore.exceptions import ClientError

    with aws_errors(f"Lambda in {region}"):
        try:
            limit = client.get_account_settings()["AccountLimit"]
        except ClientError as exc:
            if "AccessDenied" in exc.response.get("Error", {}).get("Code", ""):
                return None
            raise
    return Account(int(limit["ConcurrentExecutions"]), int(limit["UnreservedConcurrentExecutions"]))


def deployed_template(cloudformation: Any, stack: str) -> dict:
    """The template the stack was last deployed with (the SAM template sam uploaded)."""
    with aws_errors(f"CloudFormation ({stack})"):
        body = cloudformation.get_template(StackName=stack, TemplateStage="Original")["TemplateBody"]
    return body if isinstance(body, dict) else parse_template(body, f"stack {stack}'s template")


def check(session: Any, region: str, stack: str | None, described: dict | None, saved: Mapping[str, Any],
          template_path: Path, guided: bool, lambda_client: Any | None = None) -> tuple[str | None, list[str]]:
    """The ok line (None when the account cannot be read) and warnings; OpsError when the deploy
    would fail. `described` is the stack when it exists; `saved` what sam saved in samconfig;
    `guided`: sam will ask for the parameters, so a failure is only a warning. `lambda_client`
    defaults to one from `session`."""
    overrides = saved_overrides(saved)
    template = read_template(template_path)
    previous, deployed = None, None
    if described is not None:
        previous = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
        deployed = deployed_template(session.client("cloudformation", region_name=region), stack)
    try:
        deploy = plan(template, overrides or {}, stack, previous, deployed)
    except TemplateError as exc:  # CloudFormation would refuse them too, after the build
        if guided:
            return None, [f"the saved parameters are refused by template.yaml ({exc}): answer within its limits "
                          "when sam asks (the concurrency check is skipped)"]
        raise OpsError(f"the deploy's parameters (saved in samconfig, else the stack's) are refused by "
                       f"template.yaml: {exc}; fix them, or deploy with GUIDED=1 to answer again", 2) from None
    limits = account(lambda_client or session.client("lambda", region_name=region), region)
    if limits is None:
        return None, [*deploy.warnings, f"these credentials may not read Lambda's concurrency quota in {region} "
                      "(lambda:GetAccountSettings): the concurrency check is skipped"]
    return judge(limits, deploy, region, guided=guided)
