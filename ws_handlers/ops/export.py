"""Transcripts as rows: one per message, streamed chat by chat and page by page.

Nothing holds more than one page of messages: chats come from the experiment's index a
page at a time, each chat's messages a page at a time, and each row is written as soon as
it is made, so a million messages need no more memory than five hundred.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..model import PROVENANCE_FIELDS
from ..store import AdminStore, Chat, Message, message_pages

#: The reply's provenance comes last (model_snapshot, system_fingerprint, parameters,
#: system_prompt_sha256): empty for participants' messages, openings and replies stored before it.
COLUMNS = (
    "experiment", "session", "participant", "chat_key", "chat_id", "bot", "seq", "role", "text",
    "created_at", "created_at_epoch", "latency_ms", "prompt_tokens", "completion_tokens", "model", "client_msg_id",
    *PROVENANCE_FIELDS,
)
PAGE_SIZE = 500
#: What spreadsheet programs take for the start of a formula (OWASP's list for CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso(epoch: float) -> str:
    """UTC with milliseconds, e.g. 2026-03-01T09:30:00.250Z."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row(chat: Chat, message: Message) -> dict[str, Any]:
    who = chat.identity
    return {
        "experiment": who.experiment, "session": who.session, "participant": who.participant,
        "chat_key": chat.chat_key, "chat_id": chat.chat_id, "bot": chat.bot.name,
        "seq": message.seq, "role": message.role, "text": message.text,
        "created_at": iso(message.created_at), "created_at_epoch": message.created_at,
        "latency_ms": message.latency_ms, "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens, "model": message.model,
        "client_msg_id": message.client_msg_id,
        **{name: getattr(message.provenance, name, None) for name in PROVENANCE_FIELDS},
    }


def rows(
    store: AdminStore, experiment: str, session: str | None = None, *, page_size: int = PAGE_SIZE,
    advance: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every message of the experiment (or one session) in chat order, then seq order."""
    for chat in store.experiment_chats(experiment, session):
        for page in message_pages(store, chat.chat_id, page_size=page_size):
            yield from (row(chat, m) for m in page)
            if advance is not None:
                advance(len(page))


def count(store: AdminStore, experiment: str, session: str | None = None) -> tuple[int, int]:
    """(chats, messages), from the chats' counters alone: seqs have no gaps, so a chat holds next_seq - 1."""
    chats = messages = 0
    for chat in store.experiment_chats(experiment, session):
        chats += 1
        messages += chat.next_seq - 1
    return chats, messages


def excel_safe(value: Any) -> Any:
    """A text a spreadsheet would run as a formula, made inert by a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(records: Iterable[dict[str, Any]], out: TextIO, *, raw: bool = False,
              columns: Iterable[str] = COLUMNS) -> int:
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\r\n")  # RFC 4180
    writer.writeheader()
    written = 0
    for record in records:
        writer.writerow(record if raw else {k: excel_safe(v) for k, v in record.items()})
        written += 1
    return written


def write_jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    written = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        written += 1
    return written


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    """A file that appears at `path` complete or not at all (written beside it, then renamed)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
