"""Who may open a socket: the $connect decision, free of Lambda and storage details."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .config import Settings, allows_origin
from .controls import obeyed
from .errors import Refused
from .identity import CredentialError, Identity
from .store import ControlItems
from .tickets import verify_token


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by case-insensitive name (API Gateway keeps the client's spelling)."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def check_origin(settings: Settings, origin: str | None) -> None:
    """The handshake's Origin against ALLOWED_ORIGINS (`config.allows_origin`: exact matches only)."""
    if origin is None:
        if not settings.allow_missing_origin:
            raise Refused(403, "origin_required")
        return
    if allows_origin(settings.allowed_origins, origin):
        return
    raise Refused(403, "origin_not_allowed")


def admit(
    settings: Settings,
    secret: str,
    token: str | None,
    origin: str | None,
    controls_for: Callable[[str], ControlItems],
    on_allowlist: Callable[[str, str], bool],
) -> Identity:
    """The participant's identity if the socket may open; raises Refused otherwise.

    Only a valid token leads to reads: `controls_for(experiment)` (`Store.get_controls`: the pause
    switches and the allowlist flag, one request), then `on_allowlist(experiment, participant)` (one read by key)
    only for an experiment whose allowlist is on. An open experiment costs no extra read, and a
    long allowlist is never read whole.
    """
    check_origin(settings, origin)
    try:
        identity = verify_token(secret, token)
    except CredentialError as exc:
        raise Refused(401, exc.code) from None
    if settings.paused:
        raise Refused(403, "paused")
    controls = obeyed(controls_for(identity.experiment))
    if controls.allowlist and not on_allowlist(identity.experiment, identity.participant):
        raise Refused(403, "participant_not_allowed")
    if controls.paused:
        raise Refused(403, "paused")
    return identity
