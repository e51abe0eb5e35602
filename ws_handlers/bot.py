"""A bot: what the experimenter configures per treatment, carried inside the chat ticket.

Standard library only: the experiment server (oTree) builds these objects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: Upper bounds that no ticket can exceed, whatever the experimenter writes.
MAX_SYSTEM_PROMPT_CHARS = 20_000
MAX_OPENING_CHARS = 4_000
MAX_REPLY_TOKENS = 8_192


@dataclass(frozen=True)
class Limits:
    """Per-chat limits, enforced by the service."""

    max_chars: int = 1000  #: characters per participant message
    max_user_messages: int = 30  #: participant messages per chat
    max_tokens_per_chat: int = 50_000  #: prompt + completion tokens over the chat

    def __post_init__(self) -> None:
        for name in ("max_chars", "max_user_messages", "max_tokens_per_chat"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limits.{name} must be a positive integer")


@dataclass(frozen=True)
class Pace:
    """How fast the widget shows a reply: a reading or typing pace, applied to the displayed
    text only (storage and the transcript never wait for it). Each word waits 60/words_per_minute
    seconds, scaled by a random factor in [1 - jitter, 1 + jitter]."""

    words_per_minute: int = 250
    jitter: float = 0.0

    def __post_init__(self) -> None:
        wpm = self.words_per_minute
        if not isinstance(wpm, int) or isinstance(wpm, bool) or not 30 <= wpm <= 3000:
            raise ValueError("pace.words_per_minute must be an integer from 30 to 3000")
        jitter = self.jitter
        if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or not 0 <= jitter <= 0.9:
            raise ValueError("pace.jitter must be a number from 0 to 0.9")


@dataclass(frozen=True)
class Bot:
    """The treatment: model, system prompt and sampling parameters, never shown to the browser."""

    name: str
    model: str
    system_prompt: str
    temperature: float = 0.7
    max_tokens: int = 400
    opening_message: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: None: replies show as fast as they stream
    pace: Pace | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 64:
            raise ValueError("bot.name must be a string of 1 to 64 characters")
        if not isinstance(self.model, str) or not 0 < len(self.model) <= 128:
            raise ValueError("bot.model must be a string of 1 to 128 characters")
        if not isinstance(self.system_prompt, str) or len(self.system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise ValueError(f"bot.system_prompt must be a string of at most {MAX_SYSTEM_PROMPT_CHARS} characters")
        if (
            not isinstance(self.temperature, (int, float))
            or isinstance(self.temperature, bool)
            or not 0 <= self.temperature <= 2  # before isfinite, which overflows on huge ints
            or not math.isfinite(self.temperature)
        ):
            raise ValueError("bot.temperature must be a number from 0 to 2")
        if (
            not isinstance(self.max_tokens, int)
            or isinstance(self.max_tokens, bool)
            or not 0 < self.max_tokens <= MAX_REPLY_TOKENS
        ):
            raise ValueError(f"bot.max_tokens must be an integer from 1 to {MAX_REPLY_TOKENS}")
        if self.opening_message is not None and (
            not isinstance(self.opening_message, str) or not 0 < len(self.opening_message) <= MAX_OPENING_CHARS
        ):
            raise ValueError(f"bot.opening_message must be a string of 1 to {MAX_OPENING_CHARS} characters")
        if not isinstance(self.limits, Limits):
            raise ValueError("bot.limits must be a Limits")
        if self.pace is not None and not isinstance(self.pace, Pace):
            raise ValueError("bot.pace must be a Pace")
        for name in ("name", "model", "system_prompt", "opening_message"):
            value = getattr(self, name)
            try:
                value is None or value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates cannot be stored or sent
                raise ValueError(f"bot.{name} is not valid Unicode") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Bot:
        """Build a bot from plain data, raising ValueError on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError("bot must be an object")
        data = dict(data)
        limits = data.pop("limits", None) or {}
        pace = data.pop("pace", None)
        if not isinstance(limits, dict):
            raise ValueError("bot.limits must be an object")
        if pace is not None and not isinstance(pace, dict):
            raise ValueError("bot.pace must be an object")
        try:
            return cls(**data, limits=Limits(**limits), pace=None if pace is None else Pace(**pace))
        except TypeError as exc:  # unknown or missing fields
            raise ValueError(f"bot has unknown or missing fields: {exc}") from None
