"""The verification pass's judgement: one participant's sends against its chat's stored history.

Pure (no sockets), so it is tested on hand-made histories. A chat's history is the opening
(assistant, seq 1) and then, for every stored user message, its reply at the next seq. So a
user message is stored once (its client_msg_id appears once), and its reply once: a second
assistant message after one reply is a reply stored twice (a duplicated job that wrote), and
a user message followed by another user message (or by nothing) has no stored reply.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verification:
    checked: int = 0
    sent: int = 0  #: messages acknowledged to the participants
    stored_once: int = 0
    lost: int = 0  #: acknowledged (or answered) but missing from history
    duplicated: int = 0  #: stored more than once (or an unknown copy of one), user messages and replies
    replies_checked: int = 0
    replies_complete: int = 0
    replies_mismatch: int = 0  #: final text differs from history or from the merged deltas
    replies_missing: int = 0  #: a reply the participant got is not in history
    replies_stored: int = 0  #: stored user messages whose reply is stored exactly once, right after them
    replies_unstored: int = 0  #: stored user messages with no reply stored after them
    replies_duplicated: int = 0  #: extra assistant messages after a reply (also counted in duplicated)
    unanswered: int = 0  #: sends with no final message (errors, timeouts)
    stored_not_delivered: int = 0  #: of those, replies that are in history all the same
    unverified: int = 0  #: chats whose history could not be read (never counted as fine)
    failures: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def check(v: Verification, who: str, replies: list[Any], stored: list[dict[str, Any]]) -> None:
    """Add one chat's findings to `v`: `replies` are the participant's runner.Reply records,
    `stored` the chat's history (every message, any order)."""
    v.checked += 1
    by_cmid = Counter(m.get("client_msg_id") for m in stored if m.get("role") == "user")
    by_seq = {m["seq"]: m for m in stored}
    mine = {r.client_msg_id for r in replies}
    seqs = [m["seq"] for m in stored]
    if len(seqs) != len(set(seqs)):
        v.duplicated += len(seqs) - len(set(seqs))
        v.failures.append(f"{who}: a seq appears twice in history")
    for cmid, count in by_cmid.items():
        if cmid not in mine:
            v.duplicated += count  # a user message nobody sent
            v.failures.append(f"{who}: unknown user message {cmid}")
    _check_stored_replies(v, who, sorted(by_seq.values(), key=lambda m: m["seq"]))
    for r in replies:
        count = by_cmid.get(r.client_msg_id, 0)
        if count == 1:
            v.stored_once += 1
        elif count > 1:
            v.duplicated += count - 1
            v.failures.append(f"{who}: {r.client_msg_id} stored {count} times")
        elif r.user_seq is not None or r.final_text is not None:
            v.lost += 1
            v.failures.append(f"{who}: {r.client_msg_id} acknowledged but not stored")
        if r.final_text is None:
            later = by_seq.get((r.user_seq or -1) + 1)
            if later is not None and later.get("role") == "assistant":
                v.stored_not_delivered += 1
                v.failures.append(f"{who}: reply {later['seq']} stored but its message frame "
                                  f"never arrived ({r.error or 'no error frame'})")
            continue
        v.replies_checked += 1
        stored_reply = by_seq.get(r.reply_seq or -1)
        if stored_reply is None or stored_reply.get("role") != "assistant":
            v.replies_missing += 1
            v.lost += 1
            v.failures.append(f"{who}: reply {r.reply_seq} not in history")
        elif stored_reply["text"] != r.final_text or r.merged_text != r.final_text:
            v.replies_mismatch += 1
            v.failures.append(f"{who}: reply {r.reply_seq} differs (history/deltas/message)")
        else:
            v.replies_complete += 1


def _check_stored_replies(v: Verification, who: str, ordered: list[dict[str, Any]]) -> None:
    """Each stored user message has exactly one reply, stored right after it."""
    previous: str | None = None
    for m in ordered:
        role = m.get("role")
        if role == "user" and previous == "user":
            v.replies_unstored += 1  # the earlier user message got no reply
        elif role == "assistant" and previous == "user":
            v.replies_stored += 1
        elif role == "assistant" and previous == "assistant":  # a reply after a reply (the opening is first)
            v.replies_duplicated += 1
            v.duplicated += 1
            v.failures.append(f"{who}: assistant message {m['seq']} follows another: a reply stored twice")
        previous = role
    if previous == "user":
        v.replies_unstored += 1
