"""Every error the service tells a client, with a stable code.

`CODES` is the one list: the protocol document and the tests read it. An error frame
carries `code`, a human `message` (never a stack trace or secret) and `retryable`,
which says truthfully whether sending the same thing again later can succeed.
"""

from __future__ import annotations

from dataclasses import dataclass


class Refused(Exception):
    """The $connect handshake is refused with this HTTP status (401 unauthenticated, 403 forbidden):
    what `admission` decides and `entry` answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Code:
    code: str
    retryable: bool
    message: str


CODES: dict[str, Code] = {
    c.code: c
    for c in (
        # malformed frames
        Code("bad_frame", False, "The frame is not a JSON object."),
        Code("frame_too_large", False, "The frame is larger than the service accepts."),
        Code("unknown_action", False, "The action is not one the service knows."),
        Code("invalid_field", False, "A field is missing or has the wrong type or format."),
        # identity and authorisation
        Code("not_connected", False, "This connection is not known; reconnect with a valid token."),
        Code("invalid_ticket", False, "The chat ticket is not valid."),
        Code("ticket_expired", False, "The chat ticket has expired; reload the page."),
        Code("ticket_mismatch", False, "The chat ticket belongs to another participant."),
        Code("chat_not_found", False, "No such chat for this participant."),
        # limits
        Code("empty_message", False, "The message is empty."),
        Code("message_too_long", False, "The message is longer than this chat allows."),
        Code("message_limit", False, "This chat has reached its number of messages."),
        Code("chat_limit", False, "This participant has reached the number of chats allowed."),
        Code("chat_token_limit", False, "This chat has used all the tokens it is allowed."),
        Code("budget_exhausted", False, "The experiment's token budget is used up."),
        Code("paused", True, "The chat is paused by the experimenter; try again later."),
        Code("rate_limited", True, "Too many frames from this connection; slow down."),
        Code("reply_in_progress", True, "A reply is still being written in this chat; wait for it."),
        # the model and the service
        Code("llm_rate_limited", True, "The model is busy; try again in a moment."),
        Code("llm_timeout", True, "The model took too long to answer; try again."),
        Code("llm_unavailable", True, "The model could not be reached; try again."),
        Code("llm_error", False, "The model refused the request."),
        Code("llm_paused", True, "The assistant is paused for a moment after repeated failures; try again shortly."),
        Code("reply_interrupted", True, "The reply was interrupted before it was complete; try again."),
        Code("throttled", True, "The service is busy; try again in a moment."),
        Code("internal", True, "Something went wrong on the server; try again."),
    )
}


class ChatError(Exception):
    """A refusal the client is told about, by code."""

    def __init__(self, code: str, message: str | None = None, **context: object) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.retryable = CODES[code].retryable
        self.message = message or CODES[code].message
        self.context = context  #: extra frame fields (chat_id, client_msg_id, seq)
        super().__init__(f"{code}: {self.message}")
