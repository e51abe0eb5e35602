"""The chat in a survey, in Chromium, through the Qualtrics stand-in (client_js/demo-survey.html).

Three loopback origins, as in a real study: the survey platform (the stand-in page, the question's
JavaScript exactly as researchers paste it from client_js/snippets/qualtrics.js, and the survey
flow's Web Service step made by this test's server with the study key), the researcher's static
host (client_js/, with CORS, where the snippet imports survey.js from), and the local stack (the
study entry and the WebSocket). The study's origins and the stack's AllowedOrigins are the
platform's. Every wait is for something the page shows.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from local_gateway.stack import StackConfig, running
from local_gateway.threaded import serve_in_thread
from survey_stand_ins import CLIENT_JS, FULL, KEY, OPENING, PID, STUDY, Seen, chat, expect, shown_texts, study_record

VIEWPORT = {"width": 900, "height": 1000}


# ---------------------------------------------------------------- the three origins


@dataclass
class Platform:
    """The survey platform's server: serves the survey, and makes the survey flow's Web Service
    call as Qualtrics' servers do (URL, custom header, body from embedded data, response mapping)."""

    entry_url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def web_service(self, request: web.Request) -> web.Response:
        embedded = await request.json()
        body = {"participant": embedded["ResponseID"], "ResponseID": embedded["ResponseID"],
                **{name: embedded[name] for name in ("PROLIFIC_PID", "STUDY_ID") if name in embedded}}
        async with aiohttp.ClientSession() as session, session.post(
                f"{self.entry_url}/studies/{STUDY}/entry", json=body, headers={"Authorization": f"Bearer {KEY}"}) as answer:
            data = await answer.json()
        self.calls.append({"status": answer.status, "body": body})
        mapping = {"url": "chat_url", "token": "chat_token", "ticket": "chat_ticket", "min_messages": "chat_min_messages"}
        return web.json_response({field_: str(data[name]) for name, field_ in mapping.items() if name in data})

    async def parent_page(self, request: web.Request) -> web.Response:
        """A survey page that embeds the chat in an iframe (the LimeSurvey route) and records the
        messages it receives."""
        return web.Response(content_type="text/html", text=(
            '<!doctype html><html><body><script>window.__progress = [];'
            'addEventListener("message", (e) => window.__progress.push({origin: e.origin, data: e.data}));</script>'
            f'<iframe id="chat" style="width: 820px; height: 600px" src="{html.escape(request.query["src"])}"></iframe>'
            '</body></html>'))


@pytest.fixture(scope="module")
def platform():
    served_platform = Platform()
    app = web.Application()
    app.router.add_post("/flow/webservice", served_platform.web_service)
    app.router.add_get("/parent.html", served_platform.parent_page)
    app.router.add_static("/", CLIENT_JS)
    with serve_in_thread(app) as served:
        served_platform.url = served.url
        yield served_platform


@pytest.fixture
def stack(platform, static_host, tmp_path):
    config = StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None,
                         data_dir=tmp_path / "stack", model_ttft=0.0, model_tokens_per_second=0.0,
                         parameters={"AllowedOrigins": f"{platform.url},{static_host.url}"})  # the iframe's
    with running(config) as s:
        platform.entry_url = s.urls["entry"]
        platform.calls.clear()
        yield s


def survey_url(platform, static_host, stack, **query: str) -> str:
    params = {"chat_js": f"{static_host.url}/", "chat_entry": stack.urls["entry"], "chat_study": STUDY, **query}
    return f"{platform.url}/demo-survey.html?{urlencode(params)}"


def embedded(page) -> dict[str, str]:
    return page.evaluate("() => window.standin.response.embedded")


# ---------------------------------------------------------------- tests


def test_link_entry_holds_next_until_the_minimum_and_keeps_the_chat(platform, static_host, stack, context,
                                                                   readme_screenshot):
    stack.store.put_study(study_record("link", platform.url))
    seen = Seen(context, stack.urls["entry"])
    page = context.new_page()
    page.goto(survey_url(platform, static_host, stack, PROLIFIC_PID=PID, STUDY_ID="study1", SESSION_ID="sess1"))
    next_button = page.locator("#NextButton")
    next_button.click()  # the intro page

    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    expect(next_button).to_be_hidden()
    chat(page, "Can you explain fractions?", 2)
    expect(page.locator("#embedded")).to_contain_text('"chat_messages": "1"')
    expect(next_button).to_be_hidden()
    assert embedded(page)["chat_done"] == "0"
    chat(page, "And decimals?", 3)
    expect(next_button).to_be_visible()
    data = embedded(page)
    assert (data["chat_messages"], data["chat_done"]) == ("2", "1")
    [assignment] = list(stack.store.assignments(STUDY))
    assert assignment.participant == PID
    assert dict(assignment.platform_ids) == {"PROLIFIC_PID": PID, "STUDY_ID": "study1", "SESSION_ID": "sess1",
                                             "ResponseID": data["ResponseID"]}
    chat_id, transcript = data["chat_id"], shown_texts(page)
    assert [m.seq for m in stack.store.messages(chat_id)] == [1, 2, 3, 4, 5]
    seen.look(page)
    page.locator(".lc-input").fill("Could we try an example?")
    readme_screenshot(page, "survey-chat.png")

    # A refresh: the response resumes on the chat page, the page enters again, same arm and chat.
    page.reload()
    expect(page.locator(".lc-msg--assistant[data-status=stored]")).to_have_count(3)
    expect(next_button).to_be_visible()  # done, from the service's count
    assert shown_texts(page) == transcript and embedded(page)["chat_id"] == chat_id
    # A second tab: the same response (Qualtrics resumes it in the same browser), entered again.
    other = context.new_page()
    other.goto(page.url)
    expect(other.locator(".lc-msg--assistant[data-status=stored]")).to_have_count(3)
    assert shown_texts(other) == transcript and embedded(other)["chat_id"] == chat_id
    seen.look(other)
    other.close()
    # Back and Next again: the question's JavaScript runs again, same chat.
    page.locator("#BackButton").click()
    expect(page.locator(".lc-chat")).to_have_count(0)
    next_button.click()
    expect(page.locator(".lc-msg--assistant[data-status=stored]")).to_have_count(3)
    assert shown_texts(page) == transcript
    assert len(seen.entries) == 4 and all(e["status"] == 200 for e in seen.entries)
    assert [a.arm for a in stack.store.assignments(STUDY)] == [assignment.arm]
    assert stack.store.get_study(STUDY).entries == 1

    next_button.click()  # the end of the survey: what the response records
    response = json.loads(page.locator("#response").text_content())
    assert {k: response[k] for k in ("chat_id", "chat_messages", "chat_done", "PROLIFIC_PID")} == {
        "chat_id": chat_id, "chat_messages": "2", "chat_done": "1", "PROLIFIC_PID": PID}
    seen.look(page)
    assert any(OPENING in text for text in seen.texts if text.startswith("{"))  # the frames were watched
    assert seen.leaks() == []
    assert page.errors == []


def test_server_entry_through_the_survey_flows_web_service(platform, static_host, stack, context):
    stack.store.put_study(study_record("server", platform.url))
    seen = Seen(context, stack.urls["entry"])
    page = context.new_page()
    page.goto(survey_url(platform, static_host, stack, webservice="/flow/webservice", PROLIFIC_PID=PID))
    page.locator("#NextButton").click()
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    data = embedded(page)
    assert data["chat_token"] and data["chat_ticket"] and data["chat_min_messages"] == "2"
    assert seen.entries == []  # the page never called the entry: the platform's server did, with the key
    assert [c["status"] for c in platform.calls] == [200]
    [assignment] = list(stack.store.assignments(STUDY))
    assert assignment.participant == data["ResponseID"]
    assert dict(assignment.platform_ids) == {"ResponseID": data["ResponseID"], "PROLIFIC_PID": PID}

    chat(page, "Hello there", 2)
    expect(page.locator("#NextButton")).to_be_hidden()
    chat(page, "Tell me about primes", 3)
    expect(page.locator("#NextButton")).to_be_visible()
    page.reload()  # the flow's web service ran once; the page resumes with its credentials
    expect(page.locator(".lc-msg--assistant[data-status=stored]")).to_have_count(3)
    assert embedded(page)["chat_id"] == data["chat_id"] and len(platform.calls) == 1
    seen.look(page)
    assert seen.leaks() == []
    assert page.errors == []


def test_a_made_up_id_beyond_max_entries_is_told_the_study_is_full(platform, static_host, stack, context):
    stack.store.put_study(study_record("link", platform.url, max_entries=1))
    seen = Seen(context, stack.urls["entry"])
    first = context.new_page()
    first.goto(survey_url(platform, static_host, stack, PROLIFIC_PID=PID))
    first.locator("#NextButton").click()
    expect(first.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    first.close()

    made_up = context.new_page()
    made_up.goto(survey_url(platform, static_host, stack, PROLIFIC_PID="madeup000000000000000001", new="1"))
    made_up.locator("#NextButton").click()
    notice = made_up.locator(".lc-survey-notice")
    expect(notice).to_have_text(FULL)
    expect(notice).to_have_attribute("role", "alert")
    expect(made_up.locator("#NextButton")).to_be_hidden()
    expect(made_up.locator(".lc-chat")).to_have_count(0)
    expect(made_up.locator("#embedded")).to_contain_text('"chat_error": "study_full"')
    assert [e["status"] for e in seen.entries] == [200, 403]
    assert seen.entries[1]["headers"]["access-control-allow-origin"] == platform.url
    assert [a.participant for a in stack.store.assignments(STUDY)] == [PID]
    assert made_up.errors == []


def test_in_an_iframe_progress_goes_to_the_parent_origin_only(platform, static_host, stack, context):
    stack.store.put_study(study_record("link", static_host.url))  # the frame's page enters

    def frame_src(parent: str, participant: str) -> str:
        return f"{static_host.url}/survey-frame.html?" + urlencode({
            "entry": stack.urls["entry"], "study": STUDY, "participant": participant, "parent": parent,
            "id.PROLIFIC_PID": participant})

    page = context.new_page()
    page.goto(f"{platform.url}/parent.html?{urlencode({'src': frame_src(platform.url, PID)})}")
    frame = page.frame_locator("#chat")
    expect(frame.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    chat(frame, "Can you explain fractions?", 2)
    chat(frame, "And decimals?", 3)
    page.wait_for_function("() => window.__progress.some(p => p.data.done)")
    progress = page.evaluate("() => window.__progress")
    assert {p["origin"] for p in progress} == {static_host.url}
    assert [a.participant for a in stack.store.assignments(STUDY)] == [PID]
    chat_id = progress[-1]["data"]["chatId"]
    assert [p["data"] for p in progress] == [
        {"type": "llm-chat:progress", "chatId": chat_id, "messages": n, "minMessages": 2, "done": n >= 2} for n in (0, 1, 2)]
    assert [m.seq for m in stack.store.messages(chat_id)] == [1, 2, 3, 4, 5]

    # A frame told another parent origin posts nothing this page can receive: a message the frame
    # posts last (in order, from the same source) arrives alone.
    page.goto(f"{platform.url}/parent.html?{urlencode({'src': frame_src('http://127.0.0.1:9', 'P2')})}")
    frame = page.frame_locator("#chat")
    expect(frame.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    chat(frame, "Hello", 2)
    inner = next(f for f in page.frames if f.url.startswith(static_host.url))
    inner.evaluate(f"() => window.parent.postMessage('last', {json.dumps(platform.url)})")
    page.wait_for_function("() => window.__progress.length > 0")
    assert page.evaluate("() => window.__progress.map(p => p.data)") == ["last"]


# ---------------------------------------------------------------- what API Gateway answers by itself

#: API Gateway's own answers, without CORS headers. On AWS a page's fetch therefore sees a network
#: error; Playwright's fulfilled answers skip the browser's CORS check, so here the page reads the
#: status: both ways are retried (the connection reset below is the network's).
THROTTLED = {"status": 429, "content_type": "application/json", "body": '{"message":"Too Many Requests"}'}
INTERNAL = {"status": 500, "content_type": "application/json", "body": '{"message":"Internal Server Error"}'}
BUSY = "Many participants are starting at once. Please wait a moment and reload the page."


def test_a_link_entry_throttled_lost_and_cut_is_retried_and_enters_once(platform, static_host, stack, context):
    """The entry as a classroom may meet it on AWS: the stage's 429, then a 500 whose function did
    run (the arm was assigned, the answer lost), then a connection reset; the page retries (snippet
    defaults) and enters, with one assignment and one place taken."""
    stack.store.put_study(study_record("link", static_host.url))  # survey-frame.html enters from the static host
    seen: list[Any] = []

    def as_api_gateway(route) -> None:
        if len(seen) == 0:
            seen.append(429)
            route.fulfill(**THROTTLED)
        elif len(seen) == 1:
            seen.append(f"lost {route.fetch().status}")  # the function ran; API Gateway's answer is an error
            route.fulfill(**INTERNAL)
        elif len(seen) == 2:
            seen.append("reset")
            route.abort("connectionreset")
        else:
            answer = route.fetch()
            seen.append(answer.status)
            route.fulfill(response=answer)

    context.route(f"{stack.urls['entry']}/**", as_api_gateway)
    page = context.new_page()
    page.goto(f"{static_host.url}/survey-frame.html?" + urlencode({
        "entry": stack.urls["entry"], "study": STUDY, "participant": PID, "id.PROLIFIC_PID": PID}))
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(OPENING)
    assert seen == [429, "lost 200", "reset", 200]
    [assignment] = list(stack.store.assignments(STUDY))
    assert assignment.participant == PID and stack.store.get_study(STUDY).entries == 1
    chat(page, "Can you explain fractions?", 2)
    assert [m.seq for m in stack.store.messages(page.evaluate("() => window.chat.progress().chatId"))] == [1, 2, 3]


def test_a_link_entry_throttled_every_time_gives_up_with_a_clear_message(platform, static_host, stack, context):
    stack.store.put_study(study_record("link", static_host.url))
    tries: list[str] = []

    def throttled(route) -> None:
        tries.append(route.request.method)
        route.fulfill(**THROTTLED)

    context.route(f"{stack.urls['entry']}/**", throttled)
    context.route(f"{static_host.url}/blank.html", lambda route: route.fulfill(
        content_type="text/html", body='<!doctype html><html><body><div id="chat"></div></body></html>'))
    page = context.new_page()
    page.goto(f"{static_host.url}/blank.html")  # a page of the study's origin
    page.evaluate("""async ([base, entry, study, participant]) => {
        const { mountSurveyChat } = await import(base + "/survey.js");
        window.refused = [];
        window.chat = mountSurveyChat(document.getElementById("chat"), {
          entry: { url: entry, study, participant }, entryAttempts: 3, entryBackoffMs: 50, entryBackoffMaxMs: 200,
          onRefused: (code) => window.refused.push(code),
        });
    }""", [static_host.url, stack.urls["entry"], STUDY, PID])
    notice = page.locator(".lc-survey-notice")
    expect(notice).to_have_text(BUSY)
    expect(notice).to_have_attribute("role", "alert")
    expect(notice).to_have_attribute("data-code", "throttled")
    assert page.evaluate("() => window.refused") == ["throttled"] and tries == ["POST"] * 3
    expect(page.locator(".lc-chat")).to_have_count(0)
    assert list(stack.store.assignments(STUDY)) == [] and stack.store.get_study(STUDY).entries == 0
