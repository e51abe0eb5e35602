"""POST /studies/{study}/entry: credentials for a participant of a study (HTTP API, payload 2.0).

The survey platform's server (with the study key) or the survey page (with the participant id
from its URL) asks; the answer is what an oTree server mints: the WebSocket URL, a connect token
and a chat ticket, three opaque strings that name neither the arm nor the bot.

The body is JSON or a form (`participant=...&ResponseID=...`): a page posts a form, which is a
CORS "simple request" (no preflight), and the answer carries Access-Control-Allow-Origin only
for the study's own origins, a refusal decided against the study too (so the survey page can say
why: `study_full`, `paused`, ...). Qualtrics' Web Service element sends either.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl

from .admission import header
from .enrolment import Enrolment, Entry, EntryRefused
from .entry import lambda_entry
from .identity import Identity
from .observability import logger, metrics
from .runtime import ConfigurationError, services
from .store import StoreThrottled
from .study import Study
from .tickets import mint_ticket, mint_token

#: the chat key of a study's chat: one chat per participant and study
CHAT_KEY = "study"
#: the session part of a study participant's identity: the token is signed, not encrypted, so it
#: must not name the arm
SESSION = "entry"
MAX_BODY_BYTES = 4096


def _body(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(raw).decode("utf-8")
        except ValueError:
            raise EntryRefused(400, "body_invalid") from None
    if len(raw.encode("utf-8")) > MAX_BODY_BYTES:
        raise EntryRefused(413, "body_too_large")
    content_type = (header(event.get("headers"), "content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = json.loads(raw or "{}")
        except (ValueError, RecursionError):  # 4 KB of '[' nests deeper than the decoder goes
            raise EntryRefused(400, "body_invalid") from None
        if not isinstance(data, dict):
            raise EntryRefused(400, "body_invalid")
        return data
    try:
        return dict(parse_qsl(raw, keep_blank_values=True, max_num_fields=16))
    except ValueError:  # more fields than a participant id and MAX_PLATFORM_IDS others
        raise EntryRefused(400, "platform_ids_invalid") from None


def read_entry(event: dict[str, Any]) -> Entry:
    """The entry an HTTP API event asks for, or EntryRefused (400) when it says nothing usable."""
    body = _body(event)
    participant = body.pop("participant", None)
    if not isinstance(participant, str):
        raise EntryRefused(400, "participant_invalid")
    ids = body.pop("ids", None) if isinstance(body.get("ids"), dict) else body
    authorization = header(event.get("headers"), "authorization") or ""
    scheme, _, key = authorization.partition(" ")
    return Entry(
        study=(event.get("pathParameters") or {}).get("study") or "",
        participant=participant,
        origin=header(event.get("headers"), "origin"),
        key=key.strip() if scheme.lower() == "bearer" and key.strip() else None,
        platform_ids=ids,
    )


def _answer(status: int, body: dict[str, Any], origin: str | None) -> dict[str, Any]:
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    if origin:
        headers |= {"access-control-allow-origin": origin, "vary": "Origin"}
    return {"statusCode": status, "headers": headers, "body": json.dumps(body)}


def refused(event: dict[str, Any], exc: Exception) -> dict[str, Any] | None:
    """A refusal as its status and code, a store that stayed throttled as a retryable 503; anything
    else raises (a Lambda error, which API Gateway answers 500 without detail)."""
    if isinstance(exc, StoreThrottled):
        logger.warning("store throttled")
        return _answer(503, {"error": "throttled"}, None)
    if not isinstance(exc, EntryRefused):
        return None
    logger.info("entry refused", extra={"status": exc.status, "code": exc.code})
    metrics.add_metric(name="EntriesRefused", unit="Count", value=1)
    return _answer(exc.status, {"error": exc.code}, _readable_by(exc.study, header(event.get("headers"), "origin")))


def _readable_by(study: Study | None, origin: str | None) -> str | None:
    """The origin that may read the answer (Access-Control-Allow-Origin): one of the study's own, else none."""
    return origin if study is not None and origin and study.accepts_origin(origin) else None


@lambda_entry(answer=refused)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    svc = services()
    store = svc.store
    entry = read_entry(event)
    if svc.settings.paused:
        raise EntryRefused(403, "paused")
    if not svc.settings.websocket_url:  # before anything is assigned
        raise ConfigurationError("WEBSOCKET_URL is not set")
    enrolment = Enrolment(store, controls_for=store.get_controls, on_allowlist=store.on_allowlist, clock=svc.clock)
    study, assignment = enrolment.enter(entry)
    identity = Identity(participant=assignment.participant, experiment=study.id, session=SESSION)
    secret = svc.ticket_secret()
    bot = study.arm(assignment.arm).bot
    logger.info("entered", extra={"study": study.id, "index": assignment.index})
    metrics.add_metric(name="Entries", unit="Count", value=1)
    return _answer(200, {
        "url": svc.settings.websocket_url,
        "token": mint_token(secret, identity),
        "ticket": mint_ticket(secret, identity, CHAT_KEY, bot),
        "min_messages": study.min_messages,
    }, _readable_by(study, entry.origin))
