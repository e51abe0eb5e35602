"""The chat in a LimeSurvey survey, in Chromium, through the LimeSurvey stand-in
(client_js/demo-limesurvey.html), and what participants entering by link get across browsers.

Three loopback origins, as in a real study: the survey platform (the stand-in page, which runs
client_js/snippets/limesurvey.js exactly as pasted, after the researcher's marked edits and
ExpressionScript's replacements), the researcher's static host (client_js/, with CORS, where the
script imports survey.js from), and one local stack for the module (each test registers its own
study). The service's record is read from its store, never from the page. Every wait is for
something the page shows.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest

from local_gateway.demo_study import STUDY_FILE
from local_gateway.stack import StackConfig, running
from survey_stand_ins import KEY, OPENING, PID, Seen, chat, expect, shown_texts, study_record
from ws_handlers.enrolment import StudyRecord, key_sha256
from ws_handlers.study import load_study

VIEWPORT = {"width": 900, "height": 1000}
SID = 482915
#: the stand-in's hidden short-text questions the script writes, by their inputs' names (SGQA)
FIELDS = {"chat_id": f"{SID}X12X122", "chat_messages": f"{SID}X12X123", "chat_done": f"{SID}X12X124",
          "chat_error": f"{SID}X12X125"}
STORED_REPLIES = ".lc-msg--assistant[data-status=stored]"


@pytest.fixture(scope="module")
def platform(site):
    """The survey platform: serves the stand-in page and the script researchers paste."""
    return site


@pytest.fixture(scope="module")
def stack(platform, tmp_path_factory):
    config = StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None,
                         data_dir=tmp_path_factory.mktemp("stack"), model_ttft=0.0, model_tokens_per_second=0.0,
                         parameters={"AllowedOrigins": platform.url})
    with running(config) as s:
        yield s


@contextmanager
def fresh_browser(browser) -> Iterator:
    """A new browser profile: no storage, no cookies (another device of the same participant)."""
    context = browser.new_context(viewport=VIEWPORT, reduced_motion="reduce")
    context.set_default_timeout(60_000)
    try:
        yield context
    finally:
        context.close()


def survey_url(platform, static_host, stack, study: str, **query: str) -> str:
    params = {"chat_js": f"{static_host.url}/", "chat_entry": stack.urls["entry"], "chat_study": study, **query}
    return f"{platform.url}/demo-limesurvey.html?{urlencode(params)}"


def field(page, name: str):
    return page.locator(f'[name="{FIELDS[name]}"]')


def written(page) -> dict[str, str]:
    return {name: field(page, name).input_value() for name in FIELDS}


def open_chat(context, url: str):
    """A participant opens the survey's link and goes past the intro to the chat."""
    page = context.new_page()
    page.goto(url)
    page.locator("#ls-button-submit").click()
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_be_visible()
    return page


def test_link_entry_holds_next_until_the_minimum_and_writes_the_hidden_questions(platform, static_host, stack, context,
                                                                                readme_screenshot):
    stack.store.put_study(study_record("link", platform.url, id="ls-link"))
    seen = Seen(context, stack.urls["entry"])
    sockets = []
    context.on("page", lambda page: page.on("websocket", lambda ws: sockets.append(ws)))
    page = open_chat(context, survey_url(platform, static_host, stack, "ls-link", PROLIFIC_PID=PID))
    next_button = page.locator("#ls-button-submit")
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    expect(next_button).to_be_hidden()
    expect(next_button).to_be_disabled()  # no keyboard submission either
    expect(field(page, "chat_done")).to_have_value("0")
    chat(page, "Can you explain fractions?", 2)
    expect(field(page, "chat_messages")).to_have_value("1")
    expect(next_button).to_be_hidden()
    chat(page, "And decimals?", 3)
    expect(next_button).to_be_visible()
    expect(next_button).to_be_enabled()
    values = written(page)
    assert (values["chat_messages"], values["chat_done"], values["chat_error"]) == ("2", "1", "")
    response_id = page.evaluate("() => window.standin.response.id")
    [assignment] = list(stack.store.assignments("ls-link"))
    assert assignment.participant == PID
    assert dict(assignment.platform_ids) == {"PROLIFIC_PID": PID, "SAVEDID": f"{SID}-{response_id}"}
    chat_id, transcript = values["chat_id"], shown_texts(page)
    assert [m.seq for m in stack.store.messages(chat_id)] == [1, 2, 3, 4, 5]
    seen.look(page)
    readme_screenshot(page, "survey-limesurvey.png")

    # A refresh: LimeSurvey shows the same page again, the script enters again: same arm and chat.
    sockets.clear()
    page.reload()
    expect(page.locator(STORED_REPLIES)).to_have_count(3)
    expect(next_button).to_be_visible()  # done, from the service's count
    assert shown_texts(page) == transcript and written(page)["chat_id"] == chat_id
    # Previous, then Next: pages loaded in place. Leaving closes the chat; coming back runs the
    # script again beside the handler still bound from the first visit, and the chat opens once.
    page.locator("#ls-button-previous").click()
    expect(page.locator(".lc-chat")).to_have_count(0)
    [socket] = sockets
    if not socket.is_closed():
        socket.wait_for_event("close")
    next_button.click()
    expect(page.locator(STORED_REPLIES)).to_have_count(3)
    expect(page.locator(".lc-chat")).to_have_count(1)
    assert shown_texts(page) == transcript
    assert len(seen.entries) == 3 and all(e["status"] == 200 for e in seen.entries)
    assert [a.arm for a in stack.store.assignments("ls-link")] == [assignment.arm]

    next_button.click()  # Submit: what LimeSurvey saved with the response
    recorded = json.loads(page.locator("#response").text_content())
    assert {k: recorded[k] for k in ("id", "PID", "chatid", "chatmsgs", "chatdone", "chaterror")} == {
        "id": response_id, "PID": PID, "chatid": chat_id, "chatmsgs": "2", "chatdone": "1", "chaterror": ""}
    seen.look(page)
    assert any(OPENING in text for text in seen.texts if text.startswith("{"))  # the frames were watched
    assert seen.leaks() == []
    assert page.errors == []


def test_the_same_pid_in_a_fresh_browser_gets_its_arm_and_its_chat(platform, static_host, stack, browser, context):
    stack.store.put_study(study_record("link", platform.url, id="ls-return"))
    url = survey_url(platform, static_host, stack, "ls-return", PROLIFIC_PID=PID)
    page = open_chat(context, url)
    chat(page, "Can you explain fractions?", 2)
    expect(field(page, "chat_messages")).to_have_value("1")
    chat_id, transcript = written(page)["chat_id"], shown_texts(page)
    [assignment] = list(stack.store.assignments("ls-return"))

    with fresh_browser(browser) as elsewhere:  # another device: a new LimeSurvey response, the same PID
        seen = Seen(elsewhere, stack.urls["entry"])
        other = open_chat(elsewhere, url)
        expect(other.locator(STORED_REPLIES)).to_have_count(2)
        assert shown_texts(other) == transcript and written(other)["chat_id"] == chat_id
        assert other.evaluate("() => window.standin.response.id") != page.evaluate("() => window.standin.response.id")
        expect(field(other, "chat_messages")).to_have_value("1")
        seen.look(other)
        assert seen.leaks() == [] and other.errors == []
    assert list(stack.store.assignments("ls-return")) == [assignment]
    assert stack.store.get_study("ls-return").entries == 1


def test_arms_are_balanced_in_each_block_of_participants_entering_by_link(platform, static_host, stack, browser):
    study = dataclasses.replace(load_study(STUDY_FILE), id="ls-balance", origins=(platform.url,))
    stack.store.put_study(StudyRecord(study, seed=secrets.token_bytes(32), key_sha256=key_sha256(KEY)))
    block = sorted(arm.name for arm in study.arms for _ in range(arm.weight))
    participants = [f"{n:024x}" for n in range(1, 2 * len(block) + 1)]  # two blocks of Prolific PIDs
    for pid in participants:
        with fresh_browser(browser) as context:
            page = open_chat(context, survey_url(platform, static_host, stack, study.id, PROLIFIC_PID=pid))
            expect(field(page, "chat_id")).not_to_have_value("")

    assignments = sorted(stack.store.assignments(study.id), key=lambda a: a.index)
    assert [a.participant for a in assignments] == participants
    blocks = [assignments[i:i + len(block)] for i in range(0, len(assignments), len(block))]
    assert [sorted(a.arm for a in b) for b in blocks] == [block, block]


def test_a_refused_entry_is_shown_and_written_to_chat_error(platform, static_host, stack, context):
    stack.store.put_study(study_record("link", platform.url, id="ls-prolific", participant_pattern="[0-9a-f]{24}"))
    page = context.new_page()
    page.goto(survey_url(platform, static_host, stack, "ls-prolific"))  # no PROLIFIC_PID: the response's id
    page.locator("#ls-button-submit").click()
    notice = page.locator(".lc-survey-notice")
    expect(notice).to_have_attribute("data-code", "participant_invalid")
    expect(notice).to_have_attribute("role", "alert")
    expect(field(page, "chat_error")).to_have_value("participant_invalid")
    expect(page.locator("#ls-button-submit")).to_be_hidden()
    assert list(stack.store.assignments("ls-prolific")) == []
