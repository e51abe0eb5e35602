"""What each action of one participant costs in DynamoDB, counted on the real adapter.

The cost model (cost.py) does not copy what the store does: it runs one representative
participant through the functions of template.yaml (their handlers, with API Gateway- and
SQS-shaped events) against `DynamoStore` on moto, with every call priced by
`dynamo_units.Meter`, and reads the request units of each action off that run. A change in
the handlers, the domain or the adapter changes the profile, and with it the cost model.

The participant connects, starts a chat (with the bot's opening message), sends `messages`
messages of `user_chars` characters, each answered with `reply_chars` characters, and
disconnects. Some costs depend on time rather than on the run, and are counted apart, by
calling the store method the code calls (labelled "probe" below):

- `count_frame`, which every frame makes: its cost depends on whether the frame opens a new
  rate window, so it is probed in a fresh window and again in the same one;
- `renew_lease` (every REPLY_LEASE_SECONDS / RENEWALS_PER_LEASE while a reply streams) and the
  read of the chat that follows the participant's socket (every REBIND_INTERVAL while text is
  delivered): probed from inside each reply, while it holds the chat, so they see the chat as
  the turn does. What the turn does while it delivers the text is labelled apart, so a busy
  machine (a turn slower than REBIND_INTERVAL) does not change the counts;
- a refused send (the reads a send makes before `reply_in_progress`): the price of a retry.

The run happens in a child process (load_tests/profile_run.py): moto patches botocore
process-wide, and the handlers' Powertools write to stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .dynamo_units import Request

ROOT = Path(__file__).resolve().parent.parent
#: Store methods whose calls inside an action are priced apart, by a probe of their own.
PRICED_APART = ("count_frame", "renew_lease")


@dataclass(frozen=True)
class Shape:
    """What the representative participant does (sizes in characters of ASCII text)."""

    bot: str  #: the bot of the ticket, as JSON (Bot.to_dict)
    messages: int
    user_chars: int
    reply_chars: int


@dataclass(frozen=True)
class Units:
    rru: float = 0.0
    wru: float = 0.0  #: table and index writes

    def __add__(self, other: Units) -> Units:
        return Units(self.rru + other.rru, self.wru + other.wru)

    def __mul__(self, count: float) -> Units:
        return Units(self.rru * count, self.wru * count)


@dataclass(frozen=True)
class Profile:
    """The priced requests of one run, by action, and the settings the run had (template.yaml's)."""

    messages: int  #: the participant's messages (and replies): turns 1 to `messages` are profiled
    requests: tuple[Request, ...]
    rate_limit_window: float
    reply_lease_seconds: float
    memory_mb: dict[str, int] = field(default_factory=dict)  #: MemorySize of each function
    _sums: dict[tuple[str, bool], Units] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for r in self.requests:
            units = Units(r.rru, r.wru + r.index_wru)
            for whole in (True, False):
                counted = units if whole or r.method not in PRICED_APART else Units()
                self._sums[(r.action, whole)] = self._sums.get((r.action, whole), Units()) + counted

    def units(self, action: str) -> Units:
        """What `action` cost, without the calls priced apart (PRICED_APART)."""
        return self._sums[(action, False)]

    def probe(self, action: str) -> Units:
        """What the probe `action` cost, all its calls."""
        return self._sums[(action, True)]

    def describe(self, action: str) -> str:
        """The calls of `action`, e.g. 'get_chat GetItem 1 RRU; open_chat TransactWriteItems 6 WRU + 1 index'."""
        parts = []
        for r in self.requests:
            if r.action != action:
                continue
            cost = [f"{r.rru:g} RRU" if r.rru else "", f"{r.wru:g} WRU" if r.wru else "",
                    f"{r.index_wru:g} index WRU" if r.index_wru else ""]
            apart = " (priced apart)" if r.method in PRICED_APART and not action.startswith("probe") else ""
            parts.append(f"{r.method} {r.operation} {' + '.join(c for c in cost if c)}{apart}")
        return "; ".join(parts)


#: Profiles run so far, by (bot, user_chars, reply_chars): a longer run serves a shorter shape,
#: since its first turns are the shorter run's.
_RUNS: dict[tuple[str, int, int], Profile] = {}


def profile(shape: Shape) -> Profile:
    """The profile of `shape`: run (in a child process) unless a run as long or longer was."""
    key = (shape.bot, shape.user_chars, shape.reply_chars)
    known = _RUNS.get(key)
    if known is None or known.messages < shape.messages:
        known = _RUNS[key] = _run(shape)
    return known


def _run(shape: Shape) -> Profile:
    from .local import QUIET

    env = os.environ | QUIET | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "load_tests.profile_run", json.dumps(asdict(shape))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the store profile failed:\n{done.stderr[-4000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Profile(shape.messages, tuple(Request(**r) for r in data["requests"]), data["rate_limit_window"],
                   data["reply_lease_seconds"], data["memory_mb"])
