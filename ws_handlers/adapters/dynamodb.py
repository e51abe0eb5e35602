"""The store on DynamoDB, through boto3.

Two tables. `connections`: one item per socket, expiring by TTL (`expires_at`), because
$disconnect is best effort. `chats`: an item collection per chat (pk `CHAT#id`): the
metadata item `META` with counters and the reply lease, one item per message
(`MSG#0000000001`, so a Query reads them in order), and one item per client message id
(`CMID#...`) that makes retries idempotent; a reply's item also holds its provenance
(`model_snapshot`, `system_fingerprint`, `parameters`, `system_prompt_sha256`). Counters live
beside them: `PART#exp#session#participant` (chats opened in a session; the `PART#exp#participant`
counters of old are only deleted) and `EXP#exp` / `SERVICE` (`CONTROL`: pause switch, token budget,
tokens used, the allowlist flag); the model's circuit breaker is `SERVICE` / `LLM`; an experiment's allowlist
is one item per code, `ALLOW#exp` / participant; a study (`enrolment.StudyStore`) is `STUDY#id` / `DEF`
(the definition as JSON, the seed, the key's hash, the entries counter) with one item per
assignment, `STUDY#id` / `P#participant`. Every write that must not happen twice is
conditional; no request path scans. This module stores and reads; what a refusal means, how
controls combine and when the breaker opens are the domain's (`store` says how a failed condition
is reported). The operator's methods at the end of `DynamoStore` (`store.AdminStore`) list an
experiment's chats through the `by_experiment` index and delete with BatchWriteItem. The tables
are template.yaml's (tests and the local stack create them from it: `local_gateway.template.create_tables`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ..bot import Bot
from ..enrolment import Assignment, StudyRecord
from ..identity import Identity
from ..model import PROVENANCE_FIELDS, Provenance
from ..store import (
    BreakerState,
    Chat,
    Codes,
    Conflict,
    Connection,
    ControlItems,
    Controls,
    Deleted,
    Lease,
    Message,
    SendItems,
    StoreThrottled,
    check_allowlist_change,
    check_controls_change,
)
from ..study import Study, study_from_dict, study_to_dict

_ser = TypeSerializer()
_de = TypeDeserializer()
_T = TypeVar("_T")
_THROTTLING = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
#: A write that met an in-flight transaction, or a transaction that met another one in flight
#: (DynamoDB's two-phase commit is still holding the item). Nothing was written: run it again.
_CONFLICTS = {"TransactionConflictException", "TransactionInProgressException"}
#: Cancellation reasons that say "not now" rather than "no": a condition was not what failed.
_RETRYABLE_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
_SERVICE_CONTROL = {"pk": "SERVICE", "sk": "CONTROL"}
_BREAKER = {"pk": "SERVICE", "sk": "LLM"}
#: Attempts of a write that lost to a concurrent transaction or to capacity, and rounds of a
#: batch with unprocessed keys: with full-jitter backoff from 25 ms up to 1 s, about 4 s at most.
ATTEMPTS = 8


class _Contended(Exception):
    """A write refused for contention or capacity, which wrote nothing and may run again."""


def _backoff(attempts: int = ATTEMPTS) -> Retrying:
    """Full-jitter exponential backoff over `_Contended` (AWS's advice for conflicts and throttling:
    retries of many writers spread out instead of meeting again)."""
    return Retrying(
        retry=retry_if_exception_type(_Contended),
        wait=wait_random_exponential(multiplier=0.025, max=1.0),
        stop=stop_after_attempt(attempts),
        sleep=lambda seconds: time.sleep(seconds),  # looked up at each call: tests may replace time.sleep
    )


def _retried(attempt: Callable[[], _T], what: str) -> _T:
    """`attempt()` until it stops raising `_Contended`; StoreThrottled (retryable for the client) after ATTEMPTS."""
    try:
        return _backoff()(attempt)
    except RetryError as exc:
        raise StoreThrottled(f"{what}: still contended after {ATTEMPTS} attempts") from exc.last_attempt.exception()


def _item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(_num(v)) for k, v in values.items() if v is not None}


def _num(value: Any) -> Any:
    return Decimal(str(value)) if isinstance(value, float) else value


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _chat_pk(chat_id: str) -> str:
    return f"CHAT#{chat_id}"


def _msg_sk(seq: int) -> str:
    return f"MSG#{seq:010d}"


def _counter(experiment: str, participant: str, session: str | None = None) -> dict[str, Any]:
    """The chats a participant opened in a session (None: the experiment-wide counter of old)."""
    names = (experiment, participant) if session is None else (experiment, session, participant)
    return _key("#".join(("PART", *names)), "META")


def _control_key(experiment: str) -> dict[str, str]:
    return {"pk": f"EXP#{experiment}", "sk": "CONTROL"}


def _control_keys(experiment: str) -> list[dict[str, Any]]:
    """The keys of `ControlItems`: the experiment's CONTROL item, the service's, the breaker."""
    return [_item(_control_key(experiment)), _item(_SERVICE_CONTROL), _item(_BREAKER)]


def _control_items(items: dict[tuple[str, str], dict[str, Any]], experiment: str) -> ControlItems:
    """`ControlItems` from a batch read of `_control_keys(experiment)` (absent items: defaults)."""
    return ControlItems(
        experiment=_controls(items.get((_control_key(experiment)["pk"], "CONTROL"), {})),
        service=_controls(items.get(("SERVICE", "CONTROL"), {})),
        breaker=_breaker(items.get(("SERVICE", "LLM"), {})),
    )


def _allow_pk(experiment: str) -> str:
    return f"ALLOW#{experiment}"


def _study_key(study_id: str) -> dict[str, Any]:
    return _key(f"STUDY#{study_id}", "DEF")


def _assignment_key(study_id: str, participant: str) -> dict[str, Any]:
    return _key(f"STUDY#{study_id}", f"P#{participant}")


def _reasons(exc: ClientError) -> list[str]:
    return [r.get("Code", "None") or "None" for r in exc.response.get("CancellationReasons", [])]


class DynamoStore:
    """The `Store` port on two DynamoDB tables."""

    def __init__(self, connections_table: str, chats_table: str, client: Any | None = None, **client_args: Any) -> None:
        config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=5)
        self._db = client or boto3.client("dynamodb", config=config, **client_args)
        self.connections_table = connections_table
        self.chats_table = chats_table

    # -- plumbing ---------------------------------------------------------------
    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One request. Throttling has already been retried by botocore (standard mode) and
        becomes StoreThrottled; a conflict with an in-flight transaction, which botocore does
        not retry, is retried here with backoff (the request wrote nothing)."""

        def attempt() -> dict[str, Any]:
            try:
                return getattr(self._db, operation)(**kwargs)
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code in _CONFLICTS:
                    raise _Contended(operation) from exc
                if code in _THROTTLING:
                    raise StoreThrottled(operation) from exc
                raise

        return _retried(attempt, operation)

    def _update_if(self, key: dict[str, Any], update: str, condition: str, values: dict[str, Any],
                   table: str | None = None, returns: bool = False) -> dict[str, Any] | None:
        """A conditional UpdateItem: the new item (or {}) when the condition held, else None."""
        try:
            got = self._call(
                "update_item", TableName=table or self.chats_table, Key=key, UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeValues=values,
                **({"ReturnValues": "ALL_NEW"} if returns else {}),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return _plain(got["Attributes"]) if returns else {}

    def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Run a transaction; None when it committed, else each item's cancellation reason.

        Every transaction here is fully conditional, so running it again is safe: a cancellation
        for contention (TransactionConflict) or capacity is retried with backoff, and the conditions
        decide afresh. Each attempt has its own ClientRequestToken, which botocore's own retries of
        a lost response reuse, so an attempt that committed unseen is not applied twice.
        """

        def attempt() -> list[str] | None:
            try:
                self._db.transact_write_items(TransactItems=items, ClientRequestToken=uuid.uuid4().hex)
                return None
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code in _CONFLICTS or code in _THROTTLING:
                    raise _Contended(code) from exc
                if code != "TransactionCanceledException":
                    raise
                reasons = _reasons(exc)
                if any(r in _RETRYABLE_REASONS for r in reasons):
                    raise _Contended(",".join(reasons)) from exc
                return reasons

        return _retried(attempt, "transact_write_items")

    def _batch_get(self, keys: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Items of the chats table by key, consistent; keys DynamoDB leaves unprocessed (capacity)
        are asked again with backoff, and StoreThrottled if they stay so: a caller deciding on
        controls must never mistake an unread item for an absent one (pause and budget fail closed)."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        request = {self.chats_table: {"Keys": keys, "ConsistentRead": True}}

        def attempt() -> dict[tuple[str, str], dict[str, Any]]:
            nonlocal request
            got = self._call("batch_get_item", RequestItems=request)
            for item in map(_plain, got.get("Responses", {}).get(self.chats_table, [])):
                found[(item["pk"], item["sk"])] = item
            request = got.get("UnprocessedKeys") or {}
            if request:
                raise _Contended("batch_get_item: unprocessed keys")
            return found

        return _retried(attempt, "batch_get_item")

    # -- connections --------------------------------------------------------------
    def put_connection(self, connection: Connection) -> None:
        identity = connection.identity
        self._call(
            "put_item",
            TableName=self.connections_table,
            Item=_item(
                {
                    "connection_id": connection.connection_id,
                    "participant": identity.participant,
                    "experiment": identity.experiment,
                    "session": identity.session,
                    "connected_at": connection.connected_at,
                    "expires_at": connection.expires_at,
                }
            ),
        )

    def count_frame(self, connection_id: str, now: float, window: float) -> tuple[Connection, int] | None:
        key = {"connection_id": {"S": connection_id}}
        values = {":one": {"N": "1"}, ":w": {"N": str(int(now // window))}, ":now": _ser.serialize(_num(now))}
        attempts = (  # the current window's counter, else a new window; one write in the steady state
            ("ADD rate_count :one", "rate_window = :w AND expires_at > :now"),
            ("SET rate_window = :w, rate_count = :one", "attribute_exists(connection_id) AND expires_at > :now"),
        )
        for update, condition in attempts:
            item = self._update_if(key, update, condition, values, table=self.connections_table, returns=True)
            if item is None:
                continue
            identity = Identity(item["participant"], item["experiment"], item["session"])
            connection = Connection(connection_id, identity, float(item["connected_at"]), int(item["expires_at"]))
            return connection, int(item["rate_count"])
        return None

    def delete_connection(self, connection_id: str) -> None:
        self._call("delete_item", TableName=self.connections_table, Key={"connection_id": {"S": connection_id}})

    # -- controls ---------------------------------------------------------------------
    def get_controls(self, experiment: str) -> ControlItems:
        return _control_items(self._batch_get(_control_keys(experiment)), experiment)

    def read_for_send(self, chat_id: str, client_msg_id: str, experiment: str) -> SendItems:
        pk, client = _chat_pk(chat_id), f"CMID#{client_msg_id}"
        items = self._batch_get([_key(pk, "META"), _key(pk, client), *_control_keys(experiment)])
        meta, stored = items.get((pk, "META")), items.get((pk, client))
        return SendItems(None if meta is None else _chat(meta), None if stored is None else int(stored["seq"]),
                         _control_items(items, experiment))

    # -- chats ------------------------------------------------------------------------
    def get_chat(self, chat_id: str) -> Chat | None:
        got = self._call(
            "get_item", TableName=self.chats_table, Key=_key(_chat_pk(chat_id), "META"), ConsistentRead=True
        )
        return _chat(_plain(got["Item"])) if "Item" in got else None

    def open_chat(self, chat: Chat, opening: Message | None, max_chats: int) -> Chat:
        identity = chat.identity
        meta = {
            "pk": _chat_pk(chat.chat_id),
            "sk": "META",
            "chat_id": chat.chat_id,
            "participant": identity.participant,
            "experiment": identity.experiment,
            "session": identity.session,
            "chat_key": chat.chat_key,
            "bot": json.dumps(chat.bot.to_dict()),
            "bot_name": chat.bot.name,
            "created_at": chat.created_at,
            "next_seq": chat.next_seq,
            "user_messages": 0,
            "tokens_used": 0,
            "connection_id": chat.connection_id,
            # the by_experiment index lists an experiment's chats for export, without Scan
            "gsi1pk": f"EXP#{identity.experiment}",
            "gsi1sk": f"{identity.session}#{identity.participant}#{chat.chat_key}",
        }
        items: list[dict[str, Any]] = [
            {"Put": {"TableName": self.chats_table, "Item": _item(meta), "ConditionExpression": "attribute_not_exists(pk)"}},
            {
                "Update": {
                    "TableName": self.chats_table,
                    "Key": _counter(identity.experiment, identity.participant, identity.session),
                    "UpdateExpression": "ADD chats :one",
                    "ConditionExpression": "attribute_not_exists(chats) OR chats < :max",
                    "ExpressionAttributeValues": {":one": {"N": "1"}, ":max": {"N": str(max_chats)}},
                }
            },
        ]
        if opening is not None:
            items.append(self._put_message(chat, opening))
        reasons = self._transact(items)
        if reasons is not None:  # the chat exists, or the participant's counter is at max_chats
            raise Conflict(f"open_chat {chat.chat_id}: {reasons}")
        return chat

    def bind_connection(self, chat_id: str, connection_id: str) -> None:
        key = _key(_chat_pk(chat_id), "META")
        if self._update_if(key, "SET connection_id = :c", "attribute_exists(pk)", {":c": {"S": connection_id}}) is None:
            raise Conflict(f"no chat {chat_id}")

    # -- messages -------------------------------------------------------------------
    def _put_message(self, chat: Chat, message: Message) -> dict[str, Any]:
        identity = chat.identity
        values = {
            "pk": _chat_pk(chat.chat_id),
            "sk": _msg_sk(message.seq),
            "chat_id": chat.chat_id,
            "seq": message.seq,
            "role": message.role,
            "text": message.text,
            "created_at": message.created_at,
            "client_msg_id": message.client_msg_id,
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "model": message.model,
            "latency_ms": message.latency_ms,
            **_provenance_attributes(message.provenance),
            # denormalised so an export reads one item per row
            "experiment": identity.experiment,
            "session": identity.session,
            "participant": identity.participant,
            "chat_key": chat.chat_key,
            "bot_name": chat.bot.name,
        }
        return {
            "Put": {"TableName": self.chats_table, "Item": _item(values), "ConditionExpression": "attribute_not_exists(pk)"}
        }

    def messages(self, chat_id: str, after_seq: int = 0, limit: int | None = None) -> list[Message]:
        kwargs: dict[str, Any] = {
            "TableName": self.chats_table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {
                ":pk": {"S": _chat_pk(chat_id)},
                ":lo": {"S": _msg_sk(after_seq + 1)},
                ":hi": {"S": _msg_sk(9_999_999_999)},
            },
            "ConsistentRead": True,
        }
        found: list[Message] = []
        while True:
            if limit is not None:
                kwargs["Limit"] = limit - len(found)
            page = self._call("query", **kwargs)
            found.extend(_message(_plain(i)) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page or (limit is not None and len(found) >= limit):
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_message(self, chat_id: str, seq: int) -> Message | None:
        got = self._call(
            "get_item", TableName=self.chats_table, Key=_key(_chat_pk(chat_id), _msg_sk(seq)), ConsistentRead=True
        )
        return _message(_plain(got["Item"])) if "Item" in got else None

    def find_client_message(self, chat_id: str, client_msg_id: str) -> int | None:
        got = self._call(
            "get_item",
            TableName=self.chats_table,
            Key=_key(_chat_pk(chat_id), f"CMID#{client_msg_id}"),
            ConsistentRead=True,
        )
        return int(got["Item"]["seq"]["N"]) if "Item" in got else None

    def _lease_values(self, lease: Lease, connection_id: str, now: float) -> dict[str, Any]:
        return {
            ":turn": {"S": lease.turn_id},
            ":until": _ser.serialize(_num(lease.until)),
            ":useq": {"N": str(lease.user_seq)},
            ":conn": {"S": connection_id},
            ":now": _ser.serialize(_num(now)),
        }

    def append_user_message(
        self, chat: Chat, message: Message, lease: Lease, connection_id: str, max_user_messages: int, now: float
    ) -> None:
        seq = chat.next_seq
        assert message.seq == seq and message.client_msg_id
        values = self._lease_values(lease, connection_id, now) | {
            ":seq": {"N": str(seq)},
            ":next": {"N": str(seq + 1)},
            ":one": {"N": "1"},
            ":max": {"N": str(max_user_messages)},
        }
        items = [
            {
                "Update": {
                    "TableName": self.chats_table,
                    "Key": _key(_chat_pk(chat.chat_id), "META"),
                    "UpdateExpression": "SET next_seq = :next, connection_id = :conn, lease_turn = :turn, "
                    "lease_until = :until, lease_seq = :useq ADD user_messages :one REMOVE lease_claimed",
                    "ConditionExpression": "next_seq = :seq AND user_messages < :max AND "
                    "(attribute_not_exists(lease_until) OR lease_until <= :now)",
                    "ExpressionAttributeValues": values,
                }
            },
            self._put_message(chat, message),
            {
                "Put": {
                    "TableName": self.chats_table,
                    "Item": _item(
                        {"pk": _chat_pk(chat.chat_id), "sk": f"CMID#{message.client_msg_id}", "seq": seq}
                    ),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
        reasons = self._transact(items)
        if reasons is not None:
            raise Conflict(f"append_user_message {chat.chat_id} at seq {seq}: {reasons}")

    def take_lease(self, chat: Chat, lease: Lease, connection_id: str, now: float) -> bool:
        values = self._lease_values(lease, connection_id, now) | {":seq": {"N": str(chat.next_seq)}}
        return self._update_if(
            _key(_chat_pk(chat.chat_id), "META"),
            "SET connection_id = :conn, lease_turn = :turn, lease_until = :until, lease_seq = :useq REMOVE lease_claimed",
            "next_seq = :seq AND (attribute_not_exists(lease_until) OR lease_until <= :now)",
            values,
        ) is not None

    def claim_turn(self, chat_id: str, turn_id: str, until: float) -> Chat | None:
        values = {":turn": {"S": turn_id}, ":until": _ser.serialize(_num(until)), ":yes": {"BOOL": True}}
        claimed = self._update_if(
            _key(_chat_pk(chat_id), "META"), "SET lease_claimed = :yes, lease_until = :until",
            "lease_turn = :turn AND attribute_not_exists(lease_claimed)", values, returns=True,
        )
        return None if claimed is None else _chat(claimed)

    def finish_reply(self, chat: Chat, reply: Message, turn_id: str) -> bool:
        # Only this chat's items: an item every reply touched (the experiment's token counter)
        # would make concurrent replies cancel each other (TransactionConflict). count_tokens
        # adds to the experiment after the commit, with a plain ADD, which never conflicts.
        tokens = reply.prompt_tokens + reply.completion_tokens
        items = [
            {
                "Update": {
                    "TableName": self.chats_table,
                    "Key": _key(_chat_pk(chat.chat_id), "META"),
                    "UpdateExpression": "SET next_seq = :next ADD tokens_used :t "
                    "REMOVE lease_turn, lease_until, lease_seq, lease_claimed",
                    "ConditionExpression": "next_seq = :seq AND lease_turn = :turn",
                    "ExpressionAttributeValues": {
                        ":seq": {"N": str(reply.seq)},
                        ":next": {"N": str(reply.seq + 1)},
                        ":t": {"N": str(tokens)},
                        ":turn": {"S": turn_id},
                    },
                }
            },
            self._put_message(chat, reply),
        ]
        return self._transact(items) is None

    def count_tokens(self, experiment: str, tokens: int) -> None:
        self._call(
            "update_item", TableName=self.chats_table, Key=_key(f"EXP#{experiment}", "CONTROL"),
            UpdateExpression="ADD tokens_used :t", ExpressionAttributeValues={":t": {"N": str(tokens)}},
        )

    def renew_lease(self, chat_id: str, turn_id: str, until: float) -> bool:
        values = {":turn": {"S": turn_id}, ":until": _ser.serialize(_num(until))}
        return self._update_if(
            _key(_chat_pk(chat_id), "META"), "SET lease_until = :until", "lease_turn = :turn", values
        ) is not None

    def release_lease(self, chat_id: str, turn_id: str) -> None:
        self._update_if(
            _key(_chat_pk(chat_id), "META"), "REMOVE lease_turn, lease_until, lease_seq, lease_claimed",
            "lease_turn = :turn", {":turn": {"S": turn_id}},
        )

    def read_breaker(self) -> BreakerState:
        got = self._call("get_item", TableName=self.chats_table, Key=_item(_BREAKER), ConsistentRead=True)
        return _breaker(_plain(got["Item"]) if "Item" in got else {})

    def replace_breaker(self, seen: BreakerState, new: BreakerState) -> None:
        values, conditions = {}, []
        for name, was in (("failures", seen.failures), ("window_start", seen.window_start),
                          ("open_until", seen.open_until)):
            values[f":{name}"] = _ser.serialize(_num(was))
            values[f":new_{name}"] = _ser.serialize(_num(getattr(new, name)))
            # an attribute never written (or no item at all) reads as the initial 0
            conditions.append(f"({name} = :{name} OR attribute_not_exists({name}))" if not was else f"{name} = :{name}")
        update = "SET failures = :new_failures, window_start = :new_window_start, open_until = :new_open_until"
        if self._update_if(_item(_BREAKER), update, " AND ".join(conditions), values) is None:
            raise Conflict("the breaker changed meanwhile")

    # -- the allowlist on the connect path: one item per code, read by key -------------------------
    def on_allowlist(self, experiment: str, participant: str) -> bool:
        got = self._call(
            "get_item", TableName=self.chats_table, Key=_key(_allow_pk(experiment), participant),
            ConsistentRead=True, ProjectionExpression="pk",  # a code added a second ago counts
        )
        return "Item" in got

    # -- studies (enrolment.StudyStore, and StudyAdmin for the operator) ----------------------
    def get_study(self, study_id: str) -> StudyRecord | None:
        got = self._call("get_item", TableName=self.chats_table, Key=_study_key(study_id), ConsistentRead=True)
        if "Item" not in got:
            return None
        item = _plain(got["Item"])
        return StudyRecord(study_from_dict(json.loads(item["definition"])), bytes(item["seed"]),
                           item["key_sha256"], int(item.get("entries", 0)))

    def take_place(self, study_id: str) -> int:
        """One atomic ADD: concurrent entries never meet on a condition, each gets its own number."""
        got = self._update_if(_study_key(study_id), "ADD entries :one", "attribute_exists(pk)",
                              {":one": {"N": "1"}}, returns=True)
        if got is None:
            raise Conflict(f"no study {study_id}")
        return int(got["entries"]) - 1

    def get_assignment(self, study_id: str, participant: str) -> Assignment | None:
        got = self._call("get_item", TableName=self.chats_table, Key=_assignment_key(study_id, participant),
                         ConsistentRead=True)  # the other tab's assignment, written a moment ago, counts
        return _assignment(_plain(got["Item"])) if "Item" in got else None

    def put_assignment(self, assignment: Assignment) -> None:
        item = _assignment_key(assignment.study, assignment.participant) | _item({
            "study": assignment.study, "participant": assignment.participant, "arm": assignment.arm,
            "index": assignment.index, "entered_at": assignment.entered_at,
            "platform_ids": dict(assignment.platform_ids),
        })
        self._put_new(item, f"{assignment.participant} has an assignment")

    def put_study(self, record: StudyRecord) -> None:
        item = _study_key(record.study.id) | _item({
            "definition": json.dumps(study_to_dict(record.study)), "seed": record.seed,
            "key_sha256": record.key_sha256, "entries": 0,
        })
        self._put_new(item, f"study {record.study.id} exists")

    def _put_new(self, item: dict[str, Any], taken: str) -> None:
        """PutItem unless an item has its key: Conflict(`taken`) then, writing nothing."""
        try:
            self._call("put_item", TableName=self.chats_table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(taken) from None
            raise

    def replace_study_definition(self, study: Study) -> None:
        self._set_study(study.id, "definition", {"S": json.dumps(study_to_dict(study))})

    def set_study_key(self, study_id: str, key_sha256: str) -> None:
        self._set_study(study_id, "key_sha256", {"S": key_sha256})

    def _set_study(self, study_id: str, attribute: str, value: dict[str, Any]) -> None:
        try:
            self._call("update_item", TableName=self.chats_table, Key=_study_key(study_id),
                       UpdateExpression="SET #a = :v", ConditionExpression="attribute_exists(pk)",
                       ExpressionAttributeNames={"#a": attribute}, ExpressionAttributeValues={":v": value})
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(f"no study {study_id}") from None
            raise

    def assignments(self, study_id: str, page_size: int = 500) -> Iterator[Assignment]:
        kwargs = {
            "TableName": self.chats_table, "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": {"S": f"STUDY#{study_id}"}, ":p": {"S": "P#"}},
            "ConsistentRead": True, "Limit": page_size,
        }
        for page in self._pages("query", kwargs):
            yield from (_assignment(_plain(item)) for item in page)

    # -- the operator's port (store.AdminStore): never on a request path ------------------
    def read_controls(self, experiment: str | None) -> Controls:
        key = _SERVICE_CONTROL if experiment is None else _control_key(experiment)
        got = self._call("get_item", TableName=self.chats_table, Key=_item(key), ConsistentRead=True)
        return _controls(_plain(got["Item"]) if "Item" in got else {})

    def set_controls(
        self, experiment: str | None, *, paused: bool | None = None, token_budget: int | None = None,
        clear_budget: bool = False,
    ) -> None:
        check_controls_change(experiment, token_budget, clear_budget)
        sets, values = [], {}
        if paused is not None:
            sets.append("paused = :paused")
            values[":paused"] = {"BOOL": paused}
        if token_budget is not None:
            sets.append("token_budget = :budget")
            values[":budget"] = {"N": str(token_budget)}
        update = ("SET " + ", ".join(sets) if sets else "") + (" REMOVE token_budget" if clear_budget else "")
        if not update:
            return
        key = _SERVICE_CONTROL if experiment is None else _control_key(experiment)
        self._call(
            "update_item", TableName=self.chats_table, Key=_item(key), UpdateExpression=update.strip(),
            **({"ExpressionAttributeValues": values} if values else {}),
        )

    def add_to_allowlist(self, experiment: str, participants: Codes) -> None:
        check_allowlist_change(experiment, participants)
        if not participants:
            return
        self._allowlist_flag(experiment, True)  # first: an interruption refuses, never admits
        self._batch_write(self.chats_table, [
            {"PutRequest": {"Item": _key(_allow_pk(experiment), code)}} for code in dict.fromkeys(participants)
        ])

    def remove_from_allowlist(self, experiment: str, participants: Codes) -> None:
        check_allowlist_change(experiment, participants)
        self._batch_delete(self.chats_table, [_key(_allow_pk(experiment), c) for c in dict.fromkeys(participants)])

    def allowlist(self, experiment: str, page_size: int = 500) -> Iterator[str]:
        kwargs = {
            "TableName": self.chats_table, "KeyConditionExpression": "pk = :pk", "ConsistentRead": True,
            "ExpressionAttributeValues": {":pk": {"S": _allow_pk(experiment)}}, "ProjectionExpression": "sk",
            "Limit": page_size,
        }
        for page in self._pages("query", kwargs):
            yield from (item["sk"]["S"] for item in page)

    def clear_allowlist(self, experiment: str) -> int:
        removed = self._delete_allowlist(experiment)
        self._allowlist_flag(experiment, False)  # last: until then, the codes left still apply
        return removed

    def _allowlist_flag(self, experiment: str, on: bool) -> None:
        change = ({"UpdateExpression": "SET allowlist = :on", "ExpressionAttributeValues": {":on": {"BOOL": True}}}
                  if on else  # clearing never creates a CONTROL item
                  {"UpdateExpression": "REMOVE allowlist", "ConditionExpression": "attribute_exists(pk)"})
        try:
            self._call("update_item", TableName=self.chats_table, Key=_key(f"EXP#{experiment}", "CONTROL"), **change)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def _delete_allowlist(self, experiment: str) -> int:
        """Every code, a page at a time (a long list is never held whole); how many there were."""
        removed, keys = 0, []
        for code in self.allowlist(experiment):
            keys.append(_key(_allow_pk(experiment), code))
            if len(keys) == 500:
                self._batch_delete(self.chats_table, keys)
                removed, keys = removed + len(keys), []
        self._batch_delete(self.chats_table, keys)
        return removed + len(keys)

    def experiment_chats(
        self, experiment: str, session: str | None = None, participant: str | None = None, page_size: int = 500
    ) -> Iterator[Chat]:
        condition = "gsi1pk = :pk"
        values: dict[str, Any] = {":pk": {"S": f"EXP#{experiment}"}}
        names: dict[str, str] = {}
        filters = []
        if session is not None:  # the index narrows; the filter is exact even if names hold '#'
            condition += " AND begins_with(gsi1sk, :prefix)"
            values[":prefix"] = {"S": f"{session}#" + (f"{participant}#" if participant is not None else "")}
            names["#s"], values[":s"] = "session", {"S": session}
            filters.append("#s = :s")
        if participant is not None:
            names["#p"], values[":p"] = "participant", {"S": participant}
            filters.append("#p = :p")
        kwargs: dict[str, Any] = {
            "TableName": self.chats_table, "IndexName": "by_experiment", "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values, "Limit": page_size,
        }
        if filters:
            kwargs |= {"FilterExpression": " AND ".join(filters), "ExpressionAttributeNames": names}
        for page in self._pages("query", kwargs):
            yield from (_chat(_plain(i)) for i in page)

    def connections(self, experiment: str | None = None) -> Iterator[Connection]:
        kwargs: dict[str, Any] = {"TableName": self.connections_table}
        if experiment is not None:
            kwargs |= {"FilterExpression": "experiment = :e", "ExpressionAttributeValues": {":e": {"S": experiment}}}
        for page in self._pages("scan", kwargs):
            for item in map(_plain, page):
                identity = Identity(item["participant"], item["experiment"], item["session"])
                yield Connection(item["connection_id"], identity, float(item["connected_at"]), int(item["expires_at"]))

    def delete_participant(self, experiment: str, participant: str, session: str | None = None) -> Deleted:
        doomed = list(self.experiment_chats(experiment, session, participant))  # a few per session
        # the counters first, so that an interruption never leaves one behind its chats; rerun to finish
        sessions = {session} if session is not None else {c.identity.session for c in doomed}
        records = sum(self._delete_item(_counter(experiment, participant, s)) for s in sessions)
        if session is None:  # the participant is gone from the experiment: their code and old counter with them
            records += self._delete_item(_counter(experiment, participant))
            records += self._delete_item(_key(_allow_pk(experiment), participant))
            records += self._delete_item(_assignment_key(experiment, participant))  # a study's: the platform ids
        deleted = Deleted(records=records)
        for chat in doomed:
            deleted += self._delete_chat(chat.chat_id)
        return deleted + self._delete_connections(experiment, participant, session)

    def delete_experiment(self, experiment: str) -> Deleted:
        deleted, seen = Deleted(), set()
        for chat in self.experiment_chats(experiment):
            who = chat.identity
            for counted in {(who.participant, who.session), (who.participant, None)} - seen:
                seen.add(counted)  # the counters before their chats, as in delete_participant
                deleted += Deleted(records=self._delete_item(_counter(experiment, *counted)))
            deleted += self._delete_chat(chat.chat_id)
        deleted += self._delete_connections(experiment) + Deleted(records=self._delete_allowlist(experiment))
        assigned = [_assignment_key(experiment, a.participant) for a in self.assignments(experiment)]
        self._batch_delete(self.chats_table, assigned)  # a study's assignments; its definition stays
        deleted += Deleted(records=len(assigned))
        return deleted + Deleted(records=self._delete_item(_key(f"EXP#{experiment}", "CONTROL")))

    def _pages(self, operation: str, kwargs: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Items of a Query or Scan, page by page (one request each)."""
        while True:
            page = self._call(operation, **kwargs)
            yield page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs = kwargs | {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def _delete_item(self, key: dict[str, Any]) -> int:
        """1 when the item existed."""
        got = self._call("delete_item", TableName=self.chats_table, Key=key, ReturnValues="ALL_OLD")
        return int("Attributes" in got)

    def _delete_chat(self, chat_id: str) -> Deleted:
        """Messages and client message ids first, META last: until then the index still lists the chat."""
        messages = records = 0
        kwargs = {
            "TableName": self.chats_table, "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _chat_pk(chat_id)}}, "ProjectionExpression": "pk, sk",
            "ConsistentRead": True,
        }
        for page in self._pages("query", kwargs):
            keys = [k for k in page if k["sk"]["S"] != "META"]
            self._batch_delete(self.chats_table, keys)
            messages += sum(k["sk"]["S"].startswith("MSG#") for k in keys)
            records += sum(not k["sk"]["S"].startswith("MSG#") for k in keys)
        return Deleted(chats=self._delete_item(_key(_chat_pk(chat_id), "META")), messages=messages, records=records)

    def _delete_connections(self, experiment: str, participant: str | None = None, session: str | None = None) -> Deleted:
        """The connections table is small (one item per open socket, TTL): a filtered Scan is fine here."""
        names, values, filters = {"#e": "experiment"}, {":e": {"S": experiment}}, ["#e = :e"]
        for attribute, value in (("participant", participant), ("session", session)):
            if value is not None:
                names[f"#{attribute}"], values[f":{attribute}"] = attribute, {"S": value}
                filters.append(f"#{attribute} = :{attribute}")
        kwargs = {
            "TableName": self.connections_table, "FilterExpression": " AND ".join(filters),
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
            "ProjectionExpression": "connection_id",
        }
        count = 0
        for page in self._pages("scan", kwargs):
            self._batch_delete(self.connections_table, page)
            count += len(page)
        return Deleted(connections=count)

    def _batch_delete(self, table: str, keys: list[dict[str, Any]]) -> None:
        self._batch_write(table, [{"DeleteRequest": {"Key": k}} for k in keys])

    def _batch_write(self, table: str, writes: list[dict[str, Any]]) -> None:
        """BatchWriteItem in 25s; what DynamoDB leaves unprocessed (capacity) is retried with backoff, boundedly."""
        for start in range(0, len(writes), 25):
            requests = {table: writes[start : start + 25]}

            def attempt() -> None:
                nonlocal requests
                requests = self._call("batch_write_item", RequestItems=requests).get("UnprocessedItems") or {}
                if requests:
                    raise _Contended("batch_write_item: unprocessed items")

            _retried(attempt, "batch_write_item")


def _chat(item: dict[str, Any]) -> Chat:
    lease = None
    if "lease_turn" in item:
        lease = Lease(item["lease_turn"], float(item["lease_until"]), int(item["lease_seq"]),
                      claimed=bool(item.get("lease_claimed")))
    return Chat(
        chat_id=item["chat_id"],
        identity=Identity(item["participant"], item["experiment"], item["session"]),
        chat_key=item["chat_key"],
        bot=Bot.from_dict(json.loads(item["bot"])),
        created_at=float(item["created_at"]),
        next_seq=int(item["next_seq"]),
        user_messages=int(item["user_messages"]),
        tokens_used=int(item["tokens_used"]),
        connection_id=item.get("connection_id"),
        lease=lease,
    )


def _assignment(item: dict[str, Any]) -> Assignment:
    return Assignment(item["study"], item["participant"], item["arm"], int(item["index"]),
                      float(item["entered_at"]), dict(item.get("platform_ids", {})))


def _controls(item: dict[str, Any]) -> Controls:
    """A CONTROL item as written ({}: none)."""
    budget = item.get("token_budget")
    return Controls(
        paused=bool(item.get("paused")),
        token_budget=None if budget is None else int(budget),
        tokens_used=int(item.get("tokens_used", 0)),
        allowlist=bool(item.get("allowlist")),
    )


def _breaker(item: dict[str, Any]) -> BreakerState:
    """The breaker's item ({}: never written)."""
    return BreakerState(int(item.get("failures", 0)), float(item.get("window_start", 0)),
                        float(item.get("open_until", 0)))


def _message(item: dict[str, Any]) -> Message:
    latency = item.get("latency_ms")
    return Message(
        chat_id=item["chat_id"],
        seq=int(item["seq"]),
        role=item["role"],
        text=item["text"],
        created_at=float(item["created_at"]),
        client_msg_id=item.get("client_msg_id"),
        prompt_tokens=int(item.get("prompt_tokens", 0)),
        completion_tokens=int(item.get("completion_tokens", 0)),
        model=item.get("model"),
        latency_ms=None if latency is None else int(latency),
        provenance=Provenance(**found) if (found := {k: item[k] for k in PROVENANCE_FIELDS if k in item}) else None,
    )


def _provenance_attributes(provenance: Provenance | None) -> dict[str, Any]:
    """A reply's provenance as attributes of its item (absent ones are not written)."""
    return {} if provenance is None else {k: getattr(provenance, k) for k in PROVENANCE_FIELDS}
