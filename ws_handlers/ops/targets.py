"""Where the commands act: the local stack's SQLite file, a DynamoDB endpoint, or a stack's tables.

The same three options on every subcommand; without one, CHAT_OPS_STACK and
CHAT_OPS_DYNAMODB_ENDPOINT are read, and the local store is the default. Every way of
failing to reach the data becomes an OpsError with one line to show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import AdminStore
from . import OpsError
from .aws_errors import aws_errors
from .settings import LOCAL_DATA_DIR, env

#: In the local stack's data directory: the template parameters it last started with (AllowedOrigins ...),
#: written by local_gateway's stack for the commands that check against them.
LOCAL_PARAMETERS = "parameters.json"
#: Fewer retries than the functions' (4): an operator waiting on an unreachable endpoint should hear so soon.
_CLIENT_CONFIG = {"retries": {"mode": "standard", "max_attempts": 3}, "connect_timeout": 3, "read_timeout": 20}


@dataclass
class Target:
    store: AdminStore
    where: str  #: for messages: "the local store (.local/chat.sqlite3)", "stack X (eu-west-1)"
    default_budget: str  #: what applies when an experiment has no budget of its own
    close: Any = None
    #: the deployment's AllowedOrigins parameter (the origins whose pages may open a socket); None: unknown
    allowed_origins: str | None = None
    #: how to change it there, for messages: `{origins}` stands for the list it should hold
    change_origins: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target (default: the local stack's store)")
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument("--local", action="store_true", help="the local stack's SQLite file (DATA_DIR/chat.sqlite3)")
    exclusive.add_argument("--dynamodb-endpoint", metavar="URL", help="a DynamoDB endpoint: moto's server, DynamoDB local")
    exclusive.add_argument("--stack", metavar="NAME", help="a deployed stack: its ConnectionsTableName and "
                           "ChatsTableName outputs")
    group.add_argument("--data-dir", type=Path, help="with --local: the local stack's data directory")
    group.add_argument("--region", help="with --stack: its region (or AWS_REGION)")
    group.add_argument("--connections-table", help="with --dynamodb-endpoint: the connections table")
    group.add_argument("--chats-table", help="with --dynamodb-endpoint: the chats table")


@contextlib.contextmanager
def opened(args: argparse.Namespace) -> Iterator[Target]:
    """The store the arguments name, closed afterwards."""
    target = _open(args)
    try:
        yield target
    finally:
        if target.close is not None:
            target.close()


def _open(args: argparse.Namespace) -> Target:
    stack = args.stack or (None if args.local or args.dynamodb_endpoint else env("CHAT_OPS_STACK") or None)
    endpoint = args.dynamodb_endpoint or (None if args.local or stack else env("CHAT_OPS_DYNAMODB_ENDPOINT") or None)
    region = args.region or env("AWS_REGION") or None
    if stack:
        return _stack(stack, region)
    if endpoint:
        return _endpoint(endpoint, args.connections_table or env("CHAT_OPS_CONNECTIONS_TABLE"),
                         args.chats_table or env("CHAT_OPS_CHATS_TABLE"), region)
    return _local(args.data_dir or Path(env("CHAT_OPS_DATA_DIR")))


def _local(data_dir: Path) -> Target:
    from ..adapters.sqlite import SqliteStore

    path = data_dir / "chat.sqlite3"
    if not path.is_file():  # opening would create an empty store, and every answer would be "nothing"
        raise OpsError(f"no local store at {path}: start the local stack once (make dev), or pass --data-dir, "
                       "--stack or --dynamodb-endpoint", 2)
    try:
        store = SqliteStore(path)
    except Exception as exc:  # noqa: BLE001 - not a database, a newer schema, a locked file
        raise OpsError(f"cannot open {path}: {exc}") from None
    origins = _local_origins(data_dir / LOCAL_PARAMETERS)
    return Target(store, f"the local store ({path})", "the functions' TOKEN_BUDGET (template default 0: none)",
                  store.close, origins, "restart the local stack with them: python -m local_gateway "
                  + ("" if data_dir.resolve() == LOCAL_DATA_DIR else f"--data-dir {data_dir} ")
                  + 'serve --origins "{origins}"')


def _local_origins(path: Path) -> str | None:
    """AllowedOrigins as the local stack last started (None: it never wrote them, an older stack)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("AllowedOrigins")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None



def _client(service: str, **kwargs: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, config=Config(**_CLIENT_CONFIG), **kwargs)


def _endpoint(url: str, connections_table: str, chats_table: str, region: str | None) -> Target:
    import boto3

    from ..adapters.dynamodb import DynamoStore

    if not url.startswith(("http://", "https://")):
        raise OpsError(f"--dynamodb-endpoint must be an http(s) URL, not {url!r}", 2)
    session = boto3.Session()
    # moto and DynamoDB local take any credentials and region; spare the operator from inventing them
    dummy = {} if session.get_credentials() else {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    with aws_errors(f"DynamoDB at {url}"):
        client = _client("dynamodb", endpoint_url=url, region_name=region or session.region_name or "us-east-1",
                         **dummy)
        _check_tables(client, (connections_table, chats_table), "--connections-table/--chats-table", url)
    return Target(DynamoStore(connections_table, chats_table, client=client), f"DynamoDB at {url}",
                  "the functions' TOKEN_BUDGET")


def _stack(name: str, region: str | None) -> Target:
    from ..adapters.dynamodb import DynamoStore

    with aws_errors(f"stack {name}"):
        cloudformation = _client("cloudformation", region_name=region)
        region = cloudformation.meta.region_name
        try:
            [described] = cloudformation.describe_stacks(StackName=name)["Stacks"]
        except cloudformation.exceptions.ClientError as exc:
            if "does not exist" in str(exc):
                raise OpsError(f"no stack {name!r} in {region} (check --stack and --region)", 2) from None
            raise
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        missing = [k for k in ("ConnectionsTableName", "ChatsTableName") if k not in outputs]
        if missing:
            raise OpsError(f"stack {name!r} has no output {', '.join(missing)}: is it this service's stack?", 2)
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
        client = _client("dynamodb", region_name=region)
    budget = parameters.get("TokenBudget")
    default = "the stack's TokenBudget" + (f" ({budget}{': none' if budget == '0' else ''})" if budget else "")
    store = DynamoStore(outputs["ConnectionsTableName"], outputs["ChatsTableName"], client=client)
    origins = parameters.get("AllowedOrigins")
    return Target(store, f"stack {name} ({region})", default, None, origins,
                  'redeploy with them: sam deploy --parameter-overrides AllowedOrigins="{origins}" (or make deploy '
                  "and answer AllowedOrigins so)")


def _check_tables(client: Any, tables: tuple[str, ...], option: str, where: str) -> None:
    for table in tables:
        try:
            client.describe_table(TableName=table)
        except client.exceptions.ResourceNotFoundException:
            found = sorted(client.list_tables(Limit=20).get("TableNames", []))
            raise OpsError(f"no table {table!r} at {where} (tables there: {', '.join(found) or 'none'}); "
                           f"name them with {option}", 2) from None
