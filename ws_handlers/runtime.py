"""The composition root: builds the adapters from Settings, once per Lambda container.

Handlers call `services()`: the process's services, built from the environment on first use,
unless `install()` replaced them (the tests; each reply worker process of the local stack,
local_gateway/process_runner.py) or `using()` scoped others to the running context (the local
stack runs its other functions side by side in its own process, each with its own settings, as
separate Lambdas would: local_gateway/stack.py). Only the edges differ from AWS: the same
adapters pointed at loopback, or the local stack's own store and push. The model adapter is
built by `Services.model()` on first use, which only the reply function makes: the connect and
message functions never load openai.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .adapters.apigateway import ManagementApiPusher
from .adapters.dynamodb import DynamoStore
from .adapters.sqs import SqsJobQueue
from .config import Settings
from .identity import Ticket
from .jobs import JobQueue, ReplyJob
from .model import ChatModel
from .push import Pusher
from .store import Store


class ConfigurationError(RuntimeError):
    """The deployment is missing a setting; logged, never shown to participants."""


def _secret(arn: str | None, plain: str | None, what: str) -> str:
    if arn:
        from aws_lambda_powertools.utilities import parameters

        return str(parameters.get_secret(arn, max_age=300))
    if plain:
        return plain
    raise ConfigurationError(f"no {what}: set {what}_ARN (AWS) or {what} (local development)")


@dataclass
class Services:
    settings: Settings
    store: Store
    jobs: JobQueue
    pusher_for: Callable[[str], Pusher]
    ticket_secret: Callable[[], str]
    model_factory: Callable[[], ChatModel] | None = None
    #: the handlers' "now" (epoch seconds): leases, the breaker's cooldown, rate windows; tests move it
    clock: Callable[[], float] = time.time
    _model: Any = field(default=None, repr=False)
    _model_key: str | None = field(default=None, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def model(self) -> ChatModel:
        """The ChatModel, built on first use (only the reply function needs it), and again
        when the key has changed: a warm container follows a rotated key within the secret
        cache's 5 minutes instead of failing with the old one until Lambda recycles it. Built
        once however many threads ask at once (the local stack's reply threads): a model loads
        the CA certificates, ~60 ms of CPU."""
        if self.model_factory is not None:
            if self._model is None:
                with self._model_lock:
                    if self._model is None:
                        self._model = self.model_factory()
            return self._model
        s = self.settings
        key = _secret(s.openai_api_key_secret_arn, s.openai_api_key, "OPENAI_API_KEY")
        if self._model is None or self._model_key != key:
            with self._model_lock:
                if self._model is None or self._model_key != key:
                    from .adapters.openai_model import OpenAIChatModel

                    self._model = OpenAIChatModel(key, s.openai_base_url, s.llm_timeout, s.llm_max_retries)
                    self._model_key = key
        return self._model

    def open_ticket(self, ticket: str) -> Ticket:
        """A `start` frame's chat ticket, opened with the deployment's secret (`identity.TicketOpener`).
        `tickets` (PyJWT and cryptography, ~60 ms) is imported here, not with this module: the
        message function loads it at INIT (message.py), the reply and disconnect functions never."""
        from . import tickets

        return tickets.open_ticket(self.ticket_secret(), ticket, max_age=self.settings.ticket_max_age)


def from_settings(settings: Settings, jobs: JobQueue | None = None, store: Store | None = None) -> Services:
    """The production wiring: DynamoDB, the Management API, SQS, Secrets Manager (`store`:
    another adapter, e.g. the local stack's SQLite file in its worker processes)."""
    if store is None:
        store = DynamoStore(
            settings.connections_table,
            settings.chats_table,
            **({"endpoint_url": settings.dynamodb_endpoint_url} if settings.dynamodb_endpoint_url else {}),
        )
    if jobs is None:
        # the reply function itself queues nothing; elsewhere a missing queue fails loudly on use
        jobs = SqsJobQueue(settings.reply_queue_url) if settings.reply_queue_url else NoJobQueue()
    return Services(
        settings=settings,
        store=store,
        jobs=jobs,
        pusher_for=functools.lru_cache(maxsize=8)(ManagementApiPusher),
        ticket_secret=lambda: _secret(settings.ticket_secret_arn, settings.ticket_secret, "TICKET_SECRET"),
    )


_lock = threading.Lock()
_services: Services | None = None
_current: ContextVar[Services | None] = ContextVar("services", default=None)


def services() -> Services:
    """The services of the function being run: `using()`'s, else the process's."""
    current = _current.get()
    if current is not None:
        return current
    global _services
    with _lock:
        if _services is None:
            _services = from_settings(Settings.from_env())
        return _services


def install(new: Services | None) -> None:
    """Replace the process's services (tests; a local reply worker process); None rebuilds from
    the environment on next use."""
    global _services
    with _lock:
        _services = new


@contextlib.contextmanager
def using(scoped: Services) -> Iterator[Services]:
    """Run handlers with `scoped` services in this context (the local gateway runs several
    functions in one process, each with its own settings, as separate Lambdas would)."""
    token = _current.set(scoped)
    try:
        yield scoped
    finally:
        _current.reset(token)


class NoJobQueue:
    """For functions that start no replies; a misconfigured message function fails loudly."""

    def enqueue(self, job: ReplyJob) -> None:
        raise ConfigurationError("REPLY_QUEUE_URL is not set")
