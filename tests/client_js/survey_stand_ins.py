"""What the survey stand-ins' browser tests share: the study they enter, what must never reach the
browser, and how a participant chats (test_survey_browser.py: Qualtrics; test_limesurvey_browser.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ws_handlers.enrolment import StudyRecord, key_sha256
from ws_handlers.study import study_from_dict

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make venv")
expect = sync_api.expect
expect.set_options(timeout=60_000)  # a bound for failures only

CLIENT_JS = Path(__file__).resolve().parents[2] / "client_js"
KEY = "survey-study-key-for-tests"
STUDY = "tutor-survey"
PID = "5f0c1d2e3a4b5c6d7e8f9a0b"  # a Prolific PID's shape
#: what the browser must never see: arm and bot names, and markers inside the prompts
ARMS = {"armzeta7": "botzeta7", "armomega7": "botomega7"}
PROMPT_MARKERS = {"botzeta7": "PROMPTZETA7", "botomega7": "PROMPTOMEGA7"}
SECRETS = (*ARMS, *ARMS.values(), *PROMPT_MARKERS.values(), KEY)
OPENING = "Hi, I'm Ada. Which maths topic shall we talk about?"  # the same in both arms
FULL = "This study is full: no more participants can take part in the chat. Thank you for your interest."


def study_record(entry: str, origin: str, **fields: Any) -> StudyRecord:
    study = study_from_dict({
        "id": STUDY, "entry": entry, "origins": [origin], "min_messages": 2, "max_entries": 50,
        "participant_pattern": "[A-Za-z0-9_-]{1,64}",
        "arms": [{"name": arm, "bot": bot} for arm, bot in ARMS.items()],
        "bots": {bot: {"model": "gpt-4o-mini", "opening_message": OPENING,
                       "system_prompt": f"You are Ada, a maths tutor. Keep to {marker}."}
                 for bot, marker in PROMPT_MARKERS.items()},
    } | fields)
    return StudyRecord(study, seed=b"survey-seed", key_sha256=key_sha256(KEY))


class Seen:
    """Everything the browser received that could name an arm: entry answers, socket frames, pages."""

    def __init__(self, context, entry_url: str) -> None:
        self.texts: list[str] = []
        self.entries: list[dict[str, Any]] = []

        def record_entry(route) -> None:  # the entry's answer as the page receives it
            answer = route.fetch()
            self.entries.append({"status": answer.status, "headers": answer.headers, "body": answer.text()})
            self.texts.append(answer.text())
            route.fulfill(response=answer)

        context.route(f"{entry_url}/**", record_entry)
        context.on("page", self.watch)

    def watch(self, page) -> None:
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: self.texts.append(str(payload))))

    def look(self, page) -> None:
        self.texts.append(page.content())
        self.texts.append(page.evaluate("() => JSON.stringify(localStorage)"))

    def leaks(self) -> list[str]:
        return [s for s in SECRETS if any(s in text for text in self.texts)]


def chat(page, text: str, replies: int) -> None:
    """Send `text` in the chat of `page` (a page or a frame) and wait for the `replies`-th stored reply."""
    page.locator(".lc-input").fill(text)
    page.locator(".lc-input").press("Enter")
    expect(page.locator(".lc-msg--assistant[data-status=stored]")).to_have_count(replies)


def shown_texts(page) -> list[str]:
    return page.locator(".lc-msg .lc-text").all_text_contents()
