"""Enrolment: a participant's entry into a study, and the arm that stays theirs.

The entry endpoint's domain, free of HTTP and storage details. A participant enters with the
study's id and the participant id the survey platform knows (Prolific's PID, Qualtrics'
ResponseID); the first entry takes the next place in the study's balanced sequence and records
its arm with a conditional write, so a refresh, a second tab or a retried request gets the same
arm back.

The place comes from an atomic counter, not from a read-then-conditional-write of the count: a
classroom entering within one second would otherwise conflict on the study's one item and
retry in a queue. The price is a hole in the sequence when one participant's two tabs enter
at the same moment (the second's place goes unused), which leaves a block one short;
docs/surveys.md says so.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .controls import obeyed
from .store import Conflict, ControlItems
from .study import EntryMode, Study, arm_for

#: Names of the platform ids an entry may record beside the participant id (ResponseID,
#: PROLIFIC_PID, STUDY_ID, SESSION_ID, a lab's own), and how many.
_ID_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_ID_VALUE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_PLATFORM_IDS = 8


class EntryRefused(Exception):
    """The entry is refused; `code` goes to the caller (docs/surveys.md lists them), `status` is HTTP's.
    `study` is the study the refusal was decided against (None before it was read): the endpoint
    lets that study's own pages read the code."""

    def __init__(self, status: int, code: str, study: Study | None = None) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.study = study


@dataclass(frozen=True)
class StudyRecord:
    """A registered study as the store keeps it: the definition and what only the service knows."""

    study: Study
    #: the secret the assignment order is drawn from (never leaves the service)
    seed: bytes
    #: SHA-256 of the study key that server-to-server entries present (the key itself is shown once)
    key_sha256: str
    #: places taken so far (`StudyStore.take_place`): entries, made-up ids and refused ones past the cap included
    entries: int = 0


@dataclass(frozen=True)
class Assignment:
    study: str
    participant: str
    arm: str
    #: the place in the study's sequence
    index: int
    entered_at: float
    #: the other ids the platform sent (ResponseID, PROLIFIC_PID, ...), for the export's join
    platform_ids: Mapping[str, str] = field(default_factory=dict)


class StudyStore(Protocol):
    def get_study(self, study_id: str) -> StudyRecord | None: ...

    def get_assignment(self, study_id: str, participant: str) -> Assignment | None: ...

    def take_place(self, study_id: str) -> int:
        """The next place in the study's sequence (0, 1, ...): an atomic increment, never the same twice."""
        ...

    def put_assignment(self, assignment: Assignment) -> None:
        """Record it unless the participant has one (`Conflict`): a conditional write."""
        ...


class StudyAdmin(StudyStore, Protocol):
    """The operator's side of the study store (`chat-ops study`); never on a request path."""

    def put_study(self, record: StudyRecord) -> None:
        """Register a new study (its entries start at 0); `Conflict` when its id is taken."""
        ...

    def replace_study_definition(self, study: Study) -> None:
        """Replace the definition, keeping the seed, the key, the entries and the assignments;
        `Conflict` when there is no such study."""
        ...

    def set_study_key(self, study_id: str, key_sha256: str) -> None:
        """Replace the key's hash (the old key stops working at once); `Conflict` when there is no such study."""
        ...

    def assignments(self, study_id: str, page_size: int = 500) -> Iterator[Assignment]:
        """The study's assignments, in participant order, read `page_size` at a time."""
        ...


@dataclass(frozen=True)
class Entry:
    """What an entry request says, once the HTTP request is read."""

    study: str
    participant: str
    origin: str | None = None
    #: the study key (server-to-server entry); None from a page
    key: str | None = None
    platform_ids: Mapping[str, str] = field(default_factory=dict)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Enrolment:
    """Decides an entry: who may enter, and which arm is theirs.

    `controls_for(experiment)` and `on_allowlist(experiment, participant)` are the store's, read
    as for a socket (`admission.admit`): a study is an experiment named by its id, so `chat-ops
    pause` and `chat-ops allowlist` apply to it unchanged.
    """

    def __init__(
        self,
        store: StudyStore,
        *,
        controls_for: Callable[[str], ControlItems],
        on_allowlist: Callable[[str, str], bool],
        clock: Callable[[], float],
    ) -> None:
        self.store, self.controls_for, self.on_allowlist, self.clock = store, controls_for, on_allowlist, clock

    def enter(self, entry: Entry) -> tuple[Study, Assignment]:
        record = self.store.get_study(entry.study)
        if record is None:
            raise EntryRefused(404, "study_unknown")
        study = record.study
        try:
            return self._enter(record, entry)
        except EntryRefused as exc:
            exc.study = study
            raise

    def _enter(self, record: StudyRecord, entry: Entry) -> tuple[Study, Assignment]:
        study = record.study
        self._check(record, entry)
        existing = self.store.get_assignment(study.id, entry.participant)
        if existing is not None:
            return study, existing
        index = self.store.take_place(study.id)
        if index >= study.max_entries:
            raise EntryRefused(403, "study_full")
        assignment = Assignment(
            study=study.id,
            participant=entry.participant,
            arm=arm_for(study, record.seed, index).name,
            index=index,
            entered_at=self.clock(),
            platform_ids=dict(entry.platform_ids),
        )
        try:
            self.store.put_assignment(assignment)
        except Conflict:  # the participant's other tab entered at the same moment: theirs stands
            existing = self.store.get_assignment(study.id, entry.participant)
            if existing is None:
                raise
            return study, existing
        return study, assignment

    def _check(self, record: StudyRecord, entry: Entry) -> None:
        study = record.study
        if study.entry is EntryMode.SERVER:
            if entry.key is None or not hmac.compare_digest(key_sha256(entry.key), record.key_sha256):
                raise EntryRefused(401, "study_key_invalid")
        elif not study.accepts_origin(entry.origin):
            raise EntryRefused(403, "origin_not_allowed")
        if not study.accepts_participant(entry.participant):
            raise EntryRefused(400, "participant_invalid")
        if len(entry.platform_ids) > MAX_PLATFORM_IDS or not all(
            isinstance(k, str) and isinstance(v, str) and _ID_NAME.fullmatch(k) and _ID_VALUE.fullmatch(v)
            for k, v in entry.platform_ids.items()
        ):
            raise EntryRefused(400, "platform_ids_invalid")
        controls = obeyed(self.controls_for(study.id))
        if controls.allowlist and not self.on_allowlist(study.id, entry.participant):
            raise EntryRefused(403, "participant_not_allowed")
        if controls.paused:
            raise EntryRefused(403, "paused")
