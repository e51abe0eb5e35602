"""Where the chat service is, and a read-only view of what it stored.

Configuration comes from environment variables with safe local defaults (`make dev`):

    CHAT_WS_URL         the WebSocket API (default ws://127.0.0.1:8787/local, the local stack)
    CHAT_TICKET_SECRET  the secret shared with the service (default: .local/ticket-secret,
                        which the local stack generates at first start)
    CHAT_STORE          where the transcripts are: a SQLite file (default .local/chat.sqlite3)
                        or `dynamodb:<chats table>` (credentials from boto3's usual chain)
    CHAT_EXPERIMENT     the experiment name the chats are filed under (default "otree")

Everything is read when needed, not at import, so the devserver picks up the secret the
stack creates when both start together. The readers only read: the export, the monitor and
the rule for moving on use them, never a copy sent by the browser. A chat's stored identity
(`identities`) lets the app check that a chat found by id is the player's: chats opened
before ids named the session keep their old ids.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

ROOT = Path(os.environ.get("LLM_CHAT_ROOT") or Path(__file__).resolve().parents[2])  # the repository
DEFAULT_WS_URL = "ws://127.0.0.1:8787/local"
DEFAULT_STORE = ROOT / ".local" / "chat.sqlite3"
DEFAULT_SECRET_FILE = ROOT / ".local" / "ticket-secret"


def ws_url() -> str:
    return os.environ.get("CHAT_WS_URL") or DEFAULT_WS_URL


def experiment() -> str:
    return os.environ.get("CHAT_EXPERIMENT") or "otree"


def ticket_secret() -> str:
    secret = os.environ.get("CHAT_TICKET_SECRET")
    if secret:
        return secret
    try:
        return DEFAULT_SECRET_FILE.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(
            f"No chat secret: set CHAT_TICKET_SECRET, or start the local stack (make dev), "
            f"which writes {DEFAULT_SECRET_FILE}"
        ) from None


def store():
    """The reader for CHAT_STORE."""
    spec = os.environ.get("CHAT_STORE") or str(DEFAULT_STORE)
    if spec.startswith("dynamodb:"):
        return DynamoReader(spec.split(":", 1)[1])
    return SqliteReader(spec)


def store_label() -> str:
    return os.environ.get("CHAT_STORE") or str(DEFAULT_STORE)


#: Who a chat belongs to, as the service stores it.
IDENTITY_FIELDS = ("experiment", "session", "participant", "chat_key")

#: A generated reply's provenance, as the service stores it (ws_handlers.model.PROVENANCE_FIELDS,
#: named here so this module needs nothing but the standard library; a test checks they agree).
#: None for participants' messages, openings and replies stored before provenance was recorded.
PROVENANCE_FIELDS = ("model_snapshot", "system_fingerprint", "parameters", "system_prompt_sha256")

# A message row of the export, in the order of its columns.
MESSAGE_FIELDS = (
    "seq", "role", "text", "created_at", "prompt_tokens", "completion_tokens", "model", "latency_ms", "bot_name",
    *PROVENANCE_FIELDS,
)


class SqliteReader:
    """The local stack's SQLite file, opened read-only (the stack keeps writing it: WAL)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store the stack has not initialised yet
                return []
            raise
        finally:
            db.close()

    def identities(self, chat_ids: list[str]) -> dict[str, tuple]:
        """{chat_id: (experiment, session, participant, chat_key)} of the chats that exist."""
        if not chat_ids:
            return {}
        marks = ", ".join("?" * len(chat_ids))
        rows = self._query(f"SELECT chat_id, {', '.join(IDENTITY_FIELDS)} FROM chats WHERE chat_id IN ({marks})",
                           tuple(chat_ids))
        return {chat_id: tuple(stored) for chat_id, *stored in rows}

    def messages(self, chat_id: str) -> list[dict]:
        rows = self._query(
            f"SELECT {', '.join(self._message_columns())} FROM messages WHERE chat_id = ? ORDER BY seq", (chat_id,)
        )
        return [dict(zip(MESSAGE_FIELDS, row)) for row in rows]

    def _message_columns(self) -> list[str]:
        """MESSAGE_FIELDS as columns of this file, NULL for those it lacks: a file the stack has not
        opened since provenance was recorded has no provenance columns, and a read-only reader cannot
        add them (the stack does, when it next opens the file)."""
        present = {name for (name,) in self._query("SELECT name FROM pragma_table_info('messages')", ())}
        return [name if name in present else f"NULL AS {name}" for name in MESSAGE_FIELDS]

    def progress(self, chat_ids: list[str]) -> dict[str, dict]:
        """Per chat: participant messages so far, all messages, last activity (epoch seconds)."""
        if not chat_ids:
            return {}
        marks = ", ".join("?" * len(chat_ids))
        rows = self._query(
            f"SELECT chat_id, SUM(role = 'user'), COUNT(*), MAX(created_at) FROM messages "
            f"WHERE chat_id IN ({marks}) GROUP BY chat_id",
            tuple(chat_ids),
        )
        return {cid: {"user_messages": int(u), "messages": int(n), "last_activity": last} for cid, u, n, last in rows}


class DynamoReader:
    """The service's chats table on DynamoDB: items `MSG#<seq>` under `CHAT#<chat id>`."""

    def __init__(self, table: str, client=None) -> None:
        if not table:
            raise ValueError("CHAT_STORE=dynamodb:<table name>")
        self.table = table
        self._client = client

    @property
    def client(self):
        if self._client is None:
            import boto3  # only on AWS

            self._client = boto3.client("dynamodb")
        return self._client

    def identities(self, chat_ids: list[str]) -> dict[str, tuple]:
        """As SqliteReader.identities: each chat's META item, read by key and consistently."""
        found = {}
        for chat_id in dict.fromkeys(chat_ids):
            item = self.client.get_item(
                TableName=self.table, Key={"pk": {"S": f"CHAT#{chat_id}"}, "sk": {"S": "META"}}, ConsistentRead=True,
                ProjectionExpression=", ".join(f"#{n}" for n in IDENTITY_FIELDS),
                ExpressionAttributeNames={f"#{n}": n for n in IDENTITY_FIELDS},  # `session` is a reserved word
            ).get("Item")
            if item:
                found[chat_id] = tuple(item[n]["S"] for n in IDENTITY_FIELDS)
        return found

    def messages(self, chat_id: str) -> list[dict]:
        from boto3.dynamodb.types import TypeDeserializer

        de = TypeDeserializer()
        kwargs = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :msg)",
            "ExpressionAttributeValues": {":pk": {"S": f"CHAT#{chat_id}"}, ":msg": {"S": "MSG#"}},
            "ConsistentRead": True,
        }
        found = []
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                plain = {k: de.deserialize(v) for k, v in item.items()}
                found.append({f: _plain_number(plain.get(f)) for f in MESSAGE_FIELDS})
            if "LastEvaluatedKey" not in page:
                return sorted(found, key=lambda m: m["seq"])
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def progress(self, chat_ids: list[str]) -> dict[str, dict]:
        result = {}
        for chat_id in chat_ids:
            messages = self.messages(chat_id)
            if messages:
                result[chat_id] = {
                    "user_messages": sum(m["role"] == "user" for m in messages),
                    "messages": len(messages),
                    "last_activity": max(m["created_at"] for m in messages),
                }
        return result


def _plain_number(value):
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
