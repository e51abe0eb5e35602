"""A study: bots, arms and entry rules that a survey platform without a server relies on.

oTree mints tickets on its own server, so its bots never leave it. Qualtrics, LimeSurvey and
Prolific have no such server: a study is registered on the service instead (`chat-ops study
create`), and its bots and arms stay there. The survey page only ever holds opaque strings.

A study file is TOML (the standard library reads it) because researchers edit it by hand:

    id = "tutor-2026"
    entry = "server"                 # or "link"
    origins = ["https://yourlab.eu.qualtrics.com"]
    min_messages = 3                 # the snippet holds Next until then
    max_entries = 600                # participants the study admits, made-up ids included

    [[arms]]
    name = "friendly"
    bot = "ada_friendly"
    weight = 1

    [bots.ada_friendly]
    model = "gpt-4o-mini"
    system_prompt = "You are Ada, ..."

Standard library only: the service, the operator's CLI and the tests read it.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .bot import Bot
from .identity import valid_code

_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
#: What a participant id from a platform may look like unless the study says more: Prolific's
#: PID (24 hex digits), Qualtrics' ResponseID (R_ and 15 characters), a lab's own codes.
DEFAULT_PARTICIPANT_PATTERN = r"[A-Za-z0-9_\-]{1,64}"
MAX_ARMS = 32
MAX_WEIGHT = 100
MAX_ENTRIES = 1_000_000


class StudyError(ValueError):
    """A study file or definition that cannot be registered; the message says what to fix."""


class EntryMode(str, Enum):
    """How a participant gets credentials (docs/surveys.md has the threat model of each)."""

    #: the survey platform's server calls the entry endpoint with the study key, which the
    #: participant never sees (Qualtrics' Web Service element, a LimeSurvey plugin)
    SERVER = "server"
    #: the page calls it with the id from its URL (Prolific PID, ResponseID); bounded by the
    #: id pattern, the study's allowlist if it has one (`chat-ops allowlist`, as for any
    #: experiment), `max_entries`, the budget, rate limits and origins
    LINK = "link"


@dataclass(frozen=True)
class Arm:
    name: str
    bot: Bot
    weight: int = 1


@dataclass(frozen=True)
class Study:
    id: str
    arms: tuple[Arm, ...]
    entry: EntryMode
    origins: tuple[str, ...]
    max_entries: int
    min_messages: int = 0
    participant_pattern: str = DEFAULT_PARTICIPANT_PATTERN
    title: str = ""

    def arm(self, name: str) -> Arm:
        """The arm of this name (an assignment names one), or StudyError."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise StudyError(f"study {self.id} has no arm {name!r}")

    def accepts_participant(self, participant: str) -> bool:
        """Whether an id from the platform has the study's shape and can be a token's participant
        code (checked first: it bounds the length before the researcher's pattern runs on an id
        that may be anyone's)."""
        return valid_code(participant) and re.fullmatch(self.participant_pattern, participant) is not None

    def accepts_origin(self, origin: str | None) -> bool:
        return origin is not None and origin in self.origins


def load_study(path: Path) -> Study:
    """Read and check a study file; StudyError says what is wrong, with the file's name."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StudyError(f"{path}: {exc}") from None
    try:
        return study_from_dict(data)
    except StudyError as exc:
        raise StudyError(f"{path}: {exc}") from None


def study_from_dict(data: Any) -> Study:
    """Build a study from plain data (a TOML file's, or the store's), checking every field."""
    if not isinstance(data, dict):
        raise StudyError("a study must be a table")
    known = {"id", "title", "entry", "origins", "min_messages", "max_entries", "participant_pattern", "arms", "bots"}
    if unknown := sorted(set(data) - known):
        raise StudyError(f"unknown fields {unknown}; a study has {sorted(known)}")
    study_id = data.get("id")
    if not isinstance(study_id, str) or not _ID.fullmatch(study_id):
        raise StudyError("id must be 1 to 64 letters, digits, '_' or '-'")
    try:
        entry = EntryMode(data.get("entry", "server"))
    except ValueError:
        raise StudyError("entry must be 'server' or 'link'") from None
    bots = _bots(data.get("bots"))
    return Study(
        id=study_id,
        title=_text(data.get("title", ""), "title", 200),
        arms=_arms(data.get("arms"), bots),
        entry=entry,
        origins=_origins(data.get("origins")),
        max_entries=_count(data.get("max_entries"), "max_entries", 1, MAX_ENTRIES),
        min_messages=_count(data.get("min_messages", 0), "min_messages", 0, 1000),
        participant_pattern=_pattern(data.get("participant_pattern", DEFAULT_PARTICIPANT_PATTERN)),
    )


def study_to_dict(study: Study) -> dict[str, Any]:
    """The plain data `study_from_dict` reads back (what the store keeps)."""
    bots = {arm.bot.name: {k: v for k, v in arm.bot.to_dict().items() if k != "name"} for arm in study.arms}
    return {
        "id": study.id,
        "title": study.title,
        "entry": study.entry.value,
        "origins": list(study.origins),
        "max_entries": study.max_entries,
        "min_messages": study.min_messages,
        "participant_pattern": study.participant_pattern,
        "arms": [{"name": a.name, "bot": a.bot.name, "weight": a.weight} for a in study.arms],
        "bots": bots,
    }


def arm_for(study: Study, seed: bytes, index: int) -> Arm:
    """The arm of the `index`-th participant (0, 1, ...) to enter: balanced, shuffled blocks.

    Each block holds every arm `weight` times in an order drawn from HMAC(seed, block number),
    so the sequence needs no storage beyond the study's entry counter, cannot be predicted
    without the seed (kept on the service), and after every complete block the arms are
    exactly in their weights' proportions, as oTree's app assigns treatments.
    """
    if index < 0:
        raise ValueError("index must be 0 or more")
    block = [arm for arm in study.arms for _ in range(arm.weight)]
    number, position = divmod(index, len(block))
    digest = hmac.new(seed, f"{study.id}:block:{number}".encode(), hashlib.sha256).digest()
    random.Random(digest).shuffle(block)
    return block[position]


def _bots(data: Any) -> dict[str, Bot]:
    if not isinstance(data, dict) or not data:
        raise StudyError("bots must be a table of at least one bot: [bots.NAME]")
    bots = {}
    for name, fields in data.items():
        if not isinstance(fields, dict):
            raise StudyError(f"bots.{name} must be a table")
        try:
            bots[name] = Bot.from_dict({**fields, "name": name})
        except ValueError as exc:
            raise StudyError(f"bots.{name}: {exc}") from None
    return bots


def _arms(data: Any, bots: dict[str, Bot]) -> tuple[Arm, ...]:
    if not isinstance(data, list) or not 0 < len(data) <= MAX_ARMS:
        raise StudyError(f"arms must be a list of 1 to {MAX_ARMS} [[arms]] tables")
    arms: list[Arm] = []
    for i, arm in enumerate(data):
        if not isinstance(arm, dict) or set(arm) - {"name", "bot", "weight"}:
            raise StudyError(f"arms[{i}] must be a table of name, bot and weight")
        name = arm.get("name")
        if not isinstance(name, str) or not _ID.fullmatch(name):
            raise StudyError(f"arms[{i}].name must be 1 to 64 letters, digits, '_' or '-'")
        if name in {a.name for a in arms}:
            raise StudyError(f"two arms are named {name!r}")
        if arm.get("bot") not in bots:
            raise StudyError(f"arms[{i}].bot must name one of the bots: {sorted(bots)}")
        weight = _count(arm.get("weight", 1), f"arms[{i}].weight", 1, MAX_WEIGHT)
        arms.append(Arm(name=name, bot=bots[arm["bot"]], weight=weight))
    if unused := sorted(set(bots) - {a.bot.name for a in arms}):
        raise StudyError(f"bots {unused} are in no arm")
    return tuple(arms)


def _origins(data: Any) -> tuple[str, ...]:
    """Pages that may open the chat, as browsers send them in Origin: scheme://host[:port]."""
    if not isinstance(data, list) or not data:
        raise StudyError("origins must list the survey's page origins, e.g. ['https://yourlab.eu.qualtrics.com']")
    for origin in data:
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if (
            parts is None
            or parts.scheme not in ("https", "http")
            or not parts.hostname
            or f"{parts.scheme}://{parts.netloc}" != origin
            or (parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1"))
        ):
            raise StudyError(f"origin {origin!r} must be https://host[:port] (http only for localhost)")
    return tuple(data)


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise StudyError("participant_pattern must be a regular expression of 1 to 200 characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise StudyError(f"participant_pattern is not a regular expression: {exc}") from None
    return value


def _count(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StudyError(f"{name} must be an integer from {low} to {high}")
    return value


def _text(value: Any, name: str, most: int) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise StudyError(f"{name} must be a string of at most {most} characters")
    return value
