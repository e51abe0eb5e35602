"""Live status: what an operator watches during a session, read from the store.

An experiment's status reads its chats' metadata (one index query) and each chat's
messages once: a `Watch` keeps a small tally per chat and on the next refresh reads only
the messages written since, so `status --watch` stays cheap as the session grows. The
spend estimate prices each reply's prompt and completion tokens with `prices` (ws_handlers/ops/prices.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..store import AdminStore, Chat, message_pages
from .prices import DATE, llm_usd


@dataclass
class _ChatTally:
    seen_seq: int = 0
    participant_messages: int = 0
    replies: int = 0
    openings: int = 0
    last_at: float = 0.0
    tokens: dict[str, list[int]] = field(default_factory=dict)  #: model -> [prompt, completion]


@dataclass
class Snapshot:
    """What `status` shows; `--json` prints it as it is."""

    at: str
    where: str
    service_paused: bool
    llm_paused_until: str | None  #: the circuit breaker, when it is open
    connections: int  #: open sockets (of the experiment, when one is named)
    experiment: str | None = None
    session: str | None = None
    experiment_paused: bool | None = None
    token_budget: int | None = None  #: the experiment's own; None: the deployment's TOKEN_BUDGET applies
    default_budget: str | None = None
    tokens_used: int | None = None  #: the experiment's counter, which the budget is checked against
    chats: int = 0
    active_chats: int = 0
    participants: int = 0
    participant_messages: int = 0
    replies: int = 0
    openings: int = 0  #: the bots' opening messages (no model call)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_usd: float | None = None  #: priced tokens only; see unpriced_tokens
    unpriced_tokens: dict[str, int] = field(default_factory=dict)  #: model -> tokens the price table lacks
    prices_of: str | None = None
    connections_by_experiment: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Watch:
    """Successive snapshots of one experiment (or the service), each reading only what is new."""

    def __init__(self, store: AdminStore, where: str, experiment: str | None = None, session: str | None = None,
                 active_seconds: float = 600.0, default_budget: str | None = None) -> None:
        self.store, self.where = store, where
        self.experiment, self.session = experiment, session
        self.active_seconds = active_seconds
        self.default_budget = default_budget
        self._chats: dict[str, _ChatTally] = {}

    def snapshot(self, now: float) -> Snapshot:
        service, breaker = self.store.read_controls(None), self.store.read_breaker()
        live = [c for c in self.store.connections(self.experiment) if c.expires_at > now
                and (self.session is None or c.identity.session == self.session)]
        snap = Snapshot(
            at=_iso(now), where=self.where, service_paused=service.paused,
            llm_paused_until=_iso(breaker.open_until) if breaker.is_open(now) else None,
            connections=len(live),
        )
        if self.experiment is None:
            for c in live:
                snap.connections_by_experiment[c.identity.experiment] = (
                    snap.connections_by_experiment.get(c.identity.experiment, 0) + 1)
            return snap
        controls = self.store.read_controls(self.experiment)
        snap.experiment, snap.session = self.experiment, self.session
        snap.experiment_paused, snap.token_budget = controls.paused, controls.token_budget
        snap.tokens_used, snap.default_budget = controls.tokens_used, self.default_budget
        participants, tokens = set(), {}
        for chat in self.store.experiment_chats(self.experiment, self.session):
            tally = self._update(chat)
            snap.chats += 1
            snap.active_chats += chat.replying(now) or tally.last_at >= now - self.active_seconds
            participants.add(chat.identity.participant)
            snap.participant_messages += tally.participant_messages
            snap.replies += tally.replies
            snap.openings += tally.openings
            for model, (prompt, completion) in tally.tokens.items():
                total = tokens.setdefault(model, [0, 0])
                total[0], total[1] = total[0] + prompt, total[1] + completion
        snap.participants = len(participants)
        snap.prompt_tokens = sum(p for p, _ in tokens.values())
        snap.completion_tokens = sum(c for _, c in tokens.values())
        snap.llm_usd, snap.unpriced_tokens, snap.prices_of = _price(tokens)
        return snap

    def _update(self, chat: Chat) -> _ChatTally:
        tally = self._chats.setdefault(chat.chat_id, _ChatTally())
        if chat.next_seq - 1 <= tally.seen_seq:
            return tally
        for page in message_pages(self.store, chat.chat_id, after_seq=tally.seen_seq):
            for m in page:
                if m.role == "user":
                    tally.participant_messages += 1
                elif m.model or m.prompt_tokens or m.completion_tokens:  # a reply; the opening has no model
                    tally.replies += 1
                    counted = tally.tokens.setdefault(m.model or chat.bot.model, [0, 0])
                    counted[0] += m.prompt_tokens
                    counted[1] += m.completion_tokens
                else:
                    tally.openings += 1
                tally.last_at = max(tally.last_at, m.created_at)
                tally.seen_seq = m.seq
        return tally


def _price(tokens: dict[str, list[int]]) -> tuple[float, dict[str, int], str]:
    usd, unpriced = 0.0, {}
    for model, (prompt, completion) in tokens.items():
        cost = llm_usd(model, prompt, completion)
        if cost is None:
            unpriced[model] = prompt + completion
        else:
            usd += cost
    return usd, unpriced, DATE


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(s: Snapshot, active_minutes: float) -> str:
    """The snapshot as a few aligned lines for a terminal."""
    switch = "PAUSED" if s.service_paused else "running"
    lines = [f"{s.at}  {s.where}"]
    if s.experiment is None:
        lines += [
            f"  service        {switch}" + ("  (refuses new connections and messages: code `paused`)" if s.service_paused else ""),
            f"  connections    {s.connections} open"
            + (" (" + ", ".join(f"{e}: {n}" for e, n in sorted(s.connections_by_experiment.items())) + ")"
               if s.connections_by_experiment else ""),
        ]
    else:
        state = "PAUSED" if s.experiment_paused else "running"
        if s.service_paused and not s.experiment_paused:
            state += " (but the service is PAUSED)"
        name = s.experiment + (f", session {s.session}" if s.session else "")
        lines += [
            f"  experiment     {name}: {state}",
            f"  budget         {describe_budget(s.tokens_used or 0, s.token_budget, s.default_budget)}",
            f"  connections    {s.connections} open",
            (f"  chats          {s.chats} ({s.active_chats} active in the last {active_minutes:g} min), "
             f"{s.participants} participants"),
            (f"  messages       {s.participant_messages + s.replies + s.openings} ({s.participant_messages} from "
             f"participants, {s.replies} replies, {s.openings} openings)"),
            f"  tokens         {s.prompt_tokens:,} prompt + {s.completion_tokens:,} completion",
            f"  LLM spend      {_spend(s)}",
        ]
    if s.llm_paused_until:
        lines.append(f"  model calls    paused by the circuit breaker until {s.llm_paused_until}")
    return "\n".join(lines)


def describe_budget(tokens_used: int, token_budget: int | None, default_budget: str | None) -> str:
    """Tokens used against the budget, in words (`status` and `budget` say it the same way)."""
    used = f"{tokens_used:,} tokens used"
    if token_budget is None:
        return f"{used}; no budget of its own: {default_budget or 'the deployment TOKEN_BUDGET'} applies"
    if token_budget == 0:
        return f"{used}; budget 0: unlimited"
    line = f"{used} of a budget of {token_budget:,} ({100 * tokens_used / token_budget:.1f}%)"
    if tokens_used >= token_budget:
        line += "; used up: new messages are refused (code `budget_exhausted`)"
    return line


def _spend(s: Snapshot) -> str:
    text = f"${s.llm_usd:,.4f} at the list prices of {s.prices_of}"
    if s.unpriced_tokens:
        text += "; not priced: " + ", ".join(f"{m} ({n:,} tokens)" for m, n in sorted(s.unpriced_tokens.items()))
    return text
