"""The Python steps of `make deploy`: prerequisites, the OpenAI key, what oTree needs.

    python -m ws_handlers.ops.deploy check           credentials, region, sam; will Lambda accept its concurrency?
    python -m ws_handlers.ops.deploy guided-flag     prints --guided until a deploy saved its answers
    python -m ws_handlers.ops.deploy put-openai-key  the key into the stack's OpenAIKeySecret
    python -m ws_handlers.ops.deploy outputs         the wss URL, secret and tables for oTree

The stack and region come from --stack/--region, else from sam's configuration file
(--config samconfig.local.toml --config-env ENV, where `sam deploy --guided` saved them),
else (region only) from boto3's usual chain (AWS_REGION, AWS_DEFAULT_REGION, the profile).

The OpenAI key never passes through argv, shell history or a CloudFormation parameter: it
is read from a hidden prompt (getpass), from stdin when it is not a terminal, or from a
file named with --from-file; it is never printed. The ticket secret needs no step: the
template has Secrets Manager generate it inside AWS.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import shutil
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import OpsError, preflight
from .aws_errors import aws_errors

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
#: template.yaml's OpenAIKeySecret holds this until the operator puts the key.
PLACEHOLDER = "REPLACE_WITH_PUT_SECRET_VALUE"
_BAD_STACK_STATES = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED")


@dataclass(frozen=True)
class Target:
    stack: str | None
    region: str | None
    region_from: str  #: where the region came from, for messages


# ------------------------------------------------------------------------------ no I/O but files


def saved_config(path: Path | None, env: str) -> dict[str, Any]:
    """What sam saved for `env` in its configuration file (deploy over global parameters);
    {} when there is no file yet (the first deploy)."""
    if path is None or not path.is_file():
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OpsError(f"{path} is not valid TOML ({exc}): fix it or delete it to deploy guided again", 2) from None
    section = document.get(env, {})
    return {**section.get("global", {}).get("parameters", {}), **section.get("deploy", {}).get("parameters", {})}


def needs_guided(path: Path | None, env: str) -> bool:
    """A guided deploy saves the region it deployed to; until one has, deploy guided
    (samconfig.toml, the committed defaults, never holds a region)."""
    return not saved_config(path, env).get("region")


def target(args: argparse.Namespace, session_region: Callable[[], str | None]) -> Target:
    saved = saved_config(args.config, args.config_env)
    stack = args.stack or saved.get("stack_name")
    if args.region:
        return Target(stack, args.region, "--region")
    if saved.get("region"):
        return Target(stack, saved["region"], f"{args.config} [{args.config_env}]")
    region = session_region()
    source = next((f"${n}" for n in ("AWS_REGION", "AWS_DEFAULT_REGION") if os.environ.get(n)), "the AWS profile")
    return Target(stack, region, source)


def validate_key(text: str) -> str:
    """The key, trimmed; refused (without echoing it) when it cannot be an API key."""
    key = text.strip()
    if not key:
        raise OpsError("no OpenAI key given (empty input): nothing was stored", 2)
    if any(c.isspace() for c in key):
        raise OpsError("the OpenAI key contains whitespace (two keys, or a pasted sentence?): nothing was stored", 2)
    if not key.isprintable() or not key.isascii():
        raise OpsError("the OpenAI key contains characters an API key never has: nothing was stored", 2)
    if key == PLACEHOLDER:
        raise OpsError("that is the template's placeholder, not a key: nothing was stored", 2)
    return key


def read_key(source: str | None, stdin: TextIO, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """From --from-file (a path, or - for stdin), else a hidden prompt on a terminal, else stdin."""
    if source and source != "-":
        path = Path(source).expanduser()
        try:
            return validate_key(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise OpsError(f"cannot read the key file {path}: {exc.strerror}", 2) from None
        except UnicodeDecodeError:
            raise OpsError(f"the key file {path} is not UTF-8 text", 2) from None
    try:
        if source is None and stdin.isatty():
            return validate_key(prompt("OpenAI API key (input hidden, Enter to finish): "))
        return validate_key(stdin.read())
    except EOFError:  # Ctrl-D at the prompt
        raise OpsError("no OpenAI key given (end of input): nothing was stored", 2) from None


def otree_environment(outputs: dict[str, str], region: str) -> list[str]:
    """The shell lines that give the oTree server its settings (otree_app/chat/service.py)."""
    secret = shlex.quote(outputs["TicketSecretArn"])
    return [
        f"export CHAT_WS_URL={shlex.quote(outputs['WebSocketUrl'])}",
        (f'export CHAT_TICKET_SECRET="$(aws secretsmanager get-secret-value --region {shlex.quote(region)} '
         f'--secret-id {secret} --query SecretString --output text)"'),
        f"export CHAT_STORE={shlex.quote('dynamodb:' + outputs['ChatsTableName'])}",
        f"export AWS_REGION={shlex.quote(region)}",
    ]


# ------------------------------------------------------------------------------ AWS


def session(region: str | None = None) -> Any:
    import boto3

    with aws_errors("AWS"):
        return boto3.Session(region_name=region)


def session_region() -> str | None:
    return session().region_name


def describe_stack(region: str, name: str) -> dict[str, Any] | None:
    client = session(region).client("cloudformation")
    with aws_errors(f"CloudFormation in {region}"):
        try:
            return client.describe_stacks(StackName=name)["Stacks"][0]
        except client.exceptions.ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise


def deployed(where: Target) -> tuple[dict[str, Any], dict[str, str]]:
    """The stack and its outputs; refused when there is no such stack or it is not ours."""
    if not where.stack:
        raise OpsError("which stack? pass --stack NAME (or --config with a saved stack_name)", 2)
    if not where.region:
        raise OpsError("no AWS region chosen: pass --region or set AWS_REGION", 2)
    described = describe_stack(where.region, where.stack)
    if described is None:
        raise OpsError(f"no stack {where.stack!r} in {where.region}: deploy it first (make deploy)")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    missing = sorted({"WebSocketUrl", "TicketSecretArn", "OpenAIKeySecretArn", "ChatsTableName"} - set(outputs))
    if missing:
        raise OpsError(f"stack {where.stack!r} ({described['StackStatus']}) has no output {', '.join(missing)}: "
                       "is it this service's stack, and is it deployed?")
    return described, outputs


# ------------------------------------------------------------------------------ subcommands


def check(args: argparse.Namespace, out: TextIO, lambda_client: Any | None = None) -> None:
    """Prerequisites, each with a line; the first one missing stops with its remedy. Last, the
    concurrency the deploy reserves against the account's quota (preflight): a deploy Lambda
    would refuse stops here, not minutes into CloudFormation."""
    with aws_errors("AWS"):
        credentials = session().get_credentials()
    if credentials is None:
        raise OpsError("no AWS credentials found: run `aws configure` (or `aws sso login`), or set AWS_PROFILE")
    where = target(args, session_region)
    if not where.region:
        raise OpsError("no AWS region chosen: set AWS_REGION (e.g. AWS_REGION=eu-central-1), "
                       "run `aws configure set region ...`, or pass REGION=... to make deploy")
    with aws_errors(f"AWS STS in {where.region}"):
        identity = session(where.region).client("sts").get_caller_identity()
    print(f"ok  AWS credentials: {identity['Arn']}", file=out)
    print(f"ok  region: {where.region} (from {where.region_from})", file=out)
    sam = shutil.which(args.sam) if args.sam else None
    if sam is None:
        raise OpsError(f"the SAM CLI was not found ({args.sam}): run `make deploy`, which installs it in .venv-sam")
    print(f"ok  SAM CLI: {args.sam}", file=out)
    if args.from_file and args.from_file != "-":
        read_key(args.from_file, sys.stdin)
        print(f"ok  OpenAI key file: {args.from_file}", file=out)
    described = None
    if where.stack:
        described = describe_stack(where.region, where.stack)
        status = described["StackStatus"] if described else None
        if status in _BAD_STACK_STATES:
            raise OpsError(f"stack {where.stack} is {status} and cannot be updated: delete it "
                           f"(sam delete --stack-name {where.stack} --region {where.region}) and deploy again")
        if status and status.endswith("_IN_PROGRESS"):
            raise OpsError(f"stack {where.stack} is {status}: wait until it finishes, then deploy")
        print(f"ok  stack {where.stack}: {status or 'not deployed yet'}", file=out)
    guided = args.guided or needs_guided(args.config, args.config_env)
    ok, warnings = preflight.check(session(where.region), where.region, where.stack, described,
                                   saved_config(args.config, args.config_env), args.template, guided, lambda_client)
    if ok:
        print(f"ok  {ok}", file=out)
    for warning in warnings:
        print(f"warn  {warning}", file=out)


def guided_flag(args: argparse.Namespace, out: TextIO) -> None:
    if needs_guided(args.config, args.config_env):
        print("--guided", file=out)


def put_openai_key(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> None:
    where = target(args, session_region)
    _, outputs = deployed(where)
    arn = outputs["OpenAIKeySecretArn"]
    client = session(where.region).client("secretsmanager")
    with aws_errors("Secrets Manager"):
        current = client.get_secret_value(SecretId=arn).get("SecretString")
        if current != PLACEHOLDER and not args.replace:
            print(f"ok  OpenAI key: already set in {arn} (--replace puts a new one)", file=out)
            return
        key = read_key(args.from_file, stdin)
        client.put_secret_value(SecretId=arn, SecretString=key)
    print(f"ok  OpenAI key stored in {arn}", file=out)


def outputs(args: argparse.Namespace, out: TextIO) -> None:
    where = target(args, session_region)
    described, values = deployed(where)
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    rows = [
        ("WebSocket URL", values["WebSocketUrl"]),
        ("Ticket secret", values["TicketSecretArn"]),
        ("OpenAI key secret", values["OpenAIKeySecretArn"]),
        ("Chats table", f"{values['ChatsTableName']} (transcripts; kept when the stack is deleted)"),
        ("Connections table", values.get("ConnectionsTableName", "?")),
    ]
    if "ExperimentServerPolicyArn" in values:
        rows.append(("oTree server policy", values["ExperimentServerPolicyArn"]))
    if "AlarmTopicArn" in values:
        rows.append(("Alarm topic", values["AlarmTopicArn"]))
    print(f"Stack {where.stack} in {where.region}: {described['StackStatus']}\n", file=out)
    for label, value in rows:
        print(f"  {label + ':':<20} {value}", file=out)
    print("\nOn the oTree server, with AWS credentials that have the oTree server policy:\n", file=out)
    for line in otree_environment(values, where.region):
        print(f"  {line}", file=out)
    origins = parameters.get("AllowedOrigins", "")
    if not origins:
        print("\nAllowedOrigins is empty, so every browser is refused: deploy again with GUIDED=1 and give "
              "your oTree server's origin (e.g. https://study.example.org).", file=out)
    else:
        print(f"\nAllowedOrigins: {origins}", file=out)
    where_args = f"--stack {shlex.quote(where.stack or '')} --region {shlex.quote(where.region or '')}"
    print(f"\nWatch and operate it: .venv/bin/chat-ops status {where_args} (docs/operations.md)", file=out)


# ------------------------------------------------------------------------------ command line


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m ws_handlers.ops.deploy",
        description="The Python steps of `make deploy`. The OpenAI key is never taken from argv.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--stack", help="the CloudFormation stack (default: stack_name saved in --config)")
        sub.add_argument("--region", help="its region (default: saved in --config, else AWS_REGION or the profile)")
        sub.add_argument("--config", type=Path, help="sam's configuration file, e.g. samconfig.local.toml")
        sub.add_argument("--config-env", default="default", help="its environment (default: default)")
        return sub

    check_ = command("check", "Check AWS credentials, the region and the SAM CLI (and the stack's state).")
    check_.add_argument("--sam", default="sam", help="the SAM CLI to look for (default: sam on PATH)")
    check_.add_argument("--from-file", metavar="PATH", help="also check this OpenAI key file")
    check_.add_argument("--guided", action="store_true", help="sam will ask for the parameters: a concurrency the "
                        "account cannot give is a warning, not an error")
    check_.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help="the template to deploy "
                        "(default: the repository's template.yaml)")
    command("guided-flag", "Print --guided while sam has saved no deploy for --config/--config-env.")
    put = command("put-openai-key", "Store the OpenAI key in the stack's OpenAIKeySecret, if it holds the "
                  "placeholder (or with --replace). Read from a hidden prompt, stdin, or --from-file.")
    put.add_argument("--from-file", metavar="PATH", help="read the key from this file (- for stdin)")
    put.add_argument("--replace", action="store_true", help="replace a key that is already set")
    command("outputs", "Print the wss URL, the secrets, the tables and the oTree server's settings.")
    return top


def main(argv: list[str] | None = None, stdin: TextIO | None = None, lambda_client: Any | None = None) -> int:
    """Run one step; `lambda_client` replaces the one the check would make (tests)."""
    args = parser().parse_args(argv)
    try:
        if args.command == "check":
            check(args, sys.stdout, lambda_client)
        elif args.command == "guided-flag":
            guided_flag(args, sys.stdout)
        elif args.command == "put-openai-key":
            put_openai_key(args, sys.stdout, stdin or sys.stdin)
        else:
            outputs(args, sys.stdout)
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted: nothing was stored", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
