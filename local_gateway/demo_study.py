"""The demo study of `make dev`: registered on the local store at start, for the demo survey pages.

The study file (demo-study.toml) is one a researcher could write; its origins become the demo
page's (whatever port it has), so the page may enter. Registered once: a later start keeps its
assignments and only updates the origins when the port moved. Its key is never printed: it is a
link-entry study, which a page enters without one.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from ws_handlers.enrolment import StudyAdmin, StudyRecord, key_sha256
from ws_handlers.study import Study, load_study

STUDY_FILE = Path(__file__).with_name("demo-study.toml")


def page_origins(demo_url: str) -> tuple[str, ...]:
    """The demo page's origin as browsers send it, by IP and by name."""
    parts = urlsplit(demo_url)
    return tuple(f"{parts.scheme}://{host}:{parts.port}" for host in ("127.0.0.1", "localhost"))


def ensure_demo_study(store: StudyAdmin, demo_url: str) -> Study:
    """Register the demo study for the page at `demo_url` unless it is there with those origins."""
    study = dataclasses.replace(load_study(STUDY_FILE), origins=page_origins(demo_url))
    record = store.get_study(study.id)
    if record is None:
        store.put_study(StudyRecord(study, secrets.token_bytes(32), key_sha256(secrets.token_urlsafe(32))))
    elif record.study.origins != study.origins:
        store.replace_study_definition(study)
    return study


def demo_survey_url(demo_url: str, entry_url: str, study: Study, page: str = "demo-survey.html") -> str:
    """A stand-in survey (Qualtrics', or demo-limesurvey.html), entering the demo study as a new
    participant (keyed on the survey's response id)."""
    base = demo_url.rsplit("/", 1)[0]
    return f"{base}/{page}?{urlencode({'chat_entry': entry_url, 'chat_study': study.id})}"
