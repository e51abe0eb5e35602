"""Settings, read from environment variables with documented defaults.

Every variable the service reads is declared once in `VARIABLES`, so the docs and the
test that checks template.yaml against the code share one list. Powertools reads its own
variables (POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_LOG_LEVEL).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("CONNECTIONS_TABLE", "chat-connections", "DynamoDB table of open connections (TTL on expires_at)."),
    Variable("CHATS_TABLE", "chat-chats", "DynamoDB table of chats, messages, counters and controls."),
    Variable("DYNAMODB_ENDPOINT_URL", "", "DynamoDB endpoint override (local stack or moto server); empty on AWS."),
    Variable("TICKET_SECRET_ARN", "", "Secrets Manager secret (name or ARN) holding the shared ticket secret."),
    Variable("TICKET_SECRET", "", "The shared ticket secret itself: local development only, never on AWS."),
    Variable("ALLOWED_ORIGINS", "", "Comma-separated exact origins allowed to connect, or * for any."),
    Variable("ALLOW_MISSING_ORIGIN", "true", "Accept connections without an Origin header (tools, load tests)."),
    Variable("CHAT_PAUSED", "false", "Kill switch: true refuses new connections and messages everywhere."),
    Variable("RATE_LIMIT_FRAMES", "20", "Frames one connection may send per window, malformed ones too (API Gateway answers pings)."),
    Variable("RATE_LIMIT_WINDOW_SECONDS", "10", "The window of the per-connection rate limit."),
    Variable("CONNECTION_TTL_SECONDS", "7800", "Seconds a connection record lives (API Gateway caps sockets at 2 h)."),
    Variable("TICKET_MAX_AGE_SECONDS", "86400", "Seconds a chat ticket is accepted after it was minted."),
    Variable("MAX_MESSAGE_CHARS", "4000", "Hard cap on a participant message, whatever a ticket allows."),
    Variable("MAX_CHATS_PER_PARTICIPANT", "5", "Chats one participant may open in one session of an experiment."),
    Variable("TOKEN_BUDGET", "0", "Default experiment-wide token budget (prompt + completion); 0 = unlimited."),
    Variable("REPLY_LEASE_SECONDS", "15", "Seconds a running reply holds its chat unless renewed (every third of it); "
             "a reply whose function died frees the chat within this long, then a retry writes it."),
    Variable("REPLY_QUEUE_WAIT_SECONDS", "300", "Seconds a queued reply holds its chat before it runs; after that a retry may take over."),
    Variable("REPLY_QUEUE_URL", "", "SQS queue of reply jobs, which the reply function consumes (the message function sends)."),
    Variable("WEBSOCKET_URL", "", "The WebSocket API's URL (wss://{domain}/{stage}) that study entries hand to participants."),
    Variable("WEBSOCKET_ENDPOINT", "", "Management API endpoint override; default https://{domain}/{stage}."),
    Variable("OPENAI_BASE_URL", "", "OpenAI-compatible API base URL; empty means OpenAI itself."),
    Variable("OPENAI_API_KEY_SECRET_ARN", "", "Secrets Manager secret (name or ARN) holding the OpenAI API key."),
    Variable("OPENAI_API_KEY", "", "The OpenAI API key itself: local development only, never on AWS."),
    Variable("LLM_TIMEOUT_SECONDS", "60", "Seconds to wait for the model (connect, first token, between tokens)."),
    Variable("LLM_MAX_RETRIES", "2", "Retries with backoff on 429 and 5xx before the first token."),
    Variable("LLM_BREAKER_FAILURES", "5", "Model failures within the window that pause model calls."),
    Variable("LLM_BREAKER_WINDOW_SECONDS", "30", "The window in which model failures are counted."),
    Variable("LLM_BREAKER_COOLDOWN_SECONDS", "20", "Seconds sends stay refused (llm_paused) once the breaker opens; then all go through again."),
    Variable("STREAM_FLUSH_MS", "120", "Buffered reply text is pushed as a delta once this long has passed since the last one "
             "(checked as tokens arrive: while the model pauses, the text waits for its next token)."),
    Variable("STREAM_FLUSH_CHARS", "600", "Buffered characters that trigger a delta at once."),
)

NAMES = frozenset(v.name for v in VARIABLES)
_DEFAULTS = {v.name: v.default for v in VARIABLES}


def _csv(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def allows_origin(allowed: frozenset[str], origin: str) -> bool:
    """ALLOWED_ORIGINS' rule: exact origins only (`https://lab.example.org.evil.net` is not
    `https://lab.example.org`), or * for any."""
    return "*" in allowed or origin in allowed


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


@dataclass(frozen=True)
class Settings:
    connections_table: str
    chats_table: str
    dynamodb_endpoint_url: str | None
    ticket_secret_arn: str | None
    ticket_secret: str | None
    allowed_origins: frozenset[str]
    allow_missing_origin: bool
    paused: bool
    rate_limit_frames: int
    rate_limit_window: float
    connection_ttl: int
    ticket_max_age: int
    max_message_chars: int
    max_chats_per_participant: int
    token_budget: int
    reply_lease_seconds: int
    reply_queue_wait_seconds: int
    reply_queue_url: str | None
    websocket_url: str | None
    websocket_endpoint: str | None
    openai_base_url: str | None
    openai_api_key_secret_arn: str | None
    openai_api_key: str | None
    llm_timeout: float
    llm_max_retries: int
    breaker_failures: int
    breaker_window: float
    breaker_cooldown: float
    stream_flush_seconds: float
    stream_flush_chars: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            assert name in _DEFAULTS, name
            return env.get(name, _DEFAULTS[name]).strip()

        def optional(name: str) -> str | None:
            return get(name) or None

        def integer(name: str, minimum: int = 0) -> int:
            try:
                value = int(get(name))
            except ValueError:
                raise ValueError(f"{name} must be an integer") from None
            if value < minimum:
                raise ValueError(f"{name} must be at least {minimum}")
            return value

        return cls(
            connections_table=get("CONNECTIONS_TABLE"),
            chats_table=get("CHATS_TABLE"),
            dynamodb_endpoint_url=optional("DYNAMODB_ENDPOINT_URL"),
            ticket_secret_arn=optional("TICKET_SECRET_ARN"),
            ticket_secret=optional("TICKET_SECRET"),
            allowed_origins=_csv(get("ALLOWED_ORIGINS")),
            allow_missing_origin=_bool("ALLOW_MISSING_ORIGIN", get("ALLOW_MISSING_ORIGIN")),
            paused=_bool("CHAT_PAUSED", get("CHAT_PAUSED")),
            rate_limit_frames=integer("RATE_LIMIT_FRAMES", 1),
            rate_limit_window=float(integer("RATE_LIMIT_WINDOW_SECONDS", 1)),
            connection_ttl=integer("CONNECTION_TTL_SECONDS", 60),
            ticket_max_age=integer("TICKET_MAX_AGE_SECONDS", 60),
            max_message_chars=integer("MAX_MESSAGE_CHARS", 1),
            max_chats_per_participant=integer("MAX_CHATS_PER_PARTICIPANT", 1),
            token_budget=integer("TOKEN_BUDGET"),
            reply_lease_seconds=integer("REPLY_LEASE_SECONDS", 5),
            reply_queue_wait_seconds=integer("REPLY_QUEUE_WAIT_SECONDS", 5),
            reply_queue_url=optional("REPLY_QUEUE_URL"),
            websocket_url=optional("WEBSOCKET_URL"),
            websocket_endpoint=optional("WEBSOCKET_ENDPOINT"),
            openai_base_url=optional("OPENAI_BASE_URL"),
            openai_api_key_secret_arn=optional("OPENAI_API_KEY_SECRET_ARN"),
            openai_api_key=optional("OPENAI_API_KEY"),
            llm_timeout=float(integer("LLM_TIMEOUT_SECONDS", 1)),
            llm_max_retries=integer("LLM_MAX_RETRIES"),
            breaker_failures=integer("LLM_BREAKER_FAILURES", 1),
            breaker_window=float(integer("LLM_BREAKER_WINDOW_SECONDS", 1)),
            breaker_cooldown=float(integer("LLM_BREAKER_COOLDOWN_SECONDS", 1)),
            stream_flush_seconds=integer("STREAM_FLUSH_MS") / 1000,
            stream_flush_chars=integer("STREAM_FLUSH_CHARS", 1),
        )
