"""Runs a function's invocations on threads of the stack's process.

The local queue (sqs_queue.py) decides what runs and when; a runner only runs it: the very
handler Lambda runs, with the event passed through JSON as Lambda would, so no shortcut
skips the serialisation. `process_runner.ProcessRunner` is the same in worker processes.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .lambda_context import LambdaContext

#: Told when an invocation ends: None when the handler returned, else what it raised.
Done = Callable[[str | None], None]


class ThreadRunner:
    def __init__(self, handler: Callable[[dict[str, Any], Any], Any], threads: int, name: str = "reply") -> None:
        self._handler = handler
        self._name = name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def submit(self, event: dict[str, Any], done: Done) -> None:
        """Invoke the handler with `event` on a free thread; `done` is called when it ends."""
        payload = json.loads(json.dumps(event))
        self._pool.submit(self._run, payload, done)

    def _run(self, payload: dict[str, Any], done: Done) -> None:
        failure = None
        try:
            self._handler(payload, LambdaContext(self._name))
        except Exception:
            failure = traceback.format_exc(limit=5)
        done(failure)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
