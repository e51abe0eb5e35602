"""Asynchronous invocation of the reply function, on one machine.

On AWS the message function invokes the reply function with InvocationType Event; here
the very same `ws_handlers.reply.handler` runs on a thread pool, with the job passed
through JSON as Lambda would, so no shortcut skips the serialisation.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ws_handlers.chat import ReplyJob

from .lambda_context import LambdaContext

log = logging.getLogger("local_gateway")


class ThreadInvoker:
    def __init__(self, handler: Callable[[dict[str, Any], Any], Any], max_workers: int = 32) -> None:
        self._handler = handler
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reply")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self.failures: list[BaseException] = []  #: what an on-failure destination would receive

    def invoke(self, job: ReplyJob) -> None:
        payload = json.loads(json.dumps(job.to_dict()))
        future = self._pool.submit(self._handler, payload, LambdaContext("reply"))
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.exception() is not None:  # Lambda would send it to the on-failure destination
            self.failures.append(future.exception())  # type: ignore[arg-type]
            log.error("a reply invocation failed", exc_info=future.exception())

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no reply is running (tests); True when idle."""
        import concurrent.futures

        with self._lock:
            pending = list(self._pending)
        done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
