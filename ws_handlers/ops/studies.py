"""`chat-ops study create|show|pause|resume|rotate-key|export`: studies for survey platforms (docs/surveys.md).

A study is registered from its TOML file: checked field by field, with a seed for its assignment
order and a study key that only the survey platform's server should hold. The key is printed once
and stored hashed; `rotate-key` replaces it. The seed never leaves the store. A study is an
experiment named by its id, so pause, resume, the budget and allowlists are the experiment's.

The export writes two CSV files into a directory: `messages.csv`, one row per message with the
study, arm and platform ids beside export.py's columns, and `participants.csv`, one row per
assigned participant (arm, place, platform ids, messages sent, first and last activity, completed:
sent at least the study's min_messages), to merge with the survey's own export by ResponseID or
PROLIFIC_PID. The assignments are held in memory during an export (one small record per
participant); messages stream page by page as in `chat-ops export`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..config import allows_origin
from ..enrolment import Assignment, StudyRecord, key_sha256
from ..identity import Identity
from ..model import PROVENANCE_FIELDS
from ..store import Conflict
from ..study import Study, StudyError, load_study, study_to_dict
from ..tickets import TicketTooLarge, mint_ticket
from . import OpsError, export
from .targets import Target

MESSAGE_COLUMNS = ("study", "arm", "participant", "bot", "seq", "role", "text", "created_at", "created_at_epoch",
                   "latency_ms", "prompt_tokens", "completion_tokens", "model", "chat_id", *PROVENANCE_FIELDS)
PARTICIPANT_COLUMNS = ("study", "participant", "arm", "place", "entered_at", "messages_sent", "first_activity",
                       "last_activity", "completed")


def _record(target: Target, study_id: str) -> StudyRecord:
    record = target.store.get_study(study_id)
    if record is None:
        raise OpsError(f"no study {study_id!r} at {target.where} (chat-ops study create FILE registers one)")
    return record


def _new_key() -> str:
    return secrets.token_urlsafe(32)


def _print_key(study_id: str, key: str) -> None:
    print(f"\nThe study key of {study_id!r} (shown this once; stored only hashed):\n\n    {key}\n\n"
          "The survey platform's server sends it with each entry, never the participant's page:\n"
          f"    POST {{EntryUrl}}/studies/{study_id}/entry\n    Authorization: Bearer {key}\n"
          "(EntryUrl: `make deploy`'s outputs; the local stack prints it.) Only entry = \"server\" studies "
          "need it; `chat-ops study rotate-key` replaces it.")


def check_origins(study: Study, target: Target, allow_mismatch: bool) -> None:
    """The study's page origins must be in the deployment's AllowedOrigins too: the entry would
    answer such a page (its own `origins`), take a place and assign an arm, and then the socket's
    $connect would refuse the page (`origin_not_allowed`), a participant who cannot chat.
    Refused (OpsError) unless `allow_mismatch`, which only warns; a target whose AllowedOrigins
    cannot be read (a bare DynamoDB endpoint) gets a note."""
    if target.allowed_origins is None:
        print(f"note: the origins of {study.id!r} ({', '.join(study.origins)}) were not checked against the "
              f"deployment's AllowedOrigins: {target.where} does not say it; every one must be there",
              file=sys.stderr)
        return
    allowed = [o.strip() for o in target.allowed_origins.split(",") if o.strip()]
    missing = [o for o in study.origins if not allows_origin(frozenset(allowed), o)]  # $connect's own rule
    if not missing:
        return
    fix = target.change_origins.replace("{origins}", ",".join(allowed + missing))
    problem = (f"the origins {', '.join(missing)} of study {study.id!r} are not in the AllowedOrigins of "
               f"{target.where} ({target.allowed_origins or 'empty'}): their pages would enter and then be refused "
               f"the chat (origin_not_allowed); {fix}")
    if not allow_mismatch:
        raise OpsError(f"{problem}; or --allow-origin-mismatch to register it before that; nothing was registered", 2)
    print(f"warning: {problem}, before participants enter", file=sys.stderr)


def cmd_create(args: argparse.Namespace, target: Target) -> int:
    try:
        study = load_study(args.file)
    except StudyError as exc:
        raise OpsError(f"{exc}; nothing was registered", 2) from None
    probe = Identity("p" * 64, study.id, "entry")  # the longest a participant id may be
    for arm in study.arms:
        try:
            mint_ticket(secrets.token_hex(32), probe, "study", arm.bot)
        except TicketTooLarge as exc:
            raise OpsError(f"{args.file}: bots.{arm.bot.name}: {exc}; nothing was registered", 2) from None
    check_origins(study, target, args.allow_origin_mismatch)
    store = target.store
    if args.replace_definition:
        old = _record(target, study.id)
        store.replace_study_definition(study)
        changed = [(a.name, a.weight) for a in old.study.arms] != [(a.name, a.weight) for a in study.arms]
        note = (" The arms or weights changed: participants who entered keep their arms; new ones follow "
                "the new blocks from their place on, so the arms balance only within each definition's places."
                if changed else "")
        print(f"study {study.id!r}: definition replaced (seed, key, entries and assignments kept) "
              f"[{target.where}].{note}")
        return 0
    key = _new_key()
    try:
        store.put_study(StudyRecord(study, secrets.token_bytes(32), key_sha256(key)))
    except Conflict:
        raise OpsError(f"study {study.id!r} exists at {target.where}: --replace-definition to change its "
                       "definition (keeping its assignments), or choose another id", 2) from None
    arms = ", ".join(f"{a.name} (bot {a.bot.name}, weight {a.weight})" for a in study.arms)
    print(f"study {study.id!r} registered [{target.where}]: entry {study.entry.value}, arms {arms}, "
          f"at most {study.max_entries:,} participants")
    _print_key(study.id, key)
    return 0


def cmd_show(args: argparse.Namespace, target: Target) -> int:
    record = _record(target, args.study)
    arms = Counter(a.arm for a in target.store.assignments(args.study))
    controls = target.store.read_controls(args.study)
    shown = {
        "definition": study_to_dict(record.study),  # never the seed or the key's hash
        "entries": record.entries,
        "assigned": {arm.name: arms.get(arm.name, 0) for arm in record.study.arms},
        "paused": controls.paused,
        "allowlist": controls.allowlist,
        "tokens_used": controls.tokens_used,
    }
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def _switch(args: argparse.Namespace, target: Target, paused: bool) -> int:
    _record(target, args.study)
    target.store.set_controls(args.study, paused=paused)
    what = "new entries and messages are refused (code `paused`)" if paused else "entries and messages are accepted"
    print(f"study {args.study!r} {'paused' if paused else 'resumed'}: {what} [{target.where}]")
    return 0


def cmd_pause(args: argparse.Namespace, target: Target) -> int:
    return _switch(args, target, True)


def cmd_resume(args: argparse.Namespace, target: Target) -> int:
    return _switch(args, target, False)


def cmd_rotate_key(args: argparse.Namespace, target: Target) -> int:
    _record(target, args.study)
    key = _new_key()
    target.store.set_study_key(args.study, key_sha256(key))
    print(f"study {args.study!r}: key replaced; the old key is refused from now on [{target.where}]")
    _print_key(args.study, key)
    return 0


def cmd_export(args: argparse.Namespace, target: Target) -> int:
    record = _record(target, args.study)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise OpsError(f"{out} is not a directory", 2)
    files = {name: out / f"{name}.csv" for name in ("messages", "participants")}
    if not args.force and (taken := [str(p) for p in files.values() if p.exists()]):
        raise OpsError(f"{', '.join(taken)} exist: pass --force to replace them", 2)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    assigned = {a.participant: a for a in target.store.assignments(args.study)}
    ids = sorted({name for a in assigned.values() for name in a.platform_ids})
    activity: dict[str, list[float]] = {}  #: participant -> [first, last, messages sent]
    with export.atomic_file(files["messages"]) as handle:
        rows = (_message_row(message, assigned, ids, activity) for message in export.rows(target.store, args.study))
        written = export.write_csv(rows, handle, raw=args.raw_csv, columns=(*MESSAGE_COLUMNS[:3], *ids, *MESSAGE_COLUMNS[3:]))
    with export.atomic_file(files["participants"]) as handle:
        summary = (_participant_row(a, ids, activity.get(a.participant), record.study.min_messages)
                   for a in sorted(assigned.values(), key=lambda a: a.index))
        people = export.write_csv(summary, handle, raw=args.raw_csv,
                                  columns=(*PARTICIPANT_COLUMNS[:5], *ids, *PARTICIPANT_COLUMNS[5:]))
    print(f"study {args.study!r}: {written:,} messages and {people:,} participants exported to "
          f"{files['messages']} and {files['participants']} [{target.where}]")
    return 0


def _message_row(message: dict[str, Any], assigned: dict[str, Assignment], ids: list[str],
                 activity: dict[str, list[float]]) -> dict[str, Any]:
    participant = message["participant"]
    assignment = assigned.get(participant)
    seen = activity.setdefault(participant, [message["created_at_epoch"], message["created_at_epoch"], 0])
    seen[0], seen[1] = min(seen[0], message["created_at_epoch"]), max(seen[1], message["created_at_epoch"])
    seen[2] += message["role"] == "user"
    platform = dict(assignment.platform_ids) if assignment else {}
    return ({"study": message["experiment"], "arm": assignment.arm if assignment else ""}
            | {k: message[k] for k in MESSAGE_COLUMNS if k in message} | {name: platform.get(name, "") for name in ids})


def _participant_row(assignment: Assignment, ids: list[str], seen: list[float] | None, minimum: int) -> dict[str, Any]:
    sent = int(seen[2]) if seen else 0
    return {
        "study": assignment.study, "participant": assignment.participant, "arm": assignment.arm,
        "place": assignment.index, "entered_at": export.iso(assignment.entered_at),
        **{name: assignment.platform_ids.get(name, "") for name in ids},
        "messages_sent": sent, "first_activity": export.iso(seen[0]) if seen else "",
        "last_activity": export.iso(seen[1]) if seen else "", "completed": sent >= minimum,
    }


#: (name, run, help, description) of each action, for the parser in cli.py.
ACTIONS = (
    ("create", cmd_create, "register a study from its TOML file (prints its key once)",
     "Check the study file (docs/surveys.md), generate its assignment seed and study key, and register it. "
     "The key is printed once. An existing id is refused unless --replace-definition, which replaces the "
     "definition and keeps the seed, the key, the entries and the assignments. The study's origins must be in "
     "the deployment's AllowedOrigins (the stack's parameter, or the local stack's --origins)."),
    ("show", cmd_show, "the definition, entries and arms assigned",
     "The study's definition (never its seed or key), places taken, participants per arm, and its controls."),
    ("pause", cmd_pause, "refuse new entries and messages",
     "Pause the study (its experiment's switch): entries and messages are refused with `paused`."),
    ("resume", cmd_resume, "accept entries and messages again", "Lift the study's pause."),
    ("rotate-key", cmd_rotate_key, "replace the study key (printed once)",
     "Generate a new study key; the old one is refused from then on. Give the new one to the survey platform."),
    ("export", cmd_export, "messages.csv and participants.csv, by participant and arm",
     "Write messages.csv (one row per message: study, arm, participant, platform ids, bot, seq, role, text, "
     "times, tokens, model, and each reply's provenance: model snapshot, system fingerprint, parameters, "
     "system prompt hash) and participants.csv (arm, place, platform ids, messages sent, first and last "
     "activity, completed) into --out, to join with the survey's export by ResponseID or PROLIFIC_PID."),
)
