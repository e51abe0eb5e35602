"""The request units each DynamoDB call costs on demand, counted on a boto3 client as it runs.

`Meter.attach(client)` hooks botocore's events on one client: before each call it notes the
request and the size of every item the call will write, after it the sizes again, and prices
the call by DynamoDB's rules (its developer guide: read and write request units, item sizes,
and the write activity of global secondary indexes):

- a write is 1 WRU per started KB of the larger of the item before and after (a delete: the item
  deleted); 1 at least, also when its condition fails; a transaction's items cost double;
- a strongly consistent read is 1 RRU per started 4 KB of the item (a missing item: 1); half of
  that eventually consistent; a Query costs the sum of the items it returns, rounded up;
- a successful write also writes each global secondary index whose copy of the item it puts,
  changes or deletes, 1 WRU per started KB of the projected item (2 writes when the index key
  changes; none when the copy stays the same; not doubled in a transaction).

Item sizes follow DynamoDB's: attribute names and strings in UTF-8 bytes, a number 1 byte per two
significant digits plus 1, lists and maps 3 bytes plus 1 per element. The sizes are read off the
table itself (through `peek`, which the meter does not count), so what an update expression adds
is priced too. An operation the meter has no rule for raises: nothing is priced as free.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_READS = {"GetItem", "BatchGetItem", "Query"}
_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}


@dataclass(frozen=True)
class Request:
    """One DynamoDB call as priced: what it was for (`method`: the store method that made it)."""

    action: str
    method: str
    operation: str
    rru: float
    wru: float  #: the table's writes
    index_wru: float  #: writes to global secondary indexes


@dataclass(frozen=True)
class Table:
    """What pricing needs of a table: its key attributes and its indexes' keys and projections."""

    keys: tuple[str, ...]
    #: each global secondary index: (its keys, its projection type, its non-key attributes)
    indexes: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_create_table(cls, kwargs: dict[str, Any]) -> Table:
        """From create_table arguments (local_gateway.template reads them off template.yaml)."""
        indexes = tuple(
            (tuple(k["AttributeName"] for k in index["KeySchema"]), index["Projection"]["ProjectionType"],
             tuple(index["Projection"].get("NonKeyAttributes", ())))
            for index in kwargs.get("GlobalSecondaryIndexes", ())
        )
        return cls(tuple(k["AttributeName"] for k in kwargs["KeySchema"]), indexes)


def wru(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def rru(size: int) -> int:
    return max(1, math.ceil(size / 4096))


def _number_bytes(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").split("e")[0].split("E")[0].strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1


def value_bytes(value: dict[str, Any]) -> int:
    """The size of one attribute value in DynamoDB's wire form ({"S": ...}, {"N": ...} ...)."""
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_bytes(str(v))
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_bytes(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_bytes(e) for k, e in v.items())
    if kind == "SS":
        return sum(len(e.encode()) for e in v)
    if kind == "NS":
        return sum(_number_bytes(e) for e in v)
    if kind == "BS":
        return sum(len(e) for e in v)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_bytes(item: dict[str, Any] | None) -> int:
    """An item's size (0 for no item): its attribute names and values."""
    return sum(len(name.encode()) + value_bytes(v) for name, v in (item or {}).items())


@dataclass
class _Write:
    table: str
    key: dict[str, Any]
    before: dict[str, Any] | None = None


@dataclass
class Meter:
    """Prices every call of the clients it is attached to; `requests` lists them in order.

    `action` names what the caller is doing (set it around each step), `method()` which store
    method made the call (the profile's store wrapper sets it); both only label the requests.
    """

    tables: dict[str, Table]
    peek: Any  #: what the meter reads items with (get_item, as a DynamoDB client has): never counted
    requests: list[Request] = field(default_factory=list)
    action: str = "-"
    _local: threading.local = field(default_factory=threading.local)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb", self._before)
        client.meta.events.register("after-call.dynamodb", self._after)

    @contextmanager
    def method(self, name: str) -> Iterator[None]:
        """Label the calls made inside as `name`'s (the outermost label wins: a store method's
        calls of its own methods are its own)."""
        outer = getattr(self._local, "method", None)
        if outer is None:
            self._local.method = name
        try:
            yield
        finally:
            if outer is None:
                self._local.method = None

    # -- hooks -------------------------------------------------------------------------------
    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        operation = model.name
        if operation not in _READS | _WRITES:
            raise NotImplementedError(f"the cost meter has no rule for DynamoDB {operation}: add one (dynamo_units.py)")
        writes = [_Write(t, k, self._item(t, k)) for t, k in self._written(operation, params)]
        context["cost_meter"] = (operation, params, writes)

    def _after(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        operation, params, writes = context.pop("cost_meter")
        ok = http_response.status_code < 300
        rru_, wru_, index = 0.0, 0.0, 0.0
        if operation in _READS:
            rru_ = self._read_units(operation, params, parsed)
        double = 2 if operation == "TransactWriteItems" else 1
        for write in writes:
            after = self._item(write.table, write.key) if ok else write.before
            wru_ += double * wru(max(item_bytes(write.before), item_bytes(after)))
            if ok:
                index += self._index_units(write.table, write.before, after)
        method = getattr(self._local, "method", None) or "-"
        self.requests.append(Request(self.action, method, operation, rru_, wru_, index))

    # -- reads -------------------------------------------------------------------------------
    def _read_units(self, operation: str, params: dict[str, Any], parsed: dict[str, Any]) -> float:
        """Reads are priced on whole items: a projected answer is looked up whole, by its key."""
        projected = "ProjectionExpression" in params or "IndexName" in params
        if operation == "GetItem":
            found = self._item(params["TableName"], params["Key"]) if projected else parsed.get("Item")
            return rru(item_bytes(found)) * _consistency(params)
        if operation == "BatchGetItem":
            unprocessed, units = parsed.get("UnprocessedKeys") or {}, 0.0
            for table, request in params["RequestItems"].items():
                left = unprocessed.get(table, {}).get("Keys", [])
                answered = {self._key_of(table, i): i for i in parsed.get("Responses", {}).get(table, [])}
                for key in (k for k in request["Keys"] if k not in left):
                    if "ProjectionExpression" in request:
                        found = self._item(table, key)
                    else:
                        found = answered.get(self._key_of(table, key))
                    units += rru(item_bytes(found)) * _consistency(request)
            return units
        table, items = params["TableName"], parsed.get("Items", [])
        if projected:  # the items hold the table's keys: this meter's callers project them
            items = [self._item(table, self._key(table, i)) for i in items]
        return rru(sum(map(item_bytes, items))) * _consistency(params)

    # -- writes ------------------------------------------------------------------------------
    def _written(self, operation: str, params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(table, key) of every item the call writes."""
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            return [(params["TableName"], self._key(params["TableName"], params.get("Key") or params["Item"]))]
        if operation == "TransactWriteItems":
            found = []
            for entry in params["TransactItems"]:
                (part,) = entry.values()
                found.append((part["TableName"], self._key(part["TableName"], part.get("Key") or part["Item"])))
            return found
        if operation == "BatchWriteItem":
            return [
                (table, self._key(table, (r.get("PutRequest") or {}).get("Item") or r["DeleteRequest"]["Key"]))
                for table, requests in params["RequestItems"].items() for r in requests
            ]
        return []

    def _index_units(self, table_name: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> int:
        table, units = self.tables[table_name], 0
        for keys, projection, extra in table.indexes:
            old = _projected(table, keys, projection, extra, before)
            new = _projected(table, keys, projection, extra, after)
            if old is None or new is None:  # an entry put or deleted (or neither)
                units += wru(item_bytes(new or old)) if (new or old) else 0
            elif any(old[k] != new[k] for k in keys):  # the entry moves: a delete and a put
                units += wru(item_bytes(old)) + wru(item_bytes(new))
            elif old != new:  # the entry changes in place
                units += wru(item_bytes(new))
        return units

    def _key(self, table: str, item: dict[str, Any]) -> dict[str, Any]:
        return {k: item[k] for k in self.tables[table].keys}

    def _key_of(self, table: str, item: dict[str, Any]) -> str:
        return repr(sorted(self._key(table, item).items()))

    def _item(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        return self.peek.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")


def _consistency(params: dict[str, Any]) -> float:
    return 1.0 if params.get("ConsistentRead") else 0.5


def _projected(table: Table, keys: tuple[str, ...], projection: str, extra: tuple[str, ...],
               item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The index's copy of `item`, or None when the item is not in the index (a key missing)."""
    if item is None or any(k not in item for k in keys):
        return None
    if projection == "ALL":
        return item
    kept = set(table.keys) | set(keys) | (set(extra) if projection == "INCLUDE" else set())
    return {k: v for k, v in item.items() if k in kept}
