"""The model port: a reply streamed as text pieces, then its token usage and provenance. No I/O
here: the adapter on the `openai` client is `adapters.openai_model`, which only the reply function
loads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from .bot import Bot

#: What a request carries besides its parameters: the conversation and how it is delivered.
NOT_PARAMETERS = frozenset({"messages", "stream", "stream_options"})


@dataclass(frozen=True)
class Provenance:
    """What produced a reply, as a paper's methods section reports it: stored with the reply (in
    the same write), exported beside it, never shown to the participant.

    `model_snapshot` is the model the provider says answered (OpenAI answers an alias such as
    gpt-4o-mini with its dated snapshot), `system_fingerprint` its backend configuration when it
    sends one; `parameters` is what the request set besides the messages (the requested model,
    temperature, the token limit ...) as canonical JSON (sorted keys, no spaces), so equal settings
    are equal strings; `system_prompt_sha256` the SHA-256 (hex) of the system prompt's exact text
    as sent, None when none was: the prompt itself stays with the study, the hash shows which
    version each reply had.
    """

    model_snapshot: str | None = None
    system_fingerprint: str | None = None
    parameters: str | None = None
    system_prompt_sha256: str | None = None

    @classmethod
    def of_request(cls, request: Mapping[str, Any], model_snapshot: str | None = None,
                   system_fingerprint: str | None = None) -> Provenance:
        """The provenance of a chat completions `request` (its body, as sent) that the provider
        answered as `model_snapshot`."""
        parameters = {k: v for k, v in request.items() if k not in NOT_PARAMETERS}
        system = [m["content"] for m in request.get("messages") or () if m.get("role") == "system"]
        return cls(
            model_snapshot=model_snapshot or None,
            system_fingerprint=system_fingerprint or None,
            parameters=json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            system_prompt_sha256=hashlib.sha256("\n".join(system).encode()).hexdigest() if system else None,
        )


#: Provenance's fields, in order: the stores' attributes and columns and the exports' columns.
PROVENANCE_FIELDS = tuple(f.name for f in fields(Provenance))


@dataclass(frozen=True)
class Usage:
    """The stream's last item: the tokens the reply cost and, when the model reports it, what
    produced it (None from a model that cannot say)."""

    prompt_tokens: int
    completion_tokens: int
    provenance: Provenance | None = None


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
        """Yield the reply's text pieces, then exactly one Usage (with the reply's Provenance);
        raises LLMError."""
        ...
