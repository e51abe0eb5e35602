"""Two of moto's DynamoDB costs that grow with the table, cut without changing any answer.

moto 5.2.5 does, on every request of these kinds:

- **TransactWriteItems**: `copy.deepcopy` of every table the transaction names, to roll back if
  it is cancelled. With the local stack's 12,000 items (1000 participants x 3 messages) that
  was most of moto's time, and moto runs one request at a time (strict_dynamodb.py).
- **Query on a table's key**: `Table.all_items()`, which lists and sorts the whole table, then
  keeps the partition asked for.

Here a transaction snapshots only the items it names (a transaction can change nothing else)
and, where moto would swap in its copy of the table, puts those items back; a Query on the
base table lists only its own partition. Each falls back to moto's own path when it cannot be
sure (a malformed request, a table with a stream, whose records moto's copy would also roll
back). tests/local_gateway/test_moto_speedups.py runs the same requests with and without
these and compares every answer and the tables' contents.

Installed and removed with the strict emulation (strict_dynamodb.install()); moto's own
functions are restored by `uninstall()`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
import types
from collections.abc import Iterator
from typing import Any

from moto.dynamodb import models as _backend_module
from moto.dynamodb.exceptions import MockValidationException, MultipleTransactionsException, TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_ORIGINAL_TRANSACT = DynamoDBBackend.transact_write_items
_ORIGINAL_QUERY = Table.query
_ORIGINAL_ALL_ITEMS = Table.all_items
_QUERY_SIGNATURE = inspect.signature(_ORIGINAL_QUERY)
#: What moto rolls back on (anything else it lets through with the items already written).
_ROLLED_BACK = (MultipleTransactionsException, MockValidationException, TransactionCanceledException)
_local = threading.local()  #: skip_table_copy (during a transaction), partition (during a Query)
_lock = threading.Lock()
_installed = False

Snapshot = list[tuple[Table, DynamoType, DynamoType | None, Any, bool]]  #: table, hash, range, item copy, partition existed


class _Copy(types.ModuleType):
    """`copy` as moto's DynamoDB backend module sees it: a deep copy of a Table, during a
    transaction that snapshotted its own items, is the table itself (nothing to swap back)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(x: Any, memo: dict[int, Any] | None = None, _nil: Any = None) -> Any:
        if isinstance(x, Table) and getattr(_local, "skip_table_copy", False):
            return x
        return copy.deepcopy(x, memo)


def _key_of(table: Table, op_type: str, op: dict[str, Any]) -> tuple[DynamoType, DynamoType | None]:
    attrs = op["Item"] if op_type == "Put" else op["Key"]
    hash_value = DynamoType(attrs[table.hash_key_attr])
    range_value = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
    return hash_value, range_value


def _snapshot(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> Snapshot | None:
    """A copy of each item the transaction names, or None when moto's whole-table copy must stay."""
    if len(transact_items) > 100:
        return None  # moto refuses it before copying anything
    saved: Snapshot = []
    try:
        for entry in transact_items:
            ((op_type, op),) = entry.items()
            table = backend.tables.get(op.get("TableName"))
            if table is None:
                continue  # moto copies no table it does not have
            if table.stream_shard is not None:
                return None
            hash_value, range_value = _key_of(table, op_type, op)
            existed = hash_value in table.items
            current = table.get_item(hash_value, range_value) if existed else None
            saved.append((table, hash_value, range_value, copy.deepcopy(current), existed))
    except Exception:  # malformed: moto's own path answers it
        return None
    return saved


def _restore(saved: Snapshot) -> None:
    for table, hash_value, range_value, item, existed in reversed(saved):
        if table.range_key_attr is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
            continue
        partition = table.items[hash_value]
        if item is None:
            partition.pop(range_value, None)
        else:
            partition[range_value] = item
        if not partition and not existed:
            del table.items[hash_value]


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's TransactWriteItems, rolled back item by item instead of table by table."""
    saved = _snapshot(self, transact_items)
    if saved is None:
        return _ORIGINAL_TRANSACT(self, transact_items)
    _local.skip_table_copy = True
    try:
        return _ORIGINAL_TRANSACT(self, transact_items)
    except _ROLLED_BACK:
        _restore(saved)
        raise
    finally:
        _local.skip_table_copy = False


def query(self: Table, *args: Any, **kwargs: Any) -> Any:
    """moto's Query; on the base table, `all_items()` lists only the partition asked for."""
    bound = _QUERY_SIGNATURE.bind(self, *args, **kwargs)
    hash_key = bound.arguments.get("hash_key")
    if bound.arguments.get("index_name") or not isinstance(hash_key, DynamoType):
        return _ORIGINAL_QUERY(self, *args, **kwargs)
    _local.partition = (self, hash_key)
    try:
        return _ORIGINAL_QUERY(self, *args, **kwargs)
    finally:
        _local.partition = None


def all_items(self: Table) -> list[Any]:
    """moto's all_items(), or during a base-table Query the queried partition, sorted the same way."""
    partition = getattr(_local, "partition", None)
    if partition is None or partition[0] is not self:
        return _ORIGINAL_ALL_ITEMS(self)
    found = self.items.get(partition[1])  # .get: the defaultdict must not grow
    if found is None:
        return []
    items = list(found.values()) if self.range_key_attr else [found]
    return sorted(items, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)


def _patches() -> list[tuple[Any, str, Any, Any]]:
    """(owner, attribute, ours, moto's own) of each replacement."""
    return [
        (_backend_module, "copy", _Copy("copy"), copy),
        (DynamoDBBackend, "transact_write_items", transact_write_items, _ORIGINAL_TRANSACT),
        (Table, "query", query, _ORIGINAL_QUERY),
        (Table, "all_items", all_items, _ORIGINAL_ALL_ITEMS),
    ]


def _set(on: bool) -> None:
    global _installed
    with _lock:
        for owner, name, ours, theirs in _patches():
            setattr(owner, name, ours if on else theirs)
        _installed = on


def install() -> None:
    _set(True)


def uninstall() -> None:
    _set(False)


def installed() -> bool:
    return _installed


@contextlib.contextmanager
def off() -> Iterator[None]:
    """moto's own functions inside the block (tests compare both), the speed-ups again after it if they were on."""
    was = _installed
    uninstall()
    try:
        yield
    finally:
        if was:
            install()
