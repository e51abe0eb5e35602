"""Invocations in worker processes: Lambda's execution environments, locally.

`ThreadRunner` runs every reply of the stack on threads of its one process. Each reply
parses its model stream chunk by chunk, so at a few hundred replies at once the stack's
single GIL, shared with the event loop that serves every socket, became the bottleneck:
sends waited hundreds of milliseconds for an ack (docs/benchmarks.md). On AWS each reply
runs in an execution environment of its own. This runner starts `processes` workers
(spawned, not forked: the stack has threads), each running the same handler on a pool of
threads, with the same environment and store, pushing through the Management API
emulator over HTTP (boto3 as on AWS, or a plain POST: see http_push). Events go through
JSON, as Lambda's do, over a multiprocessing queue; the local queue (sqs_queue.py) decides
what runs and when.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import multiprocessing
import os
import queue
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .thread_runner import Done

log = logging.getLogger("local_gateway")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to run one function, all picklable."""

    logical_id: str
    handler: str  #: "package.module.function"
    memory_mb: int
    environment: dict[str, str]  #: the function's settings (store, model, secret, endpoint)
    sqlite_path: str | None  #: the stack's SQLite file; None: DYNAMODB_ENDPOINT_URL in environment
    threads: int  #: invocations one worker runs at once
    push: str = "direct"  #: "direct": a plain POST to the emulator (http_push); "management_api": boto3


class ProcessRunner:
    """Runs a function's invocations in `processes` worker processes (the `ThreadRunner` interface)."""

    def __init__(self, spec: WorkerSpec, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._jobs: Any = context.Queue()
        self._done: Any = context.Queue()
        self._ids = itertools.count(1)
        self._callbacks: dict[int, Done] = {}
        self._lock = threading.Lock()
        self._workers = [
            context.Process(target=_worker, args=(spec, self._jobs, self._done), name=f"{spec.logical_id}-{i}",
                            daemon=True)
            for i in range(processes)
        ]
        for worker in self._workers:
            worker.start()
        self._collector = threading.Thread(target=self._collect, name="runner-collector", daemon=True)
        self._collector.start()

    def submit(self, event: dict[str, Any], done: Done) -> None:
        """Hand `event` to whichever worker is free; `done` is called when the invocation ends."""
        job_id = next(self._ids)
        with self._lock:
            self._callbacks[job_id] = done
        self._jobs.put((job_id, json.dumps(event)))

    def _collect(self) -> None:
        while True:
            item = self._done.get()
            if item is None:
                return
            job_id, failure = item
            with self._lock:
                done = self._callbacks.pop(job_id)
            done(failure)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers (each finishes what it runs) and the collector."""
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(timeout)
            if worker.is_alive():  # only our own children, by their handle
                worker.terminate()
                worker.join(timeout)
        self._done.put(None)
        self._collector.join(timeout)
        for channel in (self._jobs, self._done):
            channel.close()
            channel.join_thread()


def _worker(spec: WorkerSpec, jobs: Any, done: Any) -> None:
    """A worker process: the function's services built once (a warm container), then jobs."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the stack's to handle; it stops us
    for name, value in (("AWS_ACCESS_KEY_ID", "local"), ("AWS_SECRET_ACCESS_KEY", "local"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)

    from ws_handlers import runtime
    from ws_handlers.config import Settings

    from .lambda_context import LambdaContext
    from .template import Function

    store = None
    if spec.sqlite_path is not None:
        from .sqlite_store import SqliteStore

        store = SqliteStore(spec.sqlite_path)
    services = runtime.from_settings(Settings.from_env(spec.environment), store=store)
    if spec.push == "direct":
        from .http_push import HttpPusher

        services.pusher_for = functools.lru_cache(maxsize=4)(lambda endpoint: HttpPusher(endpoint, pool_size=spec.threads))
    runtime.install(services)
    handler = Function(logical_id=spec.logical_id, handler=spec.handler, environment=spec.environment, timeout=0,
                       memory_mb=spec.memory_mb, reserved_concurrency=None, max_retry_attempts=None,
                       max_event_age=None).load()

    def run(job_id: int, payload: str) -> None:
        failure = None
        try:
            handler(json.loads(payload), LambdaContext(spec.logical_id, spec.memory_mb))
        except Exception:
            failure = traceback.format_exc(limit=5)
        done.put((job_id, failure))

    with ThreadPoolExecutor(max_workers=spec.threads, thread_name_prefix="reply") as pool:
        while True:
            try:
                item = jobs.get()
            except (EOFError, OSError, queue.Empty):
                return
            if item is None:
                break
            pool.submit(run, *item)
    if hasattr(services.store, "close"):
        services.store.close()
