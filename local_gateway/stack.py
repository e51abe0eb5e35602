"""The whole service on one machine: gateway, Management API, functions, store, model.

Functions, routes and each function's environment come from template.yaml; only the
edges are local: the store (SQLite by default, or moto's DynamoDB server), the
Management API emulator, the reply queue (sqs_queue.py: the queue and its event source
mapping, capped at the mapping's MaximumConcurrency), secrets (a dev secret file instead
of Secrets Manager) and, without an OpenAI key, the offline model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ws_handlers import runtime
from ws_handlers.adapters.apigateway import ManagementApiPusher
from ws_handlers.adapters.sqlite import SqliteStore, StoreFileLost
from ws_handlers.config import Settings
from ws_handlers.jobs import JobQueue
from ws_handlers.ops.targets import LOCAL_PARAMETERS
from ws_handlers.push import Pusher
from ws_handlers.reply import invocation_died
from ws_handlers.store import Store

from . import model_process, throttle
from .direct_push import DirectPusher
from .gateway import Gateway, GatewayLimits
from .http_api import BUCKETS, http_api_app
from .lambda_context import LambdaContext
from .management_api import management_app
from .offline_model import OfflineModel
from .pipe_push import PushRelay
from .process_runner import ProcessRunner, WorkerSpec
from .sqs_queue import LocalQueue
from .template import Function, QueueSource, Template, load
from .thread_runner import ThreadRunner

if TYPE_CHECKING:  # moto is imported only when the store is DynamoDB
    from .strict_dynamodb import StrictDynamoDB

log = logging.getLogger("local_gateway")

ROOT = Path(__file__).resolve().parent.parent
#: Origins of the local pages that embed the chat (oTree's devserver, the demo page).
DEFAULT_ORIGINS = "http://localhost:8000,http://127.0.0.1:8000,http://localhost:8790,http://127.0.0.1:8790"
#: Variables that point at AWS-only resources; locally their plain counterparts are used.
#: Variables that name AWS resources; the stack sets its own (WEBSOCKET_URL: the gateway's, once it listens)
_AWS_ONLY = ("TICKET_SECRET_ARN", "OPENAI_API_KEY_SECRET_ARN", "WEBSOCKET_URL")
#: Threads of each function the gateway invokes ($connect, $disconnect, the message routes).
#: Each function has threads of its own, as each Lambda function has its own execution
#: environments: message invocations held by pushes to a full socket never delay a $connect.
FUNCTION_THREADS = 64
#: How often the stack looks whether its SQLite file is still there, between writes (seconds).
STORE_CHECK_SECONDS = 1.0


def private_dir(path: Path) -> Path:
    """The data directory, created 0700: it holds the ticket secret and the transcripts. One that
    exists keeps its mode (it may be a directory the user chose); the files in it are 0600."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def dev_secret(data_dir: Path) -> str:
    """The local ticket secret: generated at first run into an ignored file, then reused."""
    path = data_dir / "ticket-secret"
    if not path.exists():
        private_dir(data_dir)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


#: Most worker processes `make dev` starts: each is a warm environment with the reply function's
#: imports of its own; more than this many cores was never measured.
MAX_DEFAULT_PROCESSES = 4


def default_function_processes(cores: int | None = None) -> int:
    """Worker processes for the reply function when nobody says: what `make dev` runs
    (`python -m local_gateway serve`) and the classroom benchmark measures. One per core (up to
    MAX_DEFAULT_PROCESSES) beside the gateway's process: on two cores, two workers gave the lowest
    latencies at 10, 50 and 200 participants at once (docs/benchmarks.md, "Phase 5"). On one core,
    0: threads of the stack's process (a worker there only adds the crossing between processes)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 0 if cores < 2 else min(cores, MAX_DEFAULT_PROCESSES)


@dataclass
class StackConfig:
    host: str = "127.0.0.1"
    port: int = 8787  #: WebSocket port; 0 picks a free one
    management_port: int = 8788
    model_port: int = 8789
    demo_port: int | None = 8790  #: serves client_js/ (the demo page); None: not served
    entry_port: int = 8791  #: the template's HTTP API (the study entry, POST /studies/{study}/entry)
    data_dir: Path = ROOT / ".local"
    store: str = "sqlite"  #: "sqlite" or "dynamodb" (moto's server, in memory)
    #: How functions push frames: "direct" (straight to the gateway, see direct_push) or
    #: "management_api" (boto3 over HTTP to the emulator, exactly as on AWS)
    push: str = "direct"
    stage: str = "local"
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    secret: str | None = None  #: None: the dev secret file in data_dir
    openai_api_key: str | None = None  #: None: the offline model (unless openai_base_url is set)
    openai_base_url: str | None = None
    model_ttft: float | None = None  #: offline model pacing; None: its environment defaults
    model_tokens_per_second: float | None = None
    model_process: bool = False  #: run the offline model in a process of its own (load tests)
    #: with store "dynamodb": moto's server and the strict emulation in a process of their own
    #: (load tests); False: in this process, under the emulation a test session may have installed
    moto_process: bool = False
    #: Worker processes for queue-driven functions (the reply function), as Lambda runs each
    #: in execution environments of its own; 0: threads of the stack's process
    function_processes: int = 0
    #: Share of queued jobs delivered twice, as SQS does now and then (at-least-once); the
    #: tests set 1.0 so every reply job arrives twice
    duplicate_deliveries: float = 0.0
    #: Seconds up to which a duplicate comes after its twin (0: right after it, possibly at once)
    duplicate_lag: float = 0.0
    #: Seconds before a failed job is delivered again; None: the queue's VisibilityTimeout
    queue_visibility_timeout: float | None = None
    parameters: dict[str, str] = field(default_factory=dict)  #: template parameter overrides
    environment: dict[str, str] = field(default_factory=dict)  #: function environment overrides
    template_path: Path = ROOT / "template.yaml"


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.secret = config.secret or dev_secret(config.data_dir)
        self.template: Template | None = None
        self.gateway: Gateway | None = None
        self.store: Store | None = None
        self.model: OfflineModel | None = None
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self._pools: dict[str, ThreadPoolExecutor] = {}  #: by function (logical id)
        self._pools_lock = threading.Lock()
        self.queues: dict[str, LocalQueue] = {}  #: by the queue's logical id
        self._services: dict[str, runtime.Services] = {}
        self._moto: Any = None
        self._strict: StrictDynamoDB | None = None  #: the DynamoDB emulation, when this stack installed it
        self._model_process: subprocess.Popen[str] | None = None
        self._moto_process: subprocess.Popen[str] | None = None
        self._moto_endpoint: str | None = None
        self._sqlite_path: str | None = None
        #: Why the stack must stop (its store's file lost), once it must; `failed` is set then
        self.failure: str | None = None
        self.failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._direct: DirectPusher | None = None  #: with push "direct": what threads and workers push through
        self._watch: asyncio.Task[None] | None = None
        self._entry_app: web.Application | None = None

    # -- pieces -----------------------------------------------------------------------------
    async def _serve_app(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, port)
        await site.start()
        self._runners.append(runner)
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{self.config.host}:{bound}"

    def _open_store(self, template: Template) -> tuple[Store, dict[str, str]]:
        """The store and the environment that points functions at it."""
        if self.config.store == "sqlite":
            self._sqlite_path = str(private_dir(self.config.data_dir) / "chat.sqlite3")
            store = SqliteStore(self._sqlite_path, on_lost=self._store_lost)
            if freed := store.release_all_leases():
                log.info("freed %d chats whose replies were queued or running when the stack last stopped", freed)
            return store, {}
        if self.config.store == "dynamodb":
            import boto3
            from moto.server import ThreadedMotoServer

            from ws_handlers.adapters.dynamodb import DynamoStore

            from . import moto_process, strict_dynamodb
            from .template import create_tables

            if self.config.moto_process:
                self._moto_process, endpoint = moto_process.start(self.config.host)
            else:
                # moto's server answers in this process, so the emulation wraps its handler here; a
                # test session installs its own first, and that one stays in charge
                if strict_dynamodb.installed() is None:
                    self._strict = strict_dynamodb.install(strict_dynamodb.Strictness.from_env())
                # werkzeug would log every request moto serves (thousands a minute under load) on stderr
                logging.getLogger("werkzeug").setLevel(logging.WARNING)
                self._moto = ThreadedMotoServer(ip_address=self.config.host, port=0, verbose=False)
                self._moto.start()
                host, port = self._moto.get_host_and_port()
                endpoint = f"http://{host}:{port}"
            self._moto_endpoint = endpoint
            client = boto3.client(
                "dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id="local", aws_secret_access_key="local",
            )
            create_tables(client, template)
            named = Settings.from_env(next(iter(template.functions.values())).environment)
            store = DynamoStore(named.connections_table, named.chats_table, client=client)
            return store, {"DYNAMODB_ENDPOINT_URL": endpoint}
        raise ValueError(f"unknown store {self.config.store!r}: use sqlite or dynamodb")

    def _write_parameters(self, parameters: dict[str, str]) -> None:
        """The template parameters this stack runs with, in its data directory: `chat-ops study create`
        checks a study's origins against AllowedOrigins there, as it reads a deployed stack's."""
        path = private_dir(self.config.data_dir) / LOCAL_PARAMETERS
        path.touch(mode=0o600)
        path.write_text(json.dumps(parameters, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def _store_lost(self, reason: str) -> None:
        """The store's file is gone (any thread, once): say so loudly and have the stack stop."""
        log.critical("%s: stopping the stack rather than serve from an empty store", reason)
        self.failure = reason
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.failed.set)

    async def _watch_store(self, every: float = STORE_CHECK_SECONDS) -> None:
        """Notice a lost store file even while nobody writes (each write checks it anyway)."""
        while self.failure is None:
            await asyncio.sleep(every)
            with contextlib.suppress(StoreFileLost):
                self.store.check()  # type: ignore[union-attr]

    @property
    def _push_timeout(self) -> float:
        """How long a push from a function (thread or worker) may wait for the gateway: it answers
        within its stall timeout; the rest is slack for a busy loop."""
        return self.config.limits.stall_timeout + 5.0

    def _pusher_factory(self) -> Callable[[str], Pusher]:
        if self.config.push == "direct":
            pusher = self._direct = DirectPusher(
                self.gateway, asyncio.get_running_loop(), self._push_timeout)  # type: ignore[arg-type]
            return lambda _endpoint: pusher
        if self.config.push == "management_api":
            return lambda endpoint: ManagementApiPusher(
                endpoint, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local"
            )
        raise ValueError(f"unknown push {self.config.push!r}: use direct or management_api")

    def _queue(self, function: Function, source: QueueSource, environment: dict[str, str]) -> LocalQueue:
        """The queue `function` drains, run on threads here or in worker processes."""
        if source.batch_size != 1:
            raise ValueError(f"{function.logical_id}: the local queue delivers batches of one; BatchSize is {source.batch_size}")
        concurrency = source.maximum_concurrency or 64
        processes = self.config.function_processes
        runner: ThreadRunner | ProcessRunner
        if processes <= 0:
            runner = ThreadRunner(lambda event, _context: self._run(function, event), threads=concurrency)
        else:
            spec = WorkerSpec(
                logical_id=function.logical_id, handler=function.handler, memory_mb=function.memory_mb,
                environment=environment, sqlite_path=self._sqlite_path, threads=-(-concurrency // processes),
                push=self.config.push, push_timeout=self._push_timeout,
                sqlite_identity=getattr(self.store, "identity", None),
            )
            relay = PushRelay(self._direct, self._loop) if self._direct is not None and self._loop else None
            if relay is not None and self.gateway is not None:
                self.gateway.on_forget.append(relay.gone)
            runner = ProcessRunner(spec, processes, crashed=functools.partial(self._report_crash, function), relay=relay)
        visibility = self.config.queue_visibility_timeout
        return LocalQueue(
            runner, concurrency=concurrency, retention=source.retention, max_receive_count=source.max_receive_count,
            visibility_timeout=source.visibility_timeout if visibility is None else visibility,
            duplicates=self.config.duplicate_deliveries, duplicate_lag=self.config.duplicate_lag,
            arn=f"arn:aws:sqs:us-east-1:000000000000:{source.queue}",
        )

    def _report_crash(self, function: Function, events: list[dict[str, Any]]) -> None:
        """A worker process died running `events`: the function's services (here, in the stack's
        process) tell the participants, on a thread of their own so the runner's supervisor goes on."""
        def report() -> None:
            with runtime.using(self._services[function.logical_id]):
                for event in events:
                    invocation_died(event)

        self._pool_for(function.logical_id).submit(report)

    def _environment(self, function: Function, overrides: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in function.environment.items() if k not in _AWS_ONLY}
        return env | overrides | self.config.environment

    def _run(self, function: Function, event: dict[str, Any]) -> Any:
        """One invocation, as Lambda would run it: the handler with this function's services."""
        with runtime.using(self._services[function.logical_id]):
            return function.load()(event, LambdaContext(function.logical_id, function.memory_mb))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> dict[str, str]:
        """Start every piece; if one fails, stop those already started (no stray process or port)."""
        try:
            return await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop(grace=0)
            raise

    async def _start(self) -> dict[str, str]:
        config = self.config
        parameters = {"Stage": config.stage, "AllowedOrigins": DEFAULT_ORIGINS} | config.parameters
        template = self.template = load(config.template_path, parameters=parameters)
        self._write_parameters(parameters)
        self._loop = asyncio.get_running_loop()
        self.store, store_env = self._open_store(template)
        if isinstance(self.store, SqliteStore):
            self._watch = asyncio.create_task(self._watch_store())

        if config.openai_api_key is None and config.openai_base_url is None:
            if config.model_process:
                self._model_process, self.urls["model"] = await model_process.start(
                    config.host, config.model_port, config.model_ttft, config.model_tokens_per_second)
            else:
                self.model = OfflineModel(ttft=config.model_ttft, tokens_per_second=config.model_tokens_per_second)
                self.urls["model"] = await self._serve_app(self.model.app(), config.model_port) + "/v1"
            llm_env = {"OPENAI_BASE_URL": self.urls["model"], "OPENAI_API_KEY": "offline"}
        else:
            llm_env = {"OPENAI_API_KEY": config.openai_api_key or "none"}
            if config.openai_base_url:
                llm_env["OPENAI_BASE_URL"] = config.openai_base_url
            self.urls["model"] = config.openai_base_url or "https://api.openai.com/v1"

        self.gateway = Gateway(template.api, self._invoke, limits=config.limits)
        management = await self._serve_app(management_app(self.gateway, template.api.stage), config.management_port)
        self.urls["management"] = f"{management}/{template.api.stage}"
        pusher_for = functools.lru_cache(maxsize=4)(self._pusher_factory())
        overrides = store_env | llm_env | {"TICKET_SECRET": self.secret, "WEBSOCKET_ENDPOINT": self.urls["management"]}
        environments = {f.logical_id: self._environment(f, overrides) for f in template.functions.values()}
        settings_of = {logical_id: Settings.from_env(env) for logical_id, env in environments.items()}
        for function in template.functions.values():
            for source in function.queue_sources:
                self.queues[source.queue] = self._queue(function, source, environments[function.logical_id])
        for function in template.functions.values():
            settings = settings_of[function.logical_id]
            queue: JobQueue | None = self.queues.get(settings.reply_queue_url or "")
            self._services[function.logical_id] = runtime.Services(
                settings=settings,
                store=self.store,
                jobs=queue if queue is not None else runtime.NoJobQueue(),
                pusher_for=pusher_for,
                ticket_secret=lambda: self.secret,
            )
        if config.demo_port is not None:
            static = web.Application()
            static.router.add_static("/", ROOT / "client_js", show_index=False)
            self.urls["demo"] = await self._serve_app(static, config.demo_port) + "/demo.html"
        port = await self.gateway.start(config.host, config.port)
        self.urls["websocket"] = f"ws://{config.host}:{port}/{template.api.stage}"
        if template.http_routes:  # after the gateway: the entry hands out its URL, known from now on
            for logical_id in {route.function for route in template.http_routes}:
                services = self._services[logical_id]
                if not services.settings.websocket_url:
                    services.settings = dataclasses.replace(services.settings, websocket_url=self.urls["websocket"])
            reserved = {f.logical_id: f.reserved_concurrency for f in template.functions.values()}
            self._entry_app = http_api_app(template.http_routes, self._invoke, reserved=reserved)
            self.urls["entry"] = await self._serve_app(self._entry_app, config.entry_port)
        return self.urls

    def stats(self) -> dict[str, Any]:
        """What the emulations counted so far, for load tests and their reports: each reply queue's
        deliveries and waits (send to first delivery, s), the gateway's outgoing buffers (peak, sockets
        closed as not reading), the HTTP API's requests answered 429 per route, the WebSocket API's throttled per route, and with the DynamoDB
        store the strict emulation's settings and counters (conflicts, throttles), so a run can show
        they happened."""
        out: dict[str, Any] = {"queues": {name: q.snapshot() for name, q in self.queues.items()}}
        if self.gateway is not None:
            out["gateway"] = self.gateway.stats()
            out["websocket_api"] = throttle.describe(self.gateway.buckets)  # frames/handshakes throttled per route
        if self._entry_app is not None:  # the HTTP API's route buckets: requests answered 429 so far
            out["http_api"] = throttle.describe(self._entry_app[BUCKETS])
        if self._moto_process is not None and self._moto_endpoint is not None:
            from . import moto_process

            out["strict_dynamodb"] = moto_process.stats(self._moto_endpoint)
        elif self.config.store == "dynamodb":
            from . import strict_dynamodb

            emulation = strict_dynamodb.installed()  # this stack's, or the test session's
            if emulation is not None:
                out["strict_dynamodb"] = emulation.describe()
        return out

    async def _invoke(self, logical_id: str, event: dict[str, Any]) -> Any:
        assert self.template is not None
        function = self.template.functions[logical_id]
        return await asyncio.get_running_loop().run_in_executor(self._pool_for(logical_id), self._run, function, event)

    def _pool_for(self, logical_id: str) -> ThreadPoolExecutor:
        """The function's own threads (made at its first use, from the loop or a runner's supervisor)."""
        with self._pools_lock:
            if (pool := self._pools.get(logical_id)) is None:
                pool = self._pools[logical_id] = ThreadPoolExecutor(FUNCTION_THREADS, thread_name_prefix=logical_id)
            return pool

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking sockets, let replies in flight finish (up to `grace` s), close the store."""
        if self.gateway is not None:
            await self.gateway.stop(grace)
        loop = asyncio.get_running_loop()
        for queue in self.queues.values():
            await loop.run_in_executor(None, queue.wait_idle, grace)
            # off the loop: invocations still running (past the grace) push through it as they finish
            await loop.run_in_executor(None, queue.shutdown)
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        for runner in self._runners:
            await runner.cleanup()
        if self._model_process is not None:
            await loop.run_in_executor(None, model_process.stop, self._model_process)
        if self._watch is not None:
            self._watch.cancel()
        if self.failure is not None and isinstance(self.store, SqliteStore):
            saved = await loop.run_in_executor(None, self.store.save_copy)
            log.critical("what the stack still held of its store is saved in %s", saved)
        if self.store is not None and hasattr(self.store, "close"):
            self.store.close()
        if self._moto_process is not None:  # in memory by design: what the stack held goes with it
            from . import moto_process

            await loop.run_in_executor(None, moto_process.stop, self._moto_process)
        if self._moto is not None:  # in memory by design: what the stack held goes with it
            import urllib.request

            host, port = self._moto.get_host_and_port()
            urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
            self._moto.stop()
        if self._strict is not None:
            self._strict.uninstall()


@contextlib.contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    """Run a stack on its own event loop in a background thread (tests, tools)."""
    loop = asyncio.new_event_loop()
    stack = Stack(config)
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(stack.start())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="local-stack", daemon=True)
    thread.start()
    if not ready.wait(90):  # reply workers load their function first (process_runner.START_TIMEOUT)
        raise RuntimeError("the local stack did not start within 90 s")
    if failure:
        raise failure[0]
    try:
        yield stack
    finally:
        asyncio.run_coroutine_threadsafe(stack.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
