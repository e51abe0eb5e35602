"""DynamoDB's behaviour under concurrency and load, on top of moto's DynamoDB.

moto runs each DynamoDB request to completion and never refuses one for capacity, so a test
that passes on it says nothing about what DynamoDB does when requests overlap. This module
wraps `moto.dynamodb.responses.DynamoHandler.call_action`, which every DynamoDB request in
this process goes through, whether it came from `mock_aws` (botocore's stubber) or over HTTP
to a `ThreadedMotoServer` (the local stack's `--store dynamodb`), and adds, in DynamoDB's own
wire format (botocore parses and retries the answers as it would against AWS):

- **Conflicts.** A TransactWriteItems keeps its items in flight for `hold_seconds` outside
  moto, as the two-phase commit does, so other requests really overlap it. A transaction that
  meets an item in flight is cancelled (`TransactionCanceledException`, reason
  `TransactionConflict` at that item's index, `None` elsewhere); a PutItem, UpdateItem or
  DeleteItem on an item of a transaction in flight fails with `TransactionConflictException`;
  a TransactGetItems meeting any write in flight is cancelled. Single-item writes do not
  conflict with each other, and reads (GetItem, Query, Scan, BatchGetItem) never conflict.
  BatchWriteItem's requests count as single-item writes; one on an item of a transaction in
  flight comes back in UnprocessedItems (DynamoDB documents no conflict error for
  BatchWriteItem, and unprocessed is how a batch reports what it could not write).
- **Capacity** (`Throttle`): throttling errors, transactions cancelled with a capacity
  reason, batches that leave keys unprocessed; deterministic under a seed.
- **ClientRequestToken** idempotency for TransactWriteItems (botocore sends a token on every
  call and keeps it across its retries).

moto itself is not thread-safe, so its execution stays serialised by one lock: the lock makes
each request atomic, the in-flight registry makes overlapping ones conflict as on DynamoDB.
Installing the emulation also installs moto_speedups (a transaction rolls back only the items
it names, a Query lists only its partition), so that serialised moto keeps up with a local
stack of a thousand participants; every answer stays moto's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from moto.core.exceptions import JsonRESTError
from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException, TransactionCanceledException
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.responses import DynamoHandler
from moto.utilities.aws_headers import gen_amz_crc32

from . import moto_speedups

Response = tuple[int, dict[str, Any], str]
ItemKey = tuple[str, str, str, str]  #: account, region, table, the primary key as canonical JSON
ThrottleError = Literal["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"]

#: What DynamoDB meters; control-plane calls (CreateTable, DescribeTable...) are never throttled here.
DATA_PLANE = frozenset({
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan",
    "BatchGetItem", "BatchWriteItem", "TransactWriteItems", "TransactGetItems",
})
_SINGLE_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
_clock = time.monotonic  #: the idempotency window's clock (a test moves it instead of waiting 10 minutes)
_HOLD_LIMIT = 30.0  #: seconds a transaction waits for holding() to end, so a forgotten block cannot hang a test
_MESSAGES = {  # DynamoDB's wording, as far as its documentation gives it
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity of your table or index.",
    "ProvisionedThroughputExceeded": "The level of configured provisioned throughput for the table was exceeded.",
    "TransactionConflictException": "Operation was rejected because there is an ongoing transaction for the item.",
    "ProvisionedThroughputExceededException": "The level of configured provisioned throughput for the table was "
                                              "exceeded. Consider increasing your provisioning level with the UpdateTable API.",
    "ThrottlingException": "Rate of requests exceeds the allowed throughput.",
    "RequestLimitExceeded": "Throughput exceeds the current throughput limit for your account.",
    "IdempotentParameterMismatchException": "The request uses the same client token as a previous, but non-identical request.",
    "TransactionInProgressException": "The transaction with the given request token is already in progress.",
}


@dataclass(frozen=True)
class Throttle:
    """Which requests fail for capacity, and how. Off unless `rate` or `first` says otherwise.

    A matching request is throttled when it is among the `first` ones, else with probability
    `rate`. A throttled transaction is cancelled with one item's reason `ThrottlingError`
    (`ProvisionedThroughputExceeded` when `error` is ProvisionedThroughputExceededException);
    a throttled BatchGetItem or BatchWriteItem returns the fraction `unprocessed` of its keys
    (at least one) in UnprocessedKeys or UnprocessedItems, or fails with `error` when that is
    all of them, as DynamoDB does when it can process none; any other request fails with `error`.
    """

    rate: float = 0.0
    first: int = 0
    operations: frozenset[str] = DATA_PLANE
    tables: frozenset[str] = frozenset()  #: empty: every table
    error: ThrottleError = "ProvisionedThroughputExceededException"
    unprocessed: float = 0.5

    def matches(self, action: str, tables: set[str]) -> bool:
        return action in self.operations and (not self.tables or bool(tables & self.tables))


@dataclass(frozen=True)
class Strictness:
    """How closely moto is held to DynamoDB. The defaults: conflicts on, throttling off."""

    conflicts: bool = True
    hold_seconds: float = 0.005  #: how long a transaction keeps its items in flight (its commit)
    write_hold_seconds: float = 0.0  #: the same for single-item writes (they only make transactions conflict)
    throttle: Throttle = Throttle()
    idempotency_seconds: float = 600.0  #: how long a ClientRequestToken is remembered after its call
    seed: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Strictness:
        """The local stack's settings (docs/local.md lists them with their defaults)."""
        conflicts = env.get("LOCAL_DYNAMODB_CONFLICTS", "on").strip().lower()
        if conflicts not in ("on", "off"):
            raise ValueError(f"LOCAL_DYNAMODB_CONFLICTS must be on or off, not {conflicts!r}")
        error = env.get("LOCAL_DYNAMODB_THROTTLE_ERROR", "ProvisionedThroughputExceededException")
        if error not in get_args(ThrottleError):
            raise ValueError(f"LOCAL_DYNAMODB_THROTTLE_ERROR must be one of {', '.join(get_args(ThrottleError))}")
        rate = _number(env, "LOCAL_DYNAMODB_THROTTLE_RATE", "0", float)
        hold_ms = _number(env, "LOCAL_DYNAMODB_HOLD_MS", "5", float)
        if not 0 <= rate <= 1 or hold_ms < 0:
            raise ValueError("LOCAL_DYNAMODB_THROTTLE_RATE must be between 0 and 1, LOCAL_DYNAMODB_HOLD_MS at least 0")
        return cls(
            conflicts=conflicts == "on",
            hold_seconds=hold_ms / 1000,
            throttle=Throttle(rate=rate, error=error),  # type: ignore[arg-type]
            seed=int(_number(env, "LOCAL_DYNAMODB_SEED", "0", int)),
        )


def _number(env: Mapping[str, str], name: str, default: str, kind: type[float] | type[int]) -> float:
    try:
        return kind(env.get(name, default))
    except ValueError:
        raise ValueError(f"{name} must be a number, not {env[name]!r}") from None


@dataclass
class Counters:
    """What the emulation did since install or reset(): a test asserts on it to know that a
    conflict or a throttle really happened, instead of trusting timing."""

    transaction_conflicts: int = 0  #: TransactWriteItems cancelled with TransactionConflict
    write_conflicts: int = 0  #: PutItem/UpdateItem/DeleteItem refused with TransactionConflictException
    read_conflicts: int = 0  #: TransactGetItems cancelled with TransactionConflict
    batch_conflicts: int = 0  #: BatchWriteItem requests left unprocessed: their item was in a transaction
    throttled_requests: int = 0  #: requests refused with a throttling error
    throttled_transactions: int = 0  #: transactions cancelled with a capacity reason
    unprocessed_keys: int = 0  #: BatchGetItem keys returned in UnprocessedKeys
    unprocessed_items: int = 0  #: BatchWriteItem requests returned in UnprocessedItems for capacity
    replays: int = 0  #: TransactWriteItems answered from an earlier call with the same token
    token_mismatches: int = 0  #: IdempotentParameterMismatchException
    tokens_in_progress: int = 0  #: TransactionInProgressException
    held: int = 0  #: transactions held in flight by holding() right now (a gauge)


# -- DynamoDB's errors, as moto raises its own -------------------------------------------------
def _refusal(name: str) -> DynamodbException:
    """An error of DynamoDB's own (moto's class, so headers and body are shaped as moto's are)."""
    prefix = "com.amazon.coral.availability#" if name == "ThrottlingException" else ERROR_TYPE_PREFIX
    return DynamodbException(prefix + name, _MESSAGES[name])


def _cancelled(size: int, reasons: Mapping[int, str]) -> TransactionCanceledException:
    """One CancellationReasons entry per item, in order: `{"Code": "None"}` where nothing failed."""
    return TransactionCanceledException(
        [(reasons[i], _MESSAGES[reasons[i]], None) if i in reasons else (None, None, None) for i in range(size)]
    )


def _error(handler: DynamoHandler, exc: JsonRESTError) -> Response:
    """`exc` answered exactly as moto answers the errors its actions raise."""
    extra = dict(exc.get_headers()) | {"status": exc.code}
    status, headers, body = handler._transform_response(dict(handler.response_headers), (exc.get_body(), extra))
    headers, body = handler._enrich_response(headers, body)
    gen_amz_crc32(body, headers)
    return status, headers, body


def _answer(handler: DynamoHandler, data: dict[str, Any], response: Response | None = None) -> Response:
    """A success body: `data` merged into moto's `response`, or alone when moto had nothing to do."""
    if response is None:
        headers = dict(handler.response_headers) | {"Content-Type": "application/x-amz-json-1.0"}
        response = 200, handler._enrich_response(headers, "{}")[0], "{}"
    status, headers, body = response
    if status != 200:  # moto refused the rest: its error stands
        return response
    merged = json.loads(body or "{}")
    for name, tables in data.items():  # UnprocessedKeys or UnprocessedItems, by table
        ours = merged.setdefault(name, {})
        for table, more in tables.items():  # moto's own (past 16 MB of results) are kept
            if table not in ours:
                ours[table] = more
            elif isinstance(more, dict):
                ours[table]["Keys"] += more["Keys"]
            else:
                ours[table] += more
    body = json.dumps(merged)
    headers = dict(headers)
    gen_amz_crc32(body, headers)
    return status, headers, body


def _wire(value: Any) -> Any:
    """Parsed request values back to DynamoDB JSON (moto's parser turns B and BS into bytes)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


# -- which items a request touches ----------------------------------------------------------
def _item_key(handler: DynamoHandler, table: str, key: dict[str, Any] | None = None,
              item: dict[str, Any] | None = None) -> ItemKey:
    """The item's identity: its Key, or the key attributes of a Put's Item per the table's KeySchema."""
    if key is None:
        described = dynamodb_backends[handler.current_account][handler.region].get_table(table)
        names = [n for n in (described.hash_key_attr, described.range_key_attr) if n]
        key = {n: item[n] for n in names}  # type: ignore[index]
    return handler.current_account, handler.region, table, json.dumps(_wire(key), sort_keys=True)


def _entry_key(handler: DynamoHandler, entry: dict[str, Any]) -> ItemKey:
    """The item of one TransactItems entry (Put, Update, Delete, ConditionCheck or Get) or
    BatchWriteItem request (PutRequest, DeleteRequest: `TableName` added by the caller)."""
    ((_kind, body),) = entry.items()
    return _item_key(handler, body["TableName"], body.get("Key"), body.get("Item"))


def _keys(handler: DynamoHandler, entries: list[dict[str, Any]]) -> list[ItemKey] | None:
    """Each entry's item, or None when the request is malformed: moto answers it with its own error."""
    try:
        return [_entry_key(handler, e) for e in entries]
    except (KeyError, TypeError, ValueError, AttributeError, JsonRESTError):
        return None


def _tables(params: dict[str, Any]) -> set[str]:
    names = {params["TableName"]} if "TableName" in params else set(params.get("RequestItems", {}))
    for entry in params.get("TransactItems", []):
        names.update(body.get("TableName", "") for body in entry.values())
    return names


def _batch_entries(action: str, items: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(table, index, entry) of each key of a BatchGetItem or request of a BatchWriteItem."""
    if action == "BatchGetItem":
        return [(t, i, {"Get": {"TableName": t, "Key": k}}) for t, r in items.items() for i, k in enumerate(r["Keys"])]
    return [(t, i, {k: v | {"TableName": t} for k, v in e.items()}) for t, r in items.items() for i, e in enumerate(r)]


class _InFlight:
    """Items of requests under way. A transaction owns its items; single-item writes only count
    theirs, because DynamoDB serialises them among themselves but cancels a transaction that meets one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned: set[ItemKey] = set()
        self._writes: Counter[ItemKey] = Counter()

    def busy(self, keys: list[ItemKey]) -> list[int]:
        """Indexes of the keys that a transaction or a write has in flight."""
        with self._lock:
            return [i for i, k in enumerate(keys) if k in self._owned or self._writes[k]]

    def claim(self, keys: list[ItemKey]) -> list[int]:
        """Take a transaction's items, or (taking nothing) the indexes of those in flight."""
        with self._lock:
            busy = [i for i, k in enumerate(keys) if k in self._owned or self._writes[k]]
            if not busy:
                self._owned.update(keys)
            return busy

    def release(self, keys: list[ItemKey]) -> None:
        with self._lock:
            self._owned.difference_update(keys)

    def enter(self, key: ItemKey) -> bool:
        """Count a single-item write in, unless a transaction has its item."""
        with self._lock:
            if key in self._owned:
                return False
            self._writes[key] += 1
            return True

    def leave(self, keys: list[ItemKey]) -> None:
        with self._lock:
            self._writes.subtract(keys)
            for key in keys:
                if self._writes[key] <= 0:
                    del self._writes[key]


# -- the emulation -------------------------------------------------------------------------
_MOTO = threading.Lock()  #: moto's DynamoDB is not thread-safe: one request at a time in it
_INSTALL = threading.Lock()
_installed: StrictDynamoDB | None = None


def _serialised(run: Callable[..., Any], *args: Any) -> Any:
    with _MOTO:
        return run(*args)


@dataclass
class _Token:
    fingerprint: str
    response: Response | None = None  #: None while the first call is under way
    expires: float = field(default=float("inf"))


class StrictDynamoDB:
    """The installed emulation: its settings, changeable at run time, and its counters."""

    def __init__(self, strictness: Strictness) -> None:
        self._strictness = strictness
        self._changed = threading.Condition()
        self._counters = Counters()
        self._flight = _InFlight()
        self._tokens: OrderedDict[tuple[str, str, str], _Token] = OrderedDict()
        self._holding: tuple[bool, bool] | None = None  #: (transactions, writes) while holding()
        self._rng = random.Random(strictness.seed)
        self._first_left = strictness.throttle.first
        self._original: Callable[[DynamoHandler], Response] | None = None  #: moto's, while installed

    # -- the API ---------------------------------------------------------------------------
    @property
    def strictness(self) -> Strictness:
        return self._strictness

    def configure(self, base: Strictness | None = None, /, **changes: Any) -> Strictness:
        """Settings from now on: `base` (else the current ones) with `changes` to its fields.
        The seed's sequence and the `first` count start over."""
        with self._changed:
            self._strictness = replace(base or self._strictness, **changes)
            self._rng = random.Random(self._strictness.seed)
            self._first_left = self._strictness.throttle.first
            return self._strictness

    @contextlib.contextmanager
    def throttling(self, throttle: Throttle | None = None, **fields: Any) -> Iterator[StrictDynamoDB]:
        """Throttle (`throttle`, or one made of `fields`) inside the block only."""
        before = self._strictness.throttle
        self.configure(throttle=throttle or Throttle(**fields))
        try:
            yield self
        finally:
            self.configure(throttle=before)

    @contextlib.contextmanager
    def holding(self, writes: bool = False) -> Iterator[StrictDynamoDB]:
        """Keep every transaction that starts in the block in flight until the block ends (and
        single-item writes too, with `writes`), so a test makes overlaps certain instead of likely."""
        with self._changed:
            self._holding = (True, writes)
        try:
            yield self
        finally:
            with self._changed:
                self._holding = None
                self._changed.notify_all()

    @property
    def counters(self) -> Counters:
        with self._changed:
            return replace(self._counters)

    def describe(self) -> dict[str, Any]:
        """Settings and counters as JSON-ready data (load test reports, moto_process's stats)."""
        strictness = self.strictness
        return {"conflicts": strictness.conflicts, "hold_ms": strictness.hold_seconds * 1000,
                "throttle_rate": strictness.throttle.rate, "throttle_first": strictness.throttle.first,
                "counters": asdict(self.counters)}

    def wait_for(self, predicate: Callable[[Counters], bool], timeout: float = 10.0) -> bool:
        """Wait until the counters satisfy `predicate` (False after `timeout` s)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._counters), timeout)

    def reset(self) -> None:
        """Counters, remembered tokens, the seed's sequence and the `first` count start over."""
        with self._changed:
            self._counters = Counters(held=self._counters.held)
            self._tokens.clear()
            self._rng = random.Random(self._strictness.seed)
            self._first_left = self._strictness.throttle.first

    def install(self) -> StrictDynamoDB:
        """Wrap moto's DynamoDB handler in this process (mock_aws and ThreadedMotoServer alike).

        One emulation at a time: another install is refused, so whoever installed first (the
        test session) keeps control; change that one with configure() instead.
        """
        global _installed
        with _INSTALL:
            if _installed is not None:
                raise RuntimeError("strict DynamoDB is already installed: use installed().configure()")
            original = self._original = DynamoHandler.call_action

            def call_action(handler: DynamoHandler) -> Response:
                return self.handle(handler, lambda: _serialised(original, handler))

            DynamoHandler.call_action = call_action  # type: ignore[method-assign]
            moto_speedups.install()
            _installed = self
            return self

    def uninstall(self) -> None:
        """Give moto back its own DynamoHandler.call_action."""
        global _installed
        with _INSTALL:
            if _installed is self and self._original is not None:
                DynamoHandler.call_action = self._original  # type: ignore[method-assign]
                moto_speedups.uninstall()
                self._original = None
                _installed = None

    def __enter__(self) -> StrictDynamoDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.uninstall()

    # -- bookkeeping -----------------------------------------------------------------------
    def _count(self, **increments: int) -> None:
        with self._changed:
            for name, n in increments.items():
                setattr(self._counters, name, getattr(self._counters, name) + n)
            self._changed.notify_all()

    def _throttled(self, action: str, params: dict[str, Any]) -> bool:
        throttle = self._strictness.throttle
        if not throttle.matches(action, _tables(params)):
            return False
        with self._changed:
            if self._first_left > 0:
                self._first_left -= 1
                return True
            return throttle.rate > 0 and self._rng.random() < throttle.rate

    def _pick(self, population: int, k: int) -> list[int]:
        with self._changed:
            return sorted(self._rng.sample(range(population), k))

    def _hold(self, seconds: float, transaction: bool) -> None:
        """Stay in flight: the commit's duration, then as long as holding() asks."""
        if seconds > 0:
            time.sleep(seconds)
        with self._changed:
            if self._holding is None or not self._holding[0 if transaction else 1]:
                return
            self._counters.held += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._holding is None, _HOLD_LIMIT)
            self._counters.held -= 1
            self._changed.notify_all()

    # -- requests --------------------------------------------------------------------------
    def handle(self, handler: DynamoHandler, run: Callable[[], Response]) -> Response:
        """Answer one request as DynamoDB would; `run` executes it in moto (serialised)."""
        action = handler._get_action()
        params: dict[str, Any] = getattr(handler, "params", None) or {}
        throttled = self._throttled(action, params)
        if action == "TransactWriteItems":
            return self._idempotent(handler, params, lambda: self._transact(handler, params, run, throttled, True))
        if action == "TransactGetItems":
            return self._transact(handler, params, run, throttled, False)
        if action in ("BatchGetItem", "BatchWriteItem"):
            return self._batch(handler, action, params, run, throttled)
        if throttled:
            self._count(throttled_requests=1)
            return _error(handler, _refusal(self._strictness.throttle.error))
        if action in _SINGLE_WRITES and self._strictness.conflicts:
            return self._write(handler, action, params, run)
        return run()

    def _transact(self, handler: DynamoHandler, params: dict[str, Any], run: Callable[[], Response],
                  throttled: bool, writes: bool) -> Response:
        """TransactWriteItems (`writes`) takes its items for its commit or is cancelled where they
        are busy; TransactGetItems is cancelled where writes are in flight, and takes nothing."""
        keys = _serialised(_keys, handler, params.get("TransactItems", []))
        if keys is None:
            return run()
        if throttled:
            self._count(throttled_transactions=1)
            error = self._strictness.throttle.error
            reason = "ProvisionedThroughputExceeded" if error.startswith("Provisioned") else "ThrottlingError"
            return _error(handler, _cancelled(len(keys), {self._pick(len(keys), 1)[0]: reason}))
        if not self._strictness.conflicts:
            return run()
        busy = self._flight.claim(keys) if writes else self._flight.busy(keys)
        if busy:
            self._count(**{"transaction_conflicts" if writes else "read_conflicts": 1})
            return _error(handler, _cancelled(len(keys), dict.fromkeys(busy, "TransactionConflict")))
        if not writes:
            return run()
        try:
            self._hold(self._strictness.hold_seconds, transaction=True)
            return run()
        finally:
            self._flight.release(keys)

    def _write(self, handler: DynamoHandler, action: str, params: dict[str, Any], run: Callable[[], Response]) -> Response:
        """A PutItem, UpdateItem or DeleteItem: refused on an item of a transaction in flight, else
        counted in flight while it runs, so that a transaction arriving meanwhile is cancelled."""
        keys = _serialised(_keys, handler, [{action: params}])
        if keys is None:
            return run()
        if not self._flight.enter(keys[0]):
            self._count(write_conflicts=1)
            return _error(handler, _refusal("TransactionConflictException"))
        try:
            self._hold(self._strictness.write_hold_seconds, transaction=False)
            return run()
        finally:
            self._flight.leave(keys)

    def _batch(self, handler: DynamoHandler, action: str, params: dict[str, Any], run: Callable[[], Response],
               throttled: bool) -> Response:
        """Leave some keys unprocessed (capacity; for writes, also items in a transaction), run the rest."""
        items = params.get("RequestItems")
        try:
            entries = _batch_entries(action, items)  # type: ignore[arg-type]
        except (KeyError, TypeError, AttributeError):
            return run()  # malformed: moto answers with its own error
        keys = _serialised(_keys, handler, [e for _, _, e in entries]) if entries else None
        if keys is None:
            return run()
        left = set(self._pick(len(entries), max(1, round(len(entries) * self._strictness.throttle.unprocessed))) if throttled else [])
        if len(left) == len(entries):
            self._count(throttled_requests=1)
            return _error(handler, _refusal(self._strictness.throttle.error))
        self._count(**{"unprocessed_keys" if action == "BatchGetItem" else "unprocessed_items": len(left)})
        entered: list[ItemKey] = []
        if action == "BatchWriteItem" and self._strictness.conflicts:
            for i, key in enumerate(keys):
                if i not in left:
                    if self._flight.enter(key):
                        entered.append(key)
                    else:
                        left.add(i)
                        self._count(batch_conflicts=1)
        kept, rest = _split(action, items, entries, left)
        try:
            if entered:
                self._hold(self._strictness.write_hold_seconds, transaction=False)
            field_name = "UnprocessedKeys" if action == "BatchGetItem" else "UnprocessedItems"
            if not kept:
                return _answer(handler, {field_name: rest})
            if not rest:
                return run()
            params["RequestItems"] = kept  # moto reads the request from here
            return _answer(handler, {field_name: rest}, run())
        finally:
            self._flight.leave(entered)

    def _idempotent(self, handler: DynamoHandler, params: dict[str, Any], transact: Callable[[], Response]) -> Response:
        """ClientRequestToken: a repeat within the window succeeds without being applied again;
        the same token with another request is refused; a repeat while the first runs is told so."""
        token = params.get("ClientRequestToken")
        if not token or self._strictness.idempotency_seconds <= 0:
            return transact()
        key = (handler.current_account, handler.region, token)
        fingerprint = json.dumps(_wire({k: v for k, v in params.items() if k != "ClientRequestToken"}), sort_keys=True)
        with self._changed:
            while self._tokens and next(iter(self._tokens.values())).expires <= _clock():
                self._tokens.popitem(last=False)
            known = self._tokens.get(key)
            if known is None:
                self._tokens[key] = _Token(fingerprint)
        if known is not None:
            if known.fingerprint != fingerprint:
                self._count(token_mismatches=1)
                return _error(handler, _refusal("IdempotentParameterMismatchException"))
            if known.response is None:
                self._count(tokens_in_progress=1)
                return _error(handler, _refusal("TransactionInProgressException"))
            self._count(replays=1)
            status, headers, body = known.response
            return status, dict(headers), body
        response: Response | None = None
        try:
            response = transact()
            return response
        finally:
            with self._changed:
                self._tokens.pop(key, None)  # reset() may have cleared it meanwhile
                if response is not None and response[0] == 200:  # only a committed call is remembered
                    expires = _clock() + self._strictness.idempotency_seconds
                    self._tokens[key] = _Token(fingerprint, response, expires)


def _split(action: str, items: dict[str, Any], entries: list[tuple[str, int, dict[str, Any]]],
           left: set[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The batch's RequestItems without the `left` entries, and those as DynamoDB returns them."""
    kept: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for n, (table, i, _entry) in enumerate(entries):
        target = rest if n in left else kept
        if action == "BatchGetItem":
            request = items[table]
            slot = target.setdefault(table, {k: v for k, v in request.items() if k != "Keys"} | {"Keys": []})
            slot["Keys"].append(request["Keys"][i])
        else:
            target.setdefault(table, []).append(items[table][i])
    return kept, _wire(rest)


def installed() -> StrictDynamoDB | None:
    """The emulation in force in this process, if any."""
    return _installed


def install(strictness: Strictness | None = None) -> StrictDynamoDB:
    """Install a new emulation (`Strictness()` by default); uninstall() or a `with` block ends it."""
    return StrictDynamoDB(strictness or Strictness()).install()
