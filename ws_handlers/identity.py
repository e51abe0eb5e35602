"""Who is connected, and the chat a ticket opens: plain records, standard library only.

The cryptography that proves them (a signed connect token, an encrypted chat ticket) is
`tickets`, which the connect function and the experiment server import; the core (`store`,
`protocol`, `chat`) needs only these records, so it never loads jwt or cryptography.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .bot import Bot

_CODE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def valid_code(value: object) -> bool:
    """Whether `value` can be a participant code, experiment or session name in a token."""
    return isinstance(value, str) and _CODE.fullmatch(value) is not None


@dataclass(frozen=True)
class Identity:
    """Who is connected: a participant in one session of one experiment."""

    participant: str
    experiment: str
    session: str

    def __post_init__(self) -> None:
        for name in ("participant", "experiment", "session"):
            if not valid_code(getattr(self, name)):
                raise ValueError(f"{name} must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")


@dataclass(frozen=True)
class Ticket:
    """An opened chat ticket: whose chat, which chat, and the bot that answers in it."""

    identity: Identity
    chat_key: str
    bot: Bot


class CredentialError(Exception):
    """A token or ticket was refused. `code` is the protocol's error code."""

    code = "invalid_token"


#: Opens a chat ticket (the `start` frame's), raising CredentialError: `tickets.open_ticket` with
#: the deployment's secret and maximum age, given to the chat domain by the composition root.
TicketOpener = Callable[[str], Ticket]
