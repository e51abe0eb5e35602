"""The model port: a reply streamed as text pieces, then its token usage. No I/O here: the
adapter on the `openai` client is `adapters.openai_model`, which only the reply function loads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from .bot import Bot


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


class LLMError(Exception):
    """The model failed; `code` is the protocol error code.

    Nothing the provider wrote is kept: a provider's error body may echo the request (a 400 quoting
    the system prompt and the participant's text), so only the error's type, the HTTP status and
    the body's size are, in `log` (for logs only, never for the client).
    """

    def __init__(self, code: str, error_type: str, status: int | None = None, body_bytes: int | None = None) -> None:
        super().__init__(f"{code}: {error_type}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.log = {k: v for k, v in (("error_type", error_type), ("status", status), ("body_bytes", body_bytes))
                    if v is not None}


class ChatModel(Protocol):
    def stream(self, bot: Bot, messages: list[dict[str, str]]) -> Iterator[str | Usage]:
        """Yield the reply's text pieces, then exactly one Usage; raises LLMError."""
        ...
