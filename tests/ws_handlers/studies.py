"""Studies for the tests: a registered study on a store, as `chat-ops study create` leaves it."""

from __future__ import annotations

from typing import Any

from ws_handlers.enrolment import StudyRecord, key_sha256
from ws_handlers.study import Study, study_from_dict

KEY = "study-key-for-tests"
ORIGIN = "https://lab.eu.qualtrics.com"
PROMPTS = {"warm": "You are Ada, a warm tutor. SECRET-WARM", "strict": "You are Ada, a strict tutor. SECRET-STRICT"}


def study(study_id: str = "tutor", *, weights: tuple[int, int] = (1, 1), **fields: Any) -> Study:
    """Two arms (`warm`, `strict`) with their own bots, prompts and openings."""
    data = {
        "id": study_id, "entry": "server", "origins": [ORIGIN], "max_entries": 100, "min_messages": 2,
        "arms": [{"name": "warm", "bot": "ada_warm", "weight": weights[0]},
                 {"name": "strict", "bot": "ada_strict", "weight": weights[1]}],
        "bots": {f"ada_{arm}": {"model": "m", "system_prompt": prompt, "opening_message": f"Hello from {arm}-bot."}
                 for arm, prompt in PROMPTS.items()},
    } | fields
    return study_from_dict(data)


def register(store: Any, study_id: str = "tutor", **fields: Any) -> StudyRecord:
    record = StudyRecord(study(study_id, **fields), seed=b"seed-" + study_id.encode(), key_sha256=key_sha256(KEY))
    store.put_study(record)
    return record
