"""Connect tokens and chat tickets, shared by the experiment server and the service.

The experiment server and the service share one secret. From it two keys are derived
(HKDF), one per purpose, so a token can never pass for a ticket or the reverse:

* the **connect token** is a short JWT (HS256) in the WebSocket URL's query string; it
  proves who the participant is (participant, experiment, session) until it expires;
* the **chat ticket** is a Fernet token (AES-CBC + HMAC): encrypted and authenticated, it
  carries the chat key and the bot (model, system prompt, limits), which the browser can
  neither read nor change. The bot is compressed JSON, so that a long system prompt in any
  script still fits in the one WebSocket frame that carries the ticket (`start`).

This module imports only the standard library, `cryptography` and `jwt`, because the
experiment server (oTree) imports it to mint. The records it mints and opens (`Identity`,
`Ticket`) are the core's, in `identity`, and are imported from here too.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import time
import zlib
from dataclasses import dataclass

import jwt
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .bot import Bot
from .gateway_limits import MAX_CLIENT_FRAME_BYTES
from .identity import CredentialError, Identity, Ticket, valid_code

__all__ = [  # the records are the core's (identity.py); minting and opening them is this module's
    "CredentialError", "Identity", "Ticket", "TicketExpired", "TicketInvalid", "TicketTooLarge", "TokenExpired",
    "TokenInvalid", "mint_ticket", "mint_token", "open_ticket", "start_frame", "valid_code", "verify_token",
]

TOKEN_AUDIENCE = "llm-chat:connect"
DEFAULT_TOKEN_TTL = 6 * 3600  #: seconds a connect token stays valid
DEFAULT_TICKET_MAX_AGE = 24 * 3600  #: seconds a ticket is accepted after minting
MIN_SECRET_BYTES = 32
_MAX_TOKEN_CHARS = 2048
_MAX_TICKET_CHARS = MAX_CLIENT_FRAME_BYTES  #: a longer ticket could never have been sent
#: What a ticket's plaintext starts with. Tickets minted first held the JSON itself, which
#: starts with "{"; they are still read until they expire. Now a format byte, then the JSON
#: (UTF-8, compact) compressed with zlib.
_LEGACY_JSON = b"{"
_ZLIB_JSON = b"\x01"
#: Bound on a ticket's decompressed JSON, so that a decompression bomb stops here. A valid
#: bot takes at most about 150 KB (every text field at its maximum, escaped at 6 bytes a
#: character); a valid ticket, at most 32 KB compressed.
_MAX_PAYLOAD_BYTES = 256 * 1024
#: What minted credentials are made of (base64url; a JWT's three segments, Fernet's padding).
#: Anything else is refused before decoding: a lone surrogate cannot even be encoded, and
#: base64 decoding would silently skip characters outside its alphabet.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")
_TICKET_SHAPE = re.compile(r"[A-Za-z0-9_\-]+=*")
#: Clock difference tolerated between the experiment server, which mints with its own clock,
#: and this service: a token's `iat` may be ahead, its `exp` just past, by this many seconds.
#: (Fernet tickets get the same 60 s for timestamps ahead, from `cryptography`.)
CLOCK_SKEW_SECONDS = 60


class TokenInvalid(CredentialError):
    code = "invalid_token"


class TokenExpired(CredentialError):
    code = "token_expired"


class TicketInvalid(CredentialError):
    code = "invalid_ticket"


class TicketExpired(CredentialError):
    code = "ticket_expired"


class TicketTooLarge(ValueError):
    """Minting refused: the ticket's `start` frame would exceed API Gateway's frame limit,
    which closes the participant's socket instead of delivering it."""


@dataclass(frozen=True)
class _Keys:
    token: bytes
    ticket: Fernet


def _secret_bytes(secret: str | bytes) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"the shared secret must be at least {MIN_SECRET_BYTES} bytes")
    return raw


@functools.lru_cache(maxsize=8)
def _keys(secret: bytes) -> _Keys:
    def derive(purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)

    return _Keys(
        token=derive(b"llm-chat connect token v1"),
        ticket=Fernet(base64.urlsafe_b64encode(derive(b"llm-chat chat ticket v1"))),
    )


def mint_token(
    secret: str | bytes, identity: Identity, *, ttl: int = DEFAULT_TOKEN_TTL, now: float | None = None
) -> str:
    """A connect token for `identity`, valid for `ttl` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": identity.participant,
        "xp": identity.experiment,
        "ses": identity.session,
        "aud": TOKEN_AUDIENCE,
        "iat": issued,
        "exp": issued + int(ttl),
    }
    return jwt.encode(claims, _keys(_secret_bytes(secret)).token, algorithm="HS256")


def verify_token(secret: str | bytes, token: object, *, now: float | None = None) -> Identity:
    """The identity a connect token proves; raises TokenInvalid or TokenExpired."""
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(token):
        raise TokenInvalid("missing or malformed token")
    options = {"require": ["sub", "xp", "ses", "exp", "aud"], "verify_exp": now is None}
    try:
        claims = jwt.decode(
            token,
            _keys(_secret_bytes(secret)).token,
            algorithms=["HS256"],
            audience=TOKEN_AUDIENCE,
            options=options,
            leeway=CLOCK_SKEW_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the token has expired") from None
    except jwt.PyJWTError:
        raise TokenInvalid("the token is not valid") from None
    if now is not None and not (isinstance(claims["exp"], int) and claims["exp"] > now):
        raise TokenExpired("the token has expired")
    try:
        return Identity(claims["sub"], claims["xp"], claims["ses"])
    except ValueError:
        raise TokenInvalid("the token is not valid") from None


def start_frame(ticket: str) -> bytes:
    """The `start` frame carrying `ticket`, byte for byte as the client sends it (JSON.stringify)."""
    return json.dumps({"action": "start", "ticket": ticket}, separators=(",", ":")).encode()


def mint_ticket(
    secret: str | bytes, identity: Identity, chat_key: str, bot: Bot, *, now: float | None = None
) -> str:
    """An encrypted chat ticket binding `bot` to this participant's chat `chat_key`.

    Raises TicketTooLarge (a ValueError naming the system prompt's size) when the ticket's
    `start` frame would not fit in one API Gateway frame.
    """
    if not valid_code(chat_key):
        raise ValueError("chat_key must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")
    payload = {
        "v": 1,
        "p": identity.participant,
        "x": identity.experiment,
        "s": identity.session,
        "k": chat_key,
        "b": bot.to_dict(),
    }
    data = _ZLIB_JSON + zlib.compress(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(), 9)
    fernet = _keys(_secret_bytes(secret)).ticket
    ticket = (fernet.encrypt(data) if now is None else fernet.encrypt_at_time(data, int(now))).decode()
    size = len(start_frame(ticket))
    if size > MAX_CLIENT_FRAME_BYTES:
        prompt, opening = bot.system_prompt, bot.opening_message
        sizes = f"The system prompt is {len(prompt):,} characters ({len(prompt.encode()):,} bytes of UTF-8)"
        if opening:
            sizes += f", the opening message {len(opening):,} characters ({len(opening.encode()):,} bytes)"
        raise TicketTooLarge(
            f"bot {bot.name!r}: its chat ticket would make a {size:,}-byte start frame, over API Gateway's "
            f"limit of {MAX_CLIENT_FRAME_BYTES:,} bytes per frame (the socket would be closed). {sizes}: "
            "shorten them (docs/protocol.md, Sizes, gives rough lengths that fit)."
        )
    return ticket


def open_ticket(
    secret: str | bytes, ticket: object, *, max_age: int = DEFAULT_TICKET_MAX_AGE, now: float | None = None
) -> Ticket:
    """Decrypt and check a ticket; raises TicketInvalid or TicketExpired."""
    if not isinstance(ticket, str) or not 0 < len(ticket) <= _MAX_TICKET_CHARS or not _TICKET_SHAPE.fullmatch(ticket):
        raise TicketInvalid("missing or malformed ticket")
    fernet = _keys(_secret_bytes(secret)).ticket
    current = int(time.time() if now is None else now)
    try:
        data = fernet.decrypt_at_time(ticket.encode(), ttl=max_age, current_time=current)
    except InvalidToken:
        # Fernet reports expiry and forgery alike; tell them apart by the signed timestamp.
        try:
            issued = fernet.extract_timestamp(ticket.encode())
        except (InvalidToken, ValueError, TypeError):
            raise TicketInvalid("the ticket is not valid") from None
        if issued + max_age < current:
            raise TicketExpired("the ticket has expired") from None
        raise TicketInvalid("the ticket is not valid") from None
    try:
        payload = json.loads(_payload(data))
        if type(payload.get("v")) is not int or payload["v"] != 1:  # True == 1 in Python
            raise ValueError("unknown ticket version")
        identity = Identity(payload["p"], payload["x"], payload["s"])
        chat_key = payload["k"]
        if not valid_code(chat_key):
            raise ValueError("bad chat key")
        return Ticket(identity, chat_key, Bot.from_dict(payload["b"]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, zlib.error):
        raise TicketInvalid("the ticket is not valid") from None


def _payload(data: bytes) -> bytes:
    """A ticket's JSON: inflated (at most _MAX_PAYLOAD_BYTES), or as stored by the first format."""
    if data.startswith(_LEGACY_JSON):
        return data
    if not data.startswith(_ZLIB_JSON):
        raise ValueError("unknown ticket format")
    inflater = zlib.decompressobj()
    json_bytes = inflater.decompress(data[len(_ZLIB_JSON) :], _MAX_PAYLOAD_BYTES)
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ValueError("ticket payload too large, truncated or followed by data")
    return json_bytes
