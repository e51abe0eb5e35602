"""python -m load_tests.dead_turn: from a dead turn to a working retry, in seconds.

A reply function that dies mid-reply (Lambda's timeout or memory limit, a lost host; a killed
process locally) leaves its chat's lease behind: until the lease lapses, `start` says
`replying`, a retry of the message is only acknowledged and a new message is refused with
`reply_in_progress`. This measures how long that lasts, with real processes and sockets:

- `crash` (AWS): two local stacks share one SQLite store, as Lambda instances share one
  table. The *writer* streams a reply and is killed (SIGKILL) at its first delta, right
  after its claim set the lease: the worst case, a lease just renewed. The participant comes
  back on the *survivor* at once, retries and sends a new message while the lease holds,
  asks `start` until the chat is free, then resends the message (same `client_msg_id`) and
  sends a new one.
- `restart` (locally): the writer is killed and a stack starts again on its store, freeing
  every lease at start; the participant comes back as soon as it serves, and retries.

    python -m load_tests.dead_turn                  # the service's REPLY_LEASE_SECONDS
    python -m load_tests.dead_turn --lease 5 --json

Times are seconds from the kill. The participant asks `start` every 0.2 s (the survivor's
per-socket rate limit is raised for that), so a free chat is seen at most 0.2 s late.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from local_gateway.demo_bots import BOTS
from ws_handlers.config import Settings
from ws_handlers.tickets import Identity, mint_ticket, mint_token

from .local import LocalConfig, LocalStack, local_stack

IDENTITY = Identity("dead-turn", "bench", "bench")
POLL_SECONDS = 0.2
#: How long any one answer may take on a busy machine; the lease's length comes on top.
SLACK_SECONDS = 60.0
QUESTION, FOLLOW_UP = "Why is the sky blue?", "Thanks. And at sunset?"
Frame = dict[str, Any]


@dataclass
class Observed:
    """What the participant saw after the kill; times in seconds from it."""

    scenario: str
    lease_seconds: int
    user_seq: int  #: the message whose reply died
    replying_at_start: int | None = None  #: `start`'s `replying` on coming back
    resend_while_blocked: list[str] = field(default_factory=list)  #: frame types an early retry got
    new_message_while_blocked: str | None = None  #: what a new message got then (error code or frame type)
    free_s: float | None = None  #: `start` first said `replying: null`
    retry_first_delta_s: float | None = None
    retry_reply_s: float | None = None  #: the retry's reply complete: the dead turn's reply, written again
    retry_frames: list[Frame] = field(default_factory=list)
    new_message_frames: list[Frame] = field(default_factory=list)
    transcript: list[tuple[int, str, str | None]] = field(default_factory=list)  #: (seq, role, client_msg_id)


class Participant:
    """One socket to a stack, with this benchmark's credentials; every frame kept with its arrival time."""

    def __init__(self, ws: ClientConnection, ticket: str) -> None:
        self.ws, self.ticket = ws, ticket
        self.chat_id = ""
        self.arrivals: list[tuple[float, Frame]] = []

    @classmethod
    @contextmanager
    def on(cls, stack: LocalStack, identity: Identity = IDENTITY) -> Iterator[Participant]:
        token = mint_token(stack.secret, identity)
        ticket = mint_ticket(stack.secret, identity, "main", BOTS["tutor"])
        with connect(f"{stack.urls['websocket']}?token={quote(token)}", open_timeout=SLACK_SECONDS) as ws:
            yield cls(ws, ticket)

    def ask(self, frame: Frame) -> None:
        self.ws.send(json.dumps(frame))

    def until(self, done: Callable[[Frame], bool], deadline: float) -> list[Frame]:
        """Frames up to and including the first that is `done`; TimeoutError at `deadline`."""
        got = []
        while True:
            frame = json.loads(self.ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            self.arrivals.append((time.monotonic(), frame))
            got.append(frame)
            if done(frame):
                return got

    def start(self, deadline: float) -> Frame:
        self.ask({"action": "start", "ticket": self.ticket})
        chat = self.until(lambda f: f["type"] in ("chat", "error"), deadline)[-1]
        if chat["type"] != "chat":
            raise RuntimeError(f"start refused: {chat}")
        self.chat_id = chat["chat_id"]
        return chat

    def send(self, client_msg_id: str, text: str) -> None:
        self.ask({"action": "send", "chat_id": self.chat_id, "client_msg_id": client_msg_id, "text": text})

    def answer_to(self, client_msg_id: str, deadline: float) -> Frame:
        """The ack (or refusal) of a send."""
        return self.until(lambda f: f.get("client_msg_id") == client_msg_id and f["type"] in ("ack", "error"),
                          deadline)[-1]


def _reply_ends(seq: int) -> Callable[[Frame], bool]:
    return lambda f: f.get("seq") == seq and f["type"] in ("message", "error")


def warm_up(stack: LocalStack) -> None:
    """One reply by another participant first: a process's first reply imports `openai` (a cold
    start), which would otherwise count as the retry's time."""
    deadline = time.monotonic() + SLACK_SECONDS
    with Participant.on(stack, Identity("warm-up", "bench", "bench")) as p:
        p.start(deadline)
        p.send("w1", QUESTION)
        ack = p.answer_to("w1", deadline)
        p.until(_reply_ends(ack["seq"] + 1), deadline)


def kill_mid_reply(writer: LocalStack, p: Participant) -> tuple[int, float]:
    """Start a reply on `writer` and kill its process at the first delta: (the user message's seq, when)."""
    deadline = time.monotonic() + SLACK_SECONDS
    p.start(deadline)
    p.send("m1", QUESTION)
    ack = p.answer_to("m1", deadline)
    if ack["type"] != "ack":
        raise RuntimeError(f"the message was refused: {ack}")
    p.until(lambda f: f["type"] == "delta", deadline)
    os.kill(writer.pid, signal.SIGKILL)  # the writer's process, which local_stack started for us
    killed = time.monotonic()
    try:
        p.until(lambda f: False, deadline)
    except ConnectionClosed:  # the kernel closed its sockets: it is gone, and its turn with it
        pass
    return ack["seq"], killed


def while_blocked(p: Participant, observed: Observed, deadline: float) -> None:
    """An early retry and a new message, while the dead turn's lease still holds."""
    p.send("m1", QUESTION)
    observed.resend_while_blocked = [f["type"] for f in p.until(lambda f: f["type"] == "ack", deadline)]
    p.send("m2", FOLLOW_UP)
    answer = p.answer_to("m2", deadline)
    observed.new_message_while_blocked = answer.get("code", answer["type"])


def recover(p: Participant, observed: Observed, killed: float, deadline: float) -> None:
    """Ask `start` until the chat is free; then the retry, a new message and the transcript."""
    while (chat := p.start(deadline))["replying"] is not None:
        if time.monotonic() + POLL_SECONDS >= deadline:
            raise TimeoutError(f"the chat still said replying {deadline - killed:.0f} s after the kill")
        time.sleep(POLL_SECONDS)  # a poll interval, not a wait for something to happen
    observed.free_s = time.monotonic() - killed
    reply_seq = observed.user_seq + 1
    sent = len(p.arrivals)
    p.send("m1", QUESTION)
    observed.retry_frames = p.until(_reply_ends(reply_seq), deadline)
    observed.retry_reply_s = time.monotonic() - killed
    deltas = [t for t, f in p.arrivals[sent:] if f["type"] == "delta" and f.get("seq") == reply_seq]
    observed.retry_first_delta_s = deltas[0] - killed if deltas else None
    p.send("m2", FOLLOW_UP)
    ack = p.answer_to("m2", deadline)
    observed.new_message_frames = [ack] + (p.until(_reply_ends(ack["seq"] + 1), deadline) if ack["type"] == "ack" else [])
    p.ask({"action": "history", "chat_id": chat["chat_id"], "after_seq": 0})
    history = p.until(lambda f: f["type"] == "history", deadline)[-1]
    observed.transcript = [(m["seq"], m["role"], m.get("client_msg_id")) for m in history["messages"]]


def configs(lease: int | None, survivor_model: tuple[float, float], data_dir: str) -> tuple[LocalConfig, LocalConfig]:
    """(survivor, writer): threads and an in-process model each (killing the writer kills all of its
    turn), one store; the writer's model slow enough that the kill always lands mid-reply."""
    environment = {"RATE_LIMIT_FRAMES": "1000"} | ({"REPLY_LEASE_SECONDS": str(lease)} if lease else {})
    ttft, rate = survivor_model
    survivor = LocalConfig(ttft=ttft, tokens_per_second=rate, model_process=False, function_processes=0,
                           environment=environment, data_dir=data_dir)
    return survivor, replace(survivor, ttft=0.05, tokens_per_second=2.0)


def measure(scenario: str, lease: int | None = None, survivor_model: tuple[float, float] = (0.3, 40.0)) -> Observed:
    """One dead turn and the participant's way back, in `scenario` "crash" or "restart"."""
    lease_seconds = lease or Settings.from_env({}).reply_lease_seconds
    with tempfile.TemporaryDirectory(prefix="dead-turn-") as data_dir, ExitStack() as stacks:
        survivor_config, writer_config = configs(lease, survivor_model, data_dir)
        survivor = None
        if scenario == "crash":
            survivor = stacks.enter_context(local_stack(survivor_config))
            warm_up(survivor)
        with local_stack(writer_config) as writer, Participant.on(writer) as p:
            user_seq, killed = kill_mid_reply(writer, p)
        observed = Observed(scenario, lease_seconds, user_seq)
        if survivor is None:  # restart: a stack on the same store, freeing every lease as it starts
            survivor = stacks.enter_context(local_stack(survivor_config))
        deadline = killed + lease_seconds + SLACK_SECONDS
        with Participant.on(survivor) as p:
            observed.replying_at_start = p.start(deadline)["replying"]
            if observed.replying_at_start is not None:
                while_blocked(p, observed, deadline)
            recover(p, observed, killed, deadline)
        return observed


def summary(observed: Observed) -> str:
    def s(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    lines = [
        f"{observed.scenario}: REPLY_LEASE_SECONDS={observed.lease_seconds} (renewed every "
        f"{observed.lease_seconds / 3:.3g} s), writer killed at its first delta",
        f"  on coming back, start said replying: {observed.replying_at_start}",
    ]
    if observed.replying_at_start is not None:
        lines.append(f"  meanwhile: a retry got {observed.resend_while_blocked}, a new message "
                     f"{observed.new_message_while_blocked}")
    lines += [
        f"  chat free (start: replying null)   {s(observed.free_s)} after the kill",
        f"  retry's first delta                {s(observed.retry_first_delta_s)}",
        f"  retry's reply complete             {s(observed.retry_reply_s)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.dead_turn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lease", type=int, help="REPLY_LEASE_SECONDS for the run (default: the service's)")
    parser.add_argument("--scenario", choices=("crash", "restart", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print the observations as JSON")
    args = parser.parse_args(argv)
    scenarios = ("crash", "restart") if args.scenario == "both" else (args.scenario,)
    results = [measure(name, args.lease) for name in scenarios]
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else "\n".join(map(summary, results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
