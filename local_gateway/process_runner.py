"""Invocations in worker processes: Lambda's execution environments, locally.

`ThreadRunner` runs every reply of the stack on threads of its one process. Each reply
parses its model stream chunk by chunk, so at a few hundred replies at once the stack's
single GIL, shared with the event loop that serves every socket, became the bottleneck:
sends waited hundreds of milliseconds for an ack (docs/benchmarks.md). On AWS each reply
runs in an execution environment of its own. This runner starts `processes` workers
(spawned, not forked: the stack has threads), each running the same handler on a pool of
threads, with the same environment and store, pushing over a pipe of its own to the gateway's
loop (pipe_push.py), or through the Management API emulator with boto3 as on AWS. Events go through
JSON, as Lambda's do; the local queue (sqs_queue.py) decides what runs and when.

A worker can die: killed, or out of memory. Each has a pipe of its own, so the runner knows
which invocations it held, and no lock of a shared queue dies with it. A supervisor thread
collects results and watches each worker's sentinel: when one dies, a new worker takes its
slot, and each invocation it held ends as failed, as Lambda reports one whose runtime exited
(the queue delivers the job again after the visibility timeout), after `crashed` was told
(the stack tells the participant: ws_handlers.reply.invocation_died).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .pipe_push import PipePusher, PushRelay
from .thread_runner import Done

log = logging.getLogger("local_gateway")

#: What a worker sends once its function is loaded, before any result.
_READY = "ready"
#: How long the workers may take to load the function at start (imports, on a busy machine).
START_TIMEOUT = 60.0

#: Told, before their failures are reported, the events a worker held when it died (all at once:
#: twins of one job, delivered twice, are then reported one after the other, not side by side).
Crashed = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to run one function, all picklable."""

    logical_id: str
    handler: str  #: "package.module.function"
    memory_mb: int
    environment: dict[str, str]  #: the function's settings (store, model, secret, endpoint)
    sqlite_path: str | None  #: the stack's SQLite file; None: DYNAMODB_ENDPOINT_URL in environment
    threads: int  #: invocations one worker runs at once
    push: str = "direct"  #: "direct": over a push pipe to the stack (pipe_push); "management_api": boto3
    push_timeout: float = 10.0  #: how long a push to a socket far behind may wait for the gateway
    sqlite_identity: tuple[int, int] | None = None  #: the stack's SQLite file: a worker opens that one only


@dataclass(eq=False)
class _Worker:
    """One worker process, its end of its pipe, and the invocations it holds."""

    process: Any  #: multiprocessing's SpawnProcess
    pipe: Connection
    jobs: dict[int, tuple[dict[str, Any], Done]] = field(default_factory=dict)
    sending: threading.Lock = field(default_factory=threading.Lock)

    def send(self, item: tuple[int, str] | None) -> None:
        """Hand the worker a job (None: finish and exit); a dead worker's pipe refuses, and the
        supervisor fails what it held."""
        try:
            with self.sending:
                self.pipe.send(item)
        except (OSError, ValueError):
            pass


class ProcessRunner:
    """Runs a function's invocations in `processes` worker processes (the `ThreadRunner` interface)."""

    def __init__(self, spec: WorkerSpec, processes: int, crashed: Crashed | None = None,
                 relay: PushRelay | None = None) -> None:
        if spec.push == "direct" and relay is None:
            raise ValueError("push 'direct' from worker processes needs the stack's PushRelay")
        self._spec = spec
        self._relay = relay
        self._context = multiprocessing.get_context("spawn")
        self._crashed = crashed
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the slots and each worker's jobs
        self._stopping = False
        self.replaced = 0  #: workers that died and were replaced
        self._slots: list[_Worker | None] = [self._spawn(i) for i in range(processes)]
        self._await_ready()
        self._supervisor = threading.Thread(target=self._supervise, name="runner-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, slot: int) -> _Worker:
        ours, theirs = self._context.Pipe()
        push_ours, push_theirs = self._context.Pipe() if self._relay is not None else (None, None)
        process = self._context.Process(target=_worker, args=(self._spec, theirs, push_theirs),
                                        name=f"{self._spec.logical_id}-{slot}", daemon=True)
        process.start()
        theirs.close()  # the worker's end lives in the worker only: its death reads as EOF here
        if push_ours is not None:  # the relay answers the worker's pushes until the worker exits
            push_theirs.close()  # type: ignore[union-attr]
            self._relay.serve(push_ours)  # type: ignore[union-attr]
        return _Worker(process, ours)

    def _await_ready(self) -> None:
        """Wait until every worker has loaded the function, so the first replies do not wait for
        imports; a worker that dies or hangs meanwhile fails the start, and stops them all."""
        deadline = time.monotonic() + START_TIMEOUT  # they load side by side
        try:
            for worker in self._slots:
                assert worker is not None
                if not worker.pipe.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"the worker process {worker.process.name} did not start within {START_TIMEOUT:.0f} s")
                try:
                    worker.pipe.recv()  # _READY
                except EOFError:
                    worker.process.join(5)
                    raise RuntimeError(f"the worker process {worker.process.name} died at start "
                                       f"(exit code {worker.process.exitcode})") from None
        except BaseException:
            for worker in self._slots:
                assert worker is not None
                worker.process.terminate()  # our own children, by their handles
                worker.process.join(5)
            raise

    def submit(self, event: dict[str, Any], done: Done) -> None:
        """Hand `event` to the worker with the fewest invocations; `done` is called when it ends."""
        job_id = next(self._ids)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the runner is shut down")
            worker = min((w for w in self._slots if w is not None), key=lambda w: len(w.jobs))
            worker.jobs[job_id] = (event, done)
        worker.send((job_id, json.dumps(event)))

    def workers(self) -> dict[int, int]:
        """The live workers' process ids, each with the number of invocations it holds."""
        with self._lock:
            return {w.process.pid: len(w.jobs) for w in self._slots if w is not None}

    # -- the supervisor ------------------------------------------------------------------------
    def _supervise(self) -> None:
        while True:
            with self._lock:
                live = [w for w in self._slots if w is not None]
            if not live:
                return  # stopping, and every worker has exited
            ready = set(wait([w.pipe for w in live] + [w.process.sentinel for w in live]))
            for worker in live:
                if (worker.pipe in ready and not self._collect(worker)) or worker.process.sentinel in ready:
                    self._bury(worker)

    def _collect(self, worker: _Worker) -> bool:
        """Report the invocations the worker finished; False once its pipe is closed (it died)."""
        try:
            while worker.pipe.poll():
                item = worker.pipe.recv()
                if item == _READY:  # a new worker, in a dead one's slot
                    continue
                job_id, failure = item
                with self._lock:
                    _, done = worker.jobs.pop(job_id)
                done(failure)
        except (EOFError, OSError):
            return False
        return True

    def _bury(self, worker: _Worker) -> None:
        """A worker exited: put a new one in its slot (unless stopping) and fail what it held."""
        self._collect(worker)  # results it sent before dying count
        worker.process.join(5)
        code = worker.process.exitcode
        with self._lock:
            slot = self._slots.index(worker)
            self._slots[slot] = None if self._stopping else self._spawn(slot)
            lost = list(worker.jobs.values())
            worker.jobs.clear()
            stopping = self._stopping
        worker.pipe.close()
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        failure = f"Runtime.ExitError: the worker process {worker.process.name} (pid {worker.process.pid}) died ({how})"
        if not stopping:
            self.replaced += 1
            log.error("%s holding %d invocations; a new worker takes its place", failure, len(lost))
        if self._crashed is not None and lost and not stopping:
            try:
                self._crashed([event for event, _ in lost])
            except Exception:
                log.exception("could not report the invocations lost with %s", worker.process.name)
        for _, done in lost:
            done(failure)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers (each finishes what it runs) and the supervisor."""
        with self._lock:
            self._stopping = True
            live = [w for w in self._slots if w is not None]
        for worker in live:
            worker.send(None)
        self._supervisor.join(timeout)
        if self._supervisor.is_alive():
            for worker in live:
                if worker.process.is_alive():  # only our own children, by their handle
                    worker.process.terminate()
            self._supervisor.join(timeout)


def _worker(spec: WorkerSpec, pipe: Connection, push_pipe: Connection | None = None) -> None:
    """A worker process: the function's services built once (a warm container), then jobs."""
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
        from ws_handlers.adapters.sqlite import SqliteStore

        store = SqliteStore(spec.sqlite_path, same_as=spec.sqlite_identity)
    services = runtime.from_settings(Settings.from_env(spec.environment), store=store)
    if push_pipe is not None:
        pusher = PipePusher(push_pipe, spec.push_timeout)
        services.pusher_for = lambda _endpoint: pusher
    runtime.install(services)
    handler = Function(logical_id=spec.logical_id, handler=spec.handler, environment=spec.environment, timeout=0,
                       memory_mb=spec.memory_mb, reserved_concurrency=None, max_retry_attempts=None,
                       max_event_age=None).load()
    try:  # the reply function's model client (its CA store: ~60 ms of CPU), as a warm container has it,
        services.model()  # not built by the first replies while they wait for it
    except Exception:  # the first reply reports it, as on Lambda
        log.warning("%s: the model client could not be built at start", spec.logical_id, exc_info=True)
    sending = threading.Lock()
    pipe.send(_READY)

    def run(job_id: int, payload: str) -> None:
        failure = None
        try:
            handler(json.loads(payload), LambdaContext(spec.logical_id, spec.memory_mb))
        except Exception:
            failure = traceback.format_exc(limit=5)
        try:
            with sending:
                pipe.send((job_id, failure))
        except OSError:  # the stack is gone
            pass

    with ThreadPoolExecutor(max_workers=spec.threads, thread_name_prefix="reply") as pool:
        while True:
            try:
                item = pipe.recv()
            except (EOFError, OSError):
                return
            if item is None:
                break
            pool.submit(run, *item)
    if hasattr(services.store, "close"):
        services.store.close()
