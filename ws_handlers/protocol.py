"""The wire protocol: parse client frames, build server frames. No I/O.

docs/protocol.md is the prose version of this module; keep them in step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ChatError
from .store import Message

#: Largest client frame parsed. API Gateway accepts 128 KB, but no valid action needs
#: more than a ticket plus a long message, so anything bigger is refused before parsing.
MAX_FRAME_BYTES = 64 * 1024
#: Server frames that carry history stay under API Gateway's 128 KB message limit.
MAX_HISTORY_BYTES = 96 * 1024

_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


@dataclass(frozen=True)
class Start:
    ticket: str


@dataclass(frozen=True)
class Send:
    chat_id: str
    client_msg_id: str
    text: str


@dataclass(frozen=True)
class History:
    chat_id: str
    after_seq: int


@dataclass(frozen=True)
class Ping:
    pass


Action = Start | Send | History | Ping


def _field(frame: dict[str, Any], name: str, kind: type, **context: Any) -> Any:
    value = frame.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ChatError("invalid_field", f"`{name}` must be a {kind.__name__}.", field=name, **context)
    return value


def _identifier(frame: dict[str, Any], name: str, **context: Any) -> str:
    value = _field(frame, name, str, **context)
    if not _ID.fullmatch(value):
        raise ChatError("invalid_field", f"`{name}` must be 1 to 64 characters of A-Z a-z 0-9 _ . : -", field=name)
    return value


def parse(body: str | bytes | None) -> Action:
    """Parse one client frame; raises ChatError with a protocol code when it is not valid."""
    if body is None:
        raise ChatError("bad_frame")
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw) > MAX_FRAME_BYTES:
        raise ChatError("frame_too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        raise ChatError("bad_frame") from None
    if not isinstance(frame, dict):
        raise ChatError("bad_frame")
    action = frame.get("action")
    if action == "ping":
        return Ping()
    if action == "start":
        return Start(_field(frame, "ticket", str))
    if action == "history":
        chat_id = _identifier(frame, "chat_id")
        after = frame.get("after_seq", 0)
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 10**10:
            raise ChatError("invalid_field", "`after_seq` must be a whole number from 0.", field="after_seq")
        return History(chat_id, after)
    if action == "send":
        chat_id = _identifier(frame, "chat_id")
        client_msg_id = _identifier(frame, "client_msg_id")
        text = _field(frame, "text", str, client_msg_id=client_msg_id)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
            raise ChatError("invalid_field", "`text` is not valid Unicode.", field="text", client_msg_id=client_msg_id) from None
        return Send(chat_id, client_msg_id, text)
    raise ChatError("unknown_action", "Actions are start, send, history and ping.")


# -- server frames ------------------------------------------------------------------------
def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()


def error_frame(error: ChatError) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message, "retryable": error.retryable}
    frame.update({k: v for k, v in error.context.items() if v is not None})
    return frame


def visible(message: Message) -> dict[str, Any]:
    """What a participant may see of a stored message: never model, prompt or treatment."""
    out: dict[str, Any] = {
        "seq": message.seq,
        "role": message.role,
        "text": message.text,
        "created_at": message.created_at,
    }
    if message.client_msg_id:
        out["client_msg_id"] = message.client_msg_id
    if message.role == "assistant" and (message.prompt_tokens or message.completion_tokens):
        out["usage"] = {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens}
    return out


def message_frame(chat_id: str, message: Message) -> dict[str, Any]:
    return {"type": "message", "chat_id": chat_id, **visible(message)}


def queued_frame(chat_id: str, seq: int, client_msg_id: str) -> dict[str, Any]:
    """The reply `seq` waits for the assistant (a free reply slot); deltas follow when it starts."""
    return {"type": "queued", "chat_id": chat_id, "seq": seq, "client_msg_id": client_msg_id}


def history_page(messages: list[Message]) -> tuple[list[dict[str, Any]], bool]:
    """As many messages as fit in one frame, and whether more remain."""
    page: list[dict[str, Any]] = []
    size = 0
    for message in messages:
        item = visible(message)
        size += len(encode(item)) + 1
        if page and size > MAX_HISTORY_BYTES:
            return page, True
        page.append(item)
    return page, False
