"""The wire protocol: parse client frames, build server frames. No I/O.

docs/protocol.md is the prose version of this module; keep them in step.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from .errors import ChatError
from .gateway_limits import MAX_CLIENT_FRAME_BYTES
from .store import Message

#: Largest client message parsed: what one frame can carry. API Gateway closes the socket
#: on a bigger frame, so only a message split into several frames (up to 128 KB) gets here
#: bigger; browsers send none, and no valid action needs one (a ticket fits in a frame by
#: construction): it is refused before parsing.
MAX_FRAME_BYTES = MAX_CLIENT_FRAME_BYTES
#: Budgets of server frames, in bytes of text as `encode` writes it (UTF-8, escapes
#: included), chosen so that no frame reaches API Gateway's 128 KB per post_to_connection:
MAX_HISTORY_BYTES = 96 * 1024  #: the messages of one `chat` or `history` frame
MAX_REPLY_BYTES = 96 * 1024  #: a reply's text: the turn cuts it there, so its `message` frame fits
MAX_DELTA_BYTES = 32 * 1024  #: one delta's text: a resumed long reply comes as several deltas
#: Deepest nesting of objects and arrays in a client frame. A valid frame is one object of
#: scalars (depth 1); deeper ones are `bad_frame`, whatever the parser's own recursion limit
#: (which a 32 KB frame of brackets exceeds many times over) would make of them.
MAX_NESTING = 32

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


Action = Start | Send | History


#: Letters and symbols by category that show nothing: the Hangul fillers and the blank Braille
#: pattern, the usual ways to type an "empty" name where blanks are refused.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _shows_nothing(char: str) -> bool:
    """Spaces and separators (Z*), controls (Cc), format characters (Cf: zero-width space and
    joiners, soft hyphen, word joiner, BOM, bidi and tag characters), marks with nothing to
    mark (M*), the invisible letters above, and the tags' block (U+E0000-E0FFF, reserved for
    characters that are never shown). Other unassigned code points count as visible: they may
    be characters (an emoji) newer than this Python's Unicode tables."""
    category = unicodedata.category(char)
    return category[0] in "ZM" or category in ("Cc", "Cf") or char in _INVISIBLE or 0xE0000 <= ord(char) <= 0xE0FFF


def is_blank(text: str) -> bool:
    """Whether `text` has nothing a reader could see: the service refuses it (`empty_message`),
    so it is never stored and never counts toward a chat's messages. A zero-width joiner inside
    an emoji sequence is fine: the emoji around it are visible."""
    return all(_shows_nothing(char) for char in text)


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


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` deep in `value` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def parse(body: str | bytes | None) -> Action:
    """Parse one client frame; raises ChatError with a protocol code when it is not valid."""
    if body is None:
        raise ChatError("bad_frame")
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw) > MAX_FRAME_BYTES:
        raise ChatError("frame_too_large", f"Frames are limited to {MAX_FRAME_BYTES} bytes.")
    try:
        frame = json.loads(raw)
        too_deep = _deeper_than(frame, MAX_NESTING)
    except ValueError:
        raise ChatError("bad_frame") from None
    except RecursionError:  # nested hundreds deep: the parser gave up first
        too_deep = True
    if too_deep:
        raise ChatError("bad_frame", f"The frame nests objects or arrays more than {MAX_NESTING} deep.")
    if not isinstance(frame, dict):
        raise ChatError("bad_frame")
    action = frame.get("action")
    if action == "ping":  # answered by API Gateway (a MOCK integration): this one it read as another route
        raise ChatError("bad_frame", "API Gateway answers ping itself; this frame reached the service as "
                                     "another action (duplicate keys? a byte order mark?).")
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
    """A frame as it is sent: compact JSON in UTF-8 (not \\u-escaped: 3 bytes for a CJK
    character, not 6)."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()


def text_bytes(text: str) -> int:
    """Bytes `text` takes inside a frame written by `encode` (escapes included, quotes not)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def fitting(text: str, limit: int) -> str:
    """The longest start of `text` that takes at most `limit` bytes in a frame."""
    high = min(len(text), limit)  # a character takes at least one byte
    if text_bytes(text[:high]) <= limit:  # the usual case: all of it, or all a limit can hold
        return text[:high]
    low = 0
    while low < high:  # text_bytes grows with the length: bisect
        middle = (low + high + 1) // 2
        if text_bytes(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def split_text(text: str, limit: int) -> list[str]:
    """`text` in consecutive pieces of at most `limit` bytes each in a frame (limit >= 6,
    the most one character takes)."""
    pieces = []
    while text:
        piece = fitting(text, limit)
        if not piece:
            raise ValueError(f"no character fits in {limit} bytes")
        pieces.append(piece)
        text = text[len(piece) :]
    return pieces


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
    """As many messages as fit in MAX_HISTORY_BYTES, and whether more remain. The first one
    always goes: no stored message is too big for a frame (participants' messages came in a
    32 KB frame, openings are at most 4,000 characters, replies are cut at MAX_REPLY_BYTES)."""
    page: list[dict[str, Any]] = []
    size = 0
    for message in messages:
        item = visible(message)
        size += len(encode(item)) + 1
        if page and size > MAX_HISTORY_BYTES:
            return page, True
        page.append(item)
    return page, False
