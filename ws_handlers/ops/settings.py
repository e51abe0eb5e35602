"""The environment variables the operator's commands read, with their defaults.

Declared once in `VARIABLES`, as ws_handlers/config.py does for the functions, so `--help`
and docs/operations.md show one list. A command-line option always wins over its variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import VARIABLES as FUNCTION_VARIABLES
from ..config import Variable

#: Where `make dev` keeps the local stack's data (local_gateway.stack.StackConfig.data_dir).
LOCAL_DATA_DIR = Path(__file__).resolve().parents[2] / ".local"
_TABLES = {v.name: v.default for v in FUNCTION_VARIABLES if v.name in ("CONNECTIONS_TABLE", "CHATS_TABLE")}

VARIABLES: tuple[Variable, ...] = (
    Variable("CHAT_OPS_STACK", "", "CloudFormation stack whose tables the commands use (as --stack); "
             "empty: the local store."),
    Variable("AWS_REGION", "", "The stack's region (as --region); empty: AWS_DEFAULT_REGION or the AWS config."),
    Variable("CHAT_OPS_DYNAMODB_ENDPOINT", "", "A DynamoDB endpoint (as --dynamodb-endpoint): moto's server or "
             "DynamoDB local."),
    Variable("CHAT_OPS_CONNECTIONS_TABLE", _TABLES["CONNECTIONS_TABLE"], "Connections table at that endpoint."),
    Variable("CHAT_OPS_CHATS_TABLE", _TABLES["CHATS_TABLE"], "Chats table at that endpoint."),
    Variable("CHAT_OPS_DATA_DIR", str(LOCAL_DATA_DIR), "The local stack's data directory, holding chat.sqlite3 "
             "(as --data-dir)."),
)
_DEFAULTS = {v.name: v.default for v in VARIABLES}


def env(name: str) -> str:
    """The variable's value, else its default (blank counts as unset)."""
    return os.environ.get(name, "").strip() or _DEFAULTS[name]


def describe() -> str:
    """The variables as lines for --help."""
    return "\n".join(f"  {v.name:<28} {v.help} (default: {v.default or 'none'})" for v in VARIABLES)
