"""Pushes from worker processes, over a pipe of each worker's own to the gateway's loop.

Why: a function in a worker process (process_runner.py) cannot hand frames to the gateway's
loop as `DirectPusher` does for threads. It used to POST each one to the Management API
emulator: a request built, sent, parsed by aiohttp and answered, about a millisecond of CPU on
each side for every delta of every reply, which made a reply in a worker cost twice the CPU of
one on a thread (docs/benchmarks.md, "Phase 4"). Here a push is one small message on the
worker's push pipe; the gateway's loop reads it when the pipe is readable (no thread of its own)
and hands the frame to the stack's `DirectPusher`, whose answer goes back on the same pipe.

The semantics are `DirectPusher`'s, which are the Management API's: 410 Gone for a closed or
unknown socket, 413 over 128 KB, the answer at once when the frame is queued, and only a push to
a socket far behind waits for the gateway's answer (up to the stall timeout). `StackConfig.push =
"management_api"` keeps boto3 over HTTP in workers, as on AWS.

Most pushes are not answered at all. Waiting for each answer cost the pushing thread a sleep and
a wake-up, and the worker's answer thread another, for every delta: about a tenth of the stack's
CPU per reply at 200 participants (docs/benchmarks.md, "Phase 7"). A worker asks once per socket (the
first push waits for its answer, as before); once the stack has answered that the socket took a
frame, later pushes to it are sent without waiting, until the stack says to ask again: when the
socket closes (the gateway tells every worker, `PushRelay.gone`), or when a push sent without
waiting found it closed or far behind. The next push then waits for its answer again: 410, or the
wait for room. So a reply learns that its socket is gone from the first push after the stack
says so, and follows the participant to a new socket as on AWS (ws_handlers/turn.py); a frame
sent in between is lost, as one `DirectPusher` queued just before the socket closed, or a post
API Gateway answered 200 just before the socket dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from multiprocessing.connection import Connection
from typing import Any

from ws_handlers.protocol import encode
from ws_handlers.push import ConnectionGone, PushFailed

from .direct_push import DirectPusher, refuse_too_large

#: A push's answers on the pipe: done, the socket is gone, or a failure's description.
_DONE, _GONE = "done", "gone"
#: The request number of a push that wants no answer; on the way back, of the stack's word that a
#: socket's next push must wait for its answer (the message then names the socket).
_UNANSWERED = 0


class PipePusher:
    """The `Pusher` of a worker process: each push a request on the worker's push pipe, answered
    by the stack (`PushRelay`). Safe across the worker's threads."""

    def __init__(self, pipe: Connection, timeout: float) -> None:
        self._pipe, self._timeout = pipe, timeout
        self._ids = itertools.count(_UNANSWERED + 1)
        self._sending = threading.Lock()
        self._waiting: dict[int, tuple[str, concurrent.futures.Future[str]]] = {}
        #: sockets whose pushes need no answer: the stack took a frame for each, and has not said otherwise
        self._taking: set[str] = set()
        threading.Thread(target=self._answers, name="push-answers", daemon=True).start()

    def send(self, connection_id: str, frame: dict[str, Any]) -> None:
        data = encode(frame)
        refuse_too_large(data)  # here: a push sent without an answer could not hear the stack's 413
        if connection_id in self._taking:
            try:
                with self._sending:
                    self._pipe.send((_UNANSWERED, connection_id, data))
            except (OSError, ValueError) as exc:  # the stack is gone
                raise PushFailed(type(exc).__name__) from exc
            return
        request = next(self._ids)
        answer: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._waiting[request] = (connection_id, answer)
        try:
            with self._sending:
                self._pipe.send((request, connection_id, data))
            outcome = answer.result(self._timeout)
        except TimeoutError:  # (an OSError: first) a backstop, as DirectPusher's
            raise PushFailed("timed out (504)") from None
        except (OSError, ValueError) as exc:  # the stack is gone
            raise PushFailed(type(exc).__name__) from exc
        finally:
            self._waiting.pop(request, None)
        if outcome == _GONE:
            raise ConnectionGone(connection_id)
        if outcome != _DONE:
            raise PushFailed(outcome)

    def _answers(self) -> None:
        """The stack's answers, each to the push that waits for it (one that gave up: dropped), and
        its word on which sockets take pushes without an answer, in the order the stack sent them."""
        while True:
            try:
                request, outcome = self._pipe.recv()
            except (EOFError, OSError):
                self._taking.clear()
                outcome = "the stack is gone"
                for _, answer in list(self._waiting.values()):
                    if not answer.done():
                        answer.set_result(outcome)
                return
            if request == _UNANSWERED:  # `outcome` names a socket whose next push must wait
                self._taking.discard(outcome)
                continue
            connection_id, answer = self._waiting.get(request, ("", None))
            if outcome == _DONE:
                self._taking.add(connection_id)
            if answer is not None and not answer.done():
                answer.set_result(outcome)


class PushRelay:
    """The stack's end of the workers' push pipes, served on the gateway's loop."""

    def __init__(self, pusher: DirectPusher, loop: asyncio.AbstractEventLoop) -> None:
        self._pusher, self._loop = pusher, loop
        self._pipes: set[Connection] = set()  #: the workers' pipes being served (on the loop)

    def serve(self, pipe: Connection) -> None:
        """Answer the pushes arriving on `pipe` until the worker closes it. From any thread."""
        self._loop.call_soon_threadsafe(self._start, pipe)

    def gone(self, connection_id: str) -> None:
        """On the loop, when a socket closes: every worker's next push to it waits for its answer (410)."""
        for pipe in list(self._pipes):
            self._answer(pipe, _UNANSWERED, connection_id)

    def _start(self, pipe: Connection) -> None:
        self._pipes.add(pipe)
        self._loop.add_reader(pipe.fileno(), self._readable, pipe)

    def _readable(self, pipe: Connection) -> None:
        try:
            while pipe.poll():
                request, connection_id, data = pipe.recv()
                self._push(pipe, request, connection_id, data)
        except (EOFError, OSError):  # the worker exited (or died): its pipe is done
            self._pipes.discard(pipe)
            self._loop.remove_reader(pipe.fileno())
            pipe.close()

    def _push(self, pipe: Connection, request: int, connection_id: str, data: bytes) -> None:
        try:
            delivered = self._pusher.offer(connection_id, data)
        except ConnectionGone:
            return self._answer(pipe, request, connection_id if request == _UNANSWERED else _GONE)
        except PushFailed as exc:
            return self._answer(pipe, request, connection_id if request == _UNANSWERED else str(exc))
        if request == _UNANSWERED:  # queued; far behind, the next push waits for room (or 410)
            if delivered is not None:
                self._answer(pipe, _UNANSWERED, connection_id)
            return None
        if delivered is None:
            return self._answer(pipe, request, _DONE)

        def answered(done: concurrent.futures.Future[bool]) -> None:  # on this loop, by the gateway
            failed = done.cancelled() or done.exception() is not None
            self._answer(pipe, request, "push failed" if failed else _DONE if done.result() else _GONE)

        delivered.add_done_callback(answered)  # a socket far behind: answered once the frame is written

    @staticmethod
    def _answer(pipe: Connection, request: int, outcome: str) -> None:
        try:
            pipe.send((request, outcome))
        except (OSError, ValueError):  # the worker is gone; its pushes with it
            pass
