"""The default chat widget in Chromium, used as a participant would.

The local stack runs in process; client_js/ is served statically on loopback (its origin is
the stack's only allowed origin); Debian's /usr/bin/chromium (`make chromium`) is driven by
playwright, whose own browsers are never installed. Every wait is for something the page shows,
bounded generously for a busy machine; replies that must still be running while the test looks
are held by the model until the test releases them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import quote, urlencode

import boto3
import pytest
from websockets.sync.client import connect

from local_gateway.demo_bots import BOTS
from local_gateway.stack import StackConfig, running
from waiting import Hold, wait_for
from ws_handlers.bot import Bot, Limits, Pace
from ws_handlers.tickets import Identity, mint_ticket, mint_token

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make venv")
expect = sync_api.expect
expect.set_options(timeout=60_000)  # a bound for failures only: every expect ends when the page shows it

VIEWPORT = {"width": 800, "height": 600}
OFFLINE = "net::ERR_INTERNET_DISCONNECTED"  # Chromium's log of a reconnect attempt while offline: expected
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'

# Records, on every change to the message list, each shown assistant message and whether
# the typing indicator (or the notice of a queued reply) is visible (what the participant saw
# while a reply streamed), and every message node (none may be replaced: a streamed reply grows
# in place).
WATCH = """() => {
  window.__seen = [];
  window.__nodes = new Set();  // every message node ever shown: a redraw must reuse them
  const log = document.querySelector('.lc-log');
  const snap = () => {
    const typing = !document.querySelector('.lc-typing').hidden;
    const waiting = !document.querySelector('.lc-waiting').hidden;
    for (const m of document.querySelectorAll('.lc-msg')) window.__nodes.add(m);
    for (const m of document.querySelectorAll('.lc-msg--assistant')) {
      window.__seen.push({seq: Number(m.dataset.seq), status: m.dataset.status, hidden: m.hidden,
                          text: m.querySelector('.lc-text').textContent, typing, waiting});
    }
    window.__seen.push({typing, waiting});
  };
  new MutationObserver(snap).observe(log, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

# Records, on every change to the message list, whether "Waiting for the assistant…" and the
# typing dots are visible and the text of the last assistant message.
WATCH_QUEUE = """() => {
  window.__queue = [];
  const log = document.querySelector('.lc-log');
  new MutationObserver(() => {
    const last = [...document.querySelectorAll('.lc-msg--assistant')].at(-1);
    window.__queue.push({waiting: !document.querySelector('.lc-waiting').hidden,
                         typing: !document.querySelector('.lc-typing').hidden,
                         seq: Number(last.dataset.seq), text: last.querySelector('.lc-text').textContent});
  }).observe(log, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

SHOWN = """() => [...document.querySelectorAll('.lc-msg')].filter(m => !m.hidden).map(m => [
  m.dataset.seq ? Number(m.dataset.seq) : null, m.dataset.role, m.querySelector('.lc-text').textContent, m.dataset.status])"""


# ---------------------------------------------------------------- fixtures


def stack_config(site, tmp_path, tokens_per_second: float, **parameters: str) -> StackConfig:
    """The local stack on free loopback ports, every reply job delivered twice (as SQS may)."""
    return StackConfig(
        port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp_path / "stack",
        model_ttft=0.5, model_tokens_per_second=tokens_per_second, duplicate_deliveries=1.0,
        parameters={"AllowedOrigins": site.url, **parameters},
    )


@pytest.fixture
def stack(site, tmp_path):
    with running(stack_config(site, tmp_path, 30)) as s:  # a reply streams for about two seconds
        yield s


@pytest.fixture
def crowded_stack(site, tmp_path):
    """Two replies written at a time (LlmConcurrency 2): a third waits in the queue (while the test holds them)."""
    with running(stack_config(site, tmp_path, 40, LlmConcurrency="2")) as s:
        yield s


def hold(stack) -> Hold:
    """The stack's model keeps stalls of Hold.SECONDS until the test releases them (or the stack stops)."""
    held = Hold()
    stack.model.sleep = held.sleep
    return held


@pytest.fixture
def page(context):
    page = context.new_page()
    page.errors = []  # uncaught exceptions and console errors, checked by each test
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and OFFLINE not in msg.text
            and page.errors.append(f"console: {msg.text}"))
    return page


def open_chat(page, site, stack, participant: str, bot: Bot = BOTS["tutor"]) -> None:
    who = Identity(participant, "exp", "sess")
    query = urlencode({
        "url": stack.urls["websocket"],
        "token": mint_token(stack.secret, who),
        "ticket": mint_ticket(stack.secret, who, "main", bot),
    }, quote_via=quote)
    page.goto(f"{site.url}/demo.html?{query}")


@contextmanager
def replies_started(stack, site, participants: list[str]) -> Iterator[None]:
    """Other participants whose replies have started: each holds one of the LlmConcurrency
    slots until it is written. Their sockets close on exit."""
    with ExitStack() as sockets:
        for participant in participants:
            who = Identity(participant, "exp", "sess")
            ws = sockets.enter_context(connect(f"{stack.urls['websocket']}?token={quote(mint_token(stack.secret, who))}",
                                               origin=site.url, open_timeout=60, close_timeout=2))
            ws.send(json.dumps({"action": "start", "ticket": mint_ticket(stack.secret, who, "main", BOTS["tutor"])}))
            frames = (json.loads(ws.recv(timeout=60)) for _ in range(200))
            chat = next(f for f in frames if f["type"] == "chat")
            ws.send(json.dumps({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": "other",
                                "text": "Tell me about primes"}))
            assert next(f for f in frames if f["type"] in ("delta", "error"))["type"] == "delta"
        yield


def stored(stack, page) -> list[tuple[int, str, str]]:
    chat_id = page.evaluate("() => window.chat.client.chatId")
    return [(m.seq, m.role, m.text) for m in stack.store.messages(chat_id)]


def shown(page) -> list[tuple[int, str, str]]:
    return [(seq, role, text) for seq, role, text, _status in page.evaluate(SHOWN)]


def replies(page):
    return page.locator(".lc-msg--assistant[data-status=stored]")


# ---------------------------------------------------------------- tests


def test_a_participant_chats_goes_offline_and_comes_back(site, stack, context, page, tmp_path, readme_screenshot):
    open_chat(page, site, stack, "P1")
    log, status = page.locator(".lc-log"), page.locator(".lc-status")
    textarea, typing = page.locator(".lc-input"), page.locator(".lc-typing")
    expect(log.locator(".lc-msg--assistant .lc-text").first).to_have_text(BOTS["tutor"].opening_message)
    expect(status).to_have_attribute("data-state", "open")
    expect(log).to_have_attribute("role", "log")
    expect(log).to_have_attribute("aria-live", "polite")

    # Type, send with Enter: typing dots (or, once the service has queued the reply, "Waiting
    # for the assistant…" in their place), then the reply streams in while the input is locked.
    # The model stops after a few words until the test has looked.
    held = hold(stack)
    stack.model.add_faults([{"kind": "stall", "after_tokens": 3, "seconds": Hold.SECONDS}])
    page.evaluate(WATCH)
    textarea.click()
    page.keyboard.type("Can you explain fractions?")
    page.keyboard.press("Enter")
    expect(page.locator(".lc-msg--assistant[data-status=streaming] .lc-text")).not_to_be_empty()
    dot = "() => getComputedStyle(document.querySelector('.lc-dot')).animationName"
    assert page.evaluate(dot) == "none"  # the context prefers reduced motion: still dots
    expect(textarea).not_to_be_editable()
    page.keyboard.type("x")  # locked: nothing is typed
    expect(textarea).to_have_value("")
    held.release()
    expect(replies(page)).to_have_count(2)
    expect(textarea).to_be_editable()
    expect(typing).to_be_hidden()
    expect(page.locator(".lc-waiting")).to_be_hidden()

    final = replies(page).nth(1)
    final_text, final_seq = final.locator(".lc-text").text_content(), int(final.get_attribute("data-seq"))
    everything = page.evaluate("() => window.__seen")
    seen = [s for s in everything if s.get("seq") == final_seq]
    streaming = [s["text"] for s in seen if s["status"] == "streaming" and s["text"]]
    assert len(set(streaming)) >= 2, f"too few intermediate texts while streaming: {streaming}"
    assert all(final_text.startswith(t) for t in streaming)  # no gap, no garbage: always a prefix
    first_text = next(i for i, s in enumerate(everything) if s.get("seq") == final_seq and s["text"])
    assert any(s["typing"] or s["waiting"] for s in everything[:first_text])  # dots (or the notice) first
    assert not everything[first_text]["typing"]  # the dots go with the first text
    reused = "() => [...window.__nodes].every(n => n.isConnected) && window.__nodes.size"
    assert page.evaluate(reused) == page.locator(".lc-msg").count() == 3  # no node was ever redrawn
    assert stored(stack, page) == shown(page)

    # Offline: Chromium 156 leaves an open socket open (it fires `offline` and holds frames until
    # online; only new connections fail), and another version may close it: whatever it does,
    # the socket is dropped from the server's side too, as API Gateway does at its idle or 2-hour
    # limits. The reconnect then meets the offline network.
    [connection_id] = list(stack.gateway.sockets)
    context.set_offline(True)
    management = boto3.client(
        "apigatewaymanagementapi", endpoint_url=stack.urls["management"], region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )
    try:
        management.delete_connection(ConnectionId=connection_id)
    except management.exceptions.GoneException:  # Chromium closed it first
        pass
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).not_to_be_empty()

    # A message written while offline is queued, shown as waiting, and not stored yet: the page
    # has no socket at all, so nothing it sends can reach the service.
    before = len(stored(stack, page))
    page.keyboard.type("What about decimals?")
    page.keyboard.press("Enter")
    waiting = page.locator(".lc-msg--user").last
    expect(waiting).to_have_attribute("data-status", "pending")
    expect(waiting.locator(".lc-meta")).to_be_visible()
    expect(typing).to_be_hidden()
    assert wait_for(lambda: not stack.gateway.sockets)
    assert page.evaluate("() => window.chat.client.state") == "reconnecting"
    assert len(stored(stack, page)) == before

    # Online: the client reconnects at once, resends, and the answer streams in.
    context.set_offline(False)
    expect(replies(page)).to_have_count(3)
    expect(status).to_have_attribute("data-state", "open")
    expect(textarea).to_be_editable()
    messages = stored(stack, page)
    assert [text for _, role, text in messages if role == "user"] == ["Can you explain fractions?", "What about decimals?"]
    assert [seq for seq, _, _ in messages] == [1, 2, 3, 4, 5]
    assert shown(page) == messages  # everything the store holds, each message once
    assert page.errors == []

    # The picture for the README: the conversation, with a draft in the box.
    expect(status).to_be_empty()  # "Connected again." fades after 3 s
    textarea.fill("Could you give me an example with pizza slices?")
    textarea.blur()
    readme_screenshot(page, "chat-widget.png")


def test_text_is_never_markup_and_the_counter_stops_long_messages(site, stack, page):
    bot = Bot(name="xss", model="gpt-4o-mini", system_prompt="You are Eve, a tester.",
              opening_message=XSS, limits=Limits(max_chars=60))
    open_chat(page, site, stack, "P2", bot)
    log = page.locator(".lc-log")
    expect(log.locator(".lc-msg--assistant .lc-text").first).to_have_text(XSS)

    textarea, counter, send = page.locator(".lc-input"), page.locator(".lc-counter"), page.locator(".lc-send")
    payload = '<b>bold</b> <img src=y onerror="window.__xss=3">'
    textarea.fill(payload)
    expect(counter).to_have_text(f"{len(payload)} / 60")
    textarea.press("Enter")
    expect(replies(page)).to_have_count(2)
    expect(log.locator(".lc-msg--user .lc-text")).to_have_text(payload)
    assert page.locator(".lc-chat img, .lc-chat script, .lc-chat b").count() == 0
    assert page.evaluate("() => window.__xss") is None
    assert shown(page) == stored(stack, page)

    # Near the limit: a warning; over it: refused in the page (the server would refuse too).
    textarea.fill("y" * 55)
    expect(counter).to_have_class("lc-counter lc-counter--warn")
    expect(send).not_to_have_attribute("aria-disabled", "true")
    textarea.fill("z" * 61)
    expect(counter).to_have_class("lc-counter lc-counter--over")
    expect(counter).to_contain_text("61 / 60")
    expect(textarea).to_have_attribute("aria-invalid", "true")
    expect(send).to_have_attribute("aria-disabled", "true")
    textarea.press("Enter")
    send.click(force=True)  # aria-disabled: the click is ignored
    expect(page.locator(".lc-status")).to_have_attribute("data-state", "error")
    expect(page.locator(".lc-msg--user")).to_have_count(1)
    expect(textarea).to_have_value("z" * 61)  # nothing lost: the participant can shorten it
    # shortened, it goes; the service answers a socket's frames in order, so the refused text,
    # had it been sent, would be stored before this one
    textarea.fill("z" * 60)
    textarea.press("Enter")
    expect(replies(page)).to_have_count(3)
    assert [text for _, role, text in stored(stack, page) if role == "user"] == [payload, "z" * 60]
    assert page.errors == []


def test_keyboard_only(site, stack, page):
    open_chat(page, site, stack, "P3")
    expect(page.locator(".lc-msg--assistant").first).to_be_visible()
    expect(page.locator(".lc-status")).to_have_attribute("data-state", "open")

    order = []
    for _ in range(4):  # from the top of the page: the message list, then the text box
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.className"))
        if order[-1] == "lc-input":
            break
    assert order == ["lc-log", "lc-input"], order
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # focus is visible

    page.keyboard.type("First line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator(".lc-input")).to_have_value("First line\nsecond line")
    expect(page.locator(".lc-msg--user")).to_have_count(0)
    page.keyboard.press("Enter")
    expect(page.locator(".lc-msg--user .lc-text")).to_have_text("First line\nsecond line")
    expect(replies(page)).to_have_count(2)
    assert page.evaluate("() => document.activeElement.className") == "lc-input"  # focus stayed
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "lc-send"
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert shown(page) == stored(stack, page)
    assert page.errors == []


def test_a_failed_reply_offers_retry_and_retry_completes_it(site, stack, page):
    open_chat(page, site, stack, "P4")
    expect(page.locator(".lc-msg--assistant").first).to_be_visible()
    stack.model.add_faults([{"kind": "cut", "after_tokens": 4}])  # the model breaks off mid-reply
    page.locator(".lc-input").fill("Tell me about primes")
    page.locator(".lc-input").press("Enter")
    retry = page.locator(".lc-msg--failed .lc-retry")
    expect(retry).to_be_visible()
    expect(page.locator(".lc-msg--failed")).to_have_count(1)
    expect(page.locator(".lc-input")).to_be_editable()
    retry.focus()
    page.keyboard.press("Enter")
    expect(replies(page)).to_have_count(2)
    expect(page.locator(".lc-msg--failed")).to_have_count(0)
    messages = stored(stack, page)
    assert [role for _, role, _ in messages] == ["assistant", "user", "assistant"]
    assert shown(page) == messages
    assert page.errors == []


def test_a_paced_reply_is_stored_at_once_and_shown_a_word_at_a_time(site, stack, page):
    """A bot's pace is for the eyes only: the reply is stored as fast as the model writes it,
    the page shows it word by word (holding the composer meanwhile), and a reload shows it whole."""
    from dataclasses import replace

    page.clock.install()  # the words' waits pass when the test says, not before
    open_chat(page, site, stack, "P9", replace(BOTS["tutor"], pace=Pace(words_per_minute=30)))  # 2 s a word
    expect(page.locator(".lc-msg--assistant").first).to_be_visible()
    page.locator(".lc-input").fill("Tell me about primes")
    page.locator(".lc-input").press("Enter")
    assert wait_for(lambda: len(stored(stack, page)) == 3)
    full = stored(stack, page)[-1][2]
    assert len(full.split()) >= 5, full
    last = page.locator(".lc-msg--assistant").last.locator(".lc-text")
    expect(last).not_to_have_text("")
    partial = last.text_content()
    assert full.startswith(partial) and len(partial) < len(full)  # a few words of dozens, 2 s each
    expect(page.locator(".lc-input")).not_to_be_editable()
    page.clock.run_for(2_000 * len(full.split()) + 2_000)
    expect(last).to_have_text(full)
    expect(page.locator(".lc-input")).to_be_editable()
    page.reload()
    page.evaluate("() => window.chat.ready")
    assert shown(page)[-1] == stored(stack, page)[-1]  # the history at once, not paced again
    assert page.errors == []


def test_the_demo_page_takes_the_mint_commands_json(site, stack, page):
    from argparse import Namespace

    from local_gateway.__main__ import mint

    creds = mint(Namespace(data_dir=stack.config.data_dir, participant="P5", experiment="local", session="local",
                           chat_key="main", bot="tutor", ttl=600, url=stack.urls["websocket"]))
    page.goto(f"{site.url}/demo.html")
    expect(page.locator(".lc-chat")).to_have_count(0)
    page.get_by_label("The JSON printed by the mint command").fill("not json")
    page.get_by_role("button", name="Open the chat").click()
    expect(page.locator("#creds-problem")).not_to_be_empty()
    page.get_by_label("The JSON printed by the mint command").fill(json.dumps(creds, indent=2))
    page.get_by_role("button", name="Open the chat").click()
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(BOTS["tutor"].opening_message)
    expect(page.locator("#credentials")).to_be_hidden()
    page.reload()  # the credentials went to the address bar: a reload resumes the same chat
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(BOTS["tutor"].opening_message)
    assert shown(page) == stored(stack, page)
    assert page.errors == []


def test_a_refused_ticket_is_explained_and_locks_the_chat(site, stack, page):
    who = Identity("P6", "exp", "sess")
    query = urlencode({"url": stack.urls["websocket"], "token": mint_token(stack.secret, who),
                       "ticket": "gAAAAAB-not-a-ticket"}, quote_via=quote)
    page.goto(f"{site.url}/demo.html?{query}")
    status = page.locator(".lc-status")
    expect(status).to_have_attribute("data-state", "error")
    expect(status).to_have_text("This chat link is not valid. Please reload the page.")
    expect(page.locator(".lc-input")).not_to_be_editable()
    assert page.evaluate("() => window.chat.client.state") == "closed"
    assert page.errors == []


def test_a_reply_waiting_in_the_queue_says_so_then_streams(site, crowded_stack, page):
    stack = crowded_stack
    open_chat(page, site, stack, "P7")
    waiting, typing = page.locator(".lc-log .lc-waiting"), page.locator(".lc-typing")
    textarea = page.locator(".lc-input")
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(BOTS["tutor"].opening_message)
    expect(waiting).to_be_hidden()
    held = hold(stack)  # the others' replies stop after their first word until the test has looked
    stack.model.add_faults([{"kind": "stall", "after_tokens": 1, "seconds": Hold.SECONDS}] * 2)
    with replies_started(stack, site, ["P7-other-1", "P7-other-2"]):  # both slots taken
        page.evaluate(WATCH_QUEUE)
        textarea.fill("Can you explain fractions?")
        textarea.press("Enter")
        expect(waiting).to_be_visible()
        expect(waiting).to_have_text("Waiting for the assistant…")
        expect(typing).to_be_hidden()
        expect(textarea).not_to_be_editable()
        expect(page.locator(".lc-msg--assistant[data-status=queued]")).to_be_hidden()  # its words are the notice
        held.release()
        expect(replies(page)).to_have_count(2)
    expect(waiting).to_be_hidden()
    expect(typing).to_be_hidden()
    expect(textarea).to_be_editable()

    seen = [s for s in page.evaluate("() => window.__queue") if s["seq"] == 3 or s["waiting"]]
    notice = next(i for i, s in enumerate(seen) if s["waiting"])
    assert not any(s["text"] for s in seen[:notice]), seen[:notice + 1]  # the dots, then the notice, before any text
    assert all(not (s["waiting"] and (s["text"] or s["typing"])) for s in seen)  # never two at once
    assert not seen[-1]["waiting"] and seen[-1]["text"]
    assert shown(page) == stored(stack, page)
    assert page.errors == []


def test_labels_for_waiting_and_the_former_name_queued(site, page):
    page.goto(f"{site.url}/demo.html")  # any page of the origin: the widget drawn from a client never started
    texts = page.evaluate("""async () => {
      const { mountChat, DEFAULT_LABELS } = await import('./chat-widget.js');
      const { ChatClient } = await import('./chat-client.js');
      const client = new ChatClient({url: 'ws://127.0.0.1:9/never', token: 't', ticket: 'x'});
      const box = document.body.appendChild(document.createElement('div'));
      mountChat(box, {client, labels: {queued: 'Sent when you are back online', waitingForAssistant: 'In line…'}});
      client.send('Hello');
      return [box.querySelector('.lc-msg--user .lc-meta-text').textContent, box.querySelector('.lc-waiting').textContent,
              DEFAULT_LABELS.waitingForAssistant, DEFAULT_LABELS.waitingForConnection, 'queued' in DEFAULT_LABELS];
    }""")
    assert texts == ["Sent when you are back online", "In line…", "Waiting for the assistant…", "Waiting for the connection…", False]
    assert page.errors == []
