"""The oTree app in Chromium, used as a participant would, against the real local stack.

The stack runs in process (SQLite store and offline model in a temporary directory);
oTree runs as `otree prodserver1of2` from .venv-otree (`make otree`) in its own process
group, on a free loopback port, with a temporary database, stopped by its group at the
end. A session is created through oTree's REST API; the participant opens the session-wide
link, chats, reloads mid-reply, is held back by the server until the rule is met, moves
on, and the transcript is read back from oTree's custom export. Every wait is for something the
page shows, bounded generously for a busy machine; a reply that must still be streaming while the
test looks is held by the model until the test releases it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from local_gateway.offline_model import SYSTEM_FINGERPRINT, snapshot_of
from local_gateway.stack import StackConfig, running
from ws_handlers.model import PROVENANCE_FIELDS
from waiting import Hold

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make venv")
expect = sync_api.expect
expect.set_options(timeout=60_000)  # a bound for failures only: every expect ends when the page shows it

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "otree_app"
OTREE_BIN = ROOT / ".venv-otree" / "bin"

pytestmark = pytest.mark.skipif(not (OTREE_BIN / "otree").exists(), reason="oTree's venv is missing: run `make otree`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bots_module():
    """chat/bots.py, read as text: the test venv does not import oTree."""
    namespace: dict = {}
    exec((APP / "chat" / "bots.py").read_text(), namespace)
    return namespace["BOTS"]


def http(url: str, data: dict | None = None) -> bytes:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


@pytest.fixture(scope="module")
def stack_and_otree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("otree")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    static = APP / "_static" / "llm_chat"  # what `make otree` copies; kept in step here too
    static.mkdir(parents=True, exist_ok=True)
    for asset in [*(ROOT / "client_js").glob("*.js"), *(ROOT / "client_js").glob("*.css")]:
        shutil.copyfile(asset, static / asset.name)
    config = StackConfig(
        port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=tmp / "stack",
        model_ttft=0.5, model_tokens_per_second=30,  # a reply streams for about two seconds
        parameters={"AllowedOrigins": origin},
    )
    with running(config) as stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTREE_", "VIRTUAL_ENV"))}
        env |= {
            "PATH": f"{OTREE_BIN}{os.pathsep}{env.get('PATH', '')}",
            "DATABASE_URL": f"sqlite:///{tmp / 'otree.sqlite3'}",
            "CHAT_WS_URL": stack.urls["websocket"],
            "CHAT_TICKET_SECRET": stack.secret,
            "CHAT_STORE": str(config.data_dir / "chat.sqlite3"),
            "CHAT_EXPERIMENT": "otree-test",
        }
        # oTree keeps its database in ./db.sqlite3 whatever DATABASE_URL says: run a copy of the project
        project = tmp / "otree_project"
        shutil.copytree(APP, project, ignore=shutil.ignore_patterns("db.sqlite3", "__temp*", "__pycache__"))
        env["LLM_CHAT_ROOT"] = str(ROOT)
        log = (tmp / "otree.log").open("w")
        server = subprocess.Popen(
            [str(OTREE_BIN / "otree"), "prodserver1of2", f"127.0.0.1:{port}"], cwd=project, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, (tmp / "otree.log").read_text()
                try:
                    http(f"{origin}/api/otree_version")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "oTree did not start within 60 s"
                    time.sleep(0.3)
            yield stack, origin, tmp / "otree.log"
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(server.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    server.wait(60)
                    os.killpg(server.pid, signal.SIGKILL)  # the group's other members (timeoutsubprocess)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    continue
                break
            log.close()



@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 820}, reduced_motion="reduce")
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(f"console: {msg.text}"))
    yield page
    context.close()


SHOWN = """() => [...document.querySelectorAll('.lc-msg')].filter(m => !m.hidden).map(m => [
  m.dataset.seq ? Number(m.dataset.seq) : null, m.dataset.role, m.querySelector('.lc-text').textContent])"""


def replies(page):
    return page.locator(".lc-msg--assistant[data-status=stored]")


def test_the_refusal_stays_while_chat_time_is_left_and_goes_once_it_is_spent(stack_and_otree, page):
    """The page drops the banner of a refused Next by the server's whole rule, time included: with
    messages enough but time left it stays; once the time is spent (the page's clock moved on), it goes."""
    _, origin, _ = stack_and_otree
    rule = {"min_user_messages": 1, "min_chat_seconds": 600}
    session = json.loads(http(f"{origin}/api/sessions", {
        "session_config_name": "chat_demo", "num_participants": 1, "modified_session_config_fields": rule}))
    page.clock.install()
    page.goto(session["session_wide_url"])
    refusal, progress = page.locator(".otree-form-errors"), page.locator("#chat-progress")
    expect(progress).to_have_text("Messages sent: 0 of 1.")
    page.locator(".lc-input").fill("Hello")
    page.locator(".lc-input").press("Enter")
    expect(replies(page)).to_have_count(2)
    expect(progress).to_have_text("Please keep chatting a little longer.")

    page.locator(".otree-btn-next").click()
    expect(refusal).to_contain_text("at least 600 seconds")
    expect(progress).to_have_text("Please keep chatting a little longer.")
    page.clock.fast_forward("10:00")
    expect(refusal).to_have_count(0)
    expect(progress).to_have_text("You can move on whenever you like.")
    assert page.errors == [], page.errors


def test_a_participant_chats_in_otree_and_the_transcript_is_exported(stack_and_otree, page, tmp_path, readme_screenshot):
    stack, origin, otree_log = stack_and_otree
    bots = bots_module()
    session = json.loads(http(f"{origin}/api/sessions", {"session_config_name": "chat_demo", "num_participants": 2}))
    code = session["code"]

    page.goto(session["session_wide_url"])
    expect(page).to_have_url(re.compile(r"/chat/Chat/"))
    participant = page.url.split("/p/")[1].split("/")[0]
    opening = next(iter(bots.values())).opening_message  # the same for both bots: it reveals nothing
    expect(page.locator(".lc-msg--assistant .lc-text").first).to_have_text(opening)
    expect(page.locator(".lc-status")).to_have_attribute("data-state", "open")

    # Nothing about the treatment reaches the browser: js_vars is the three opaque credentials.
    assert sorted(page.evaluate("() => Object.keys(js_vars)")) == ["ticket", "token", "url"]
    js_vars = json.dumps(page.evaluate("() => js_vars"))
    html = page.content()
    for bot in bots.values():
        for secret_text in (bot.name, bot.model, bot.system_prompt[:30], bot.system_prompt[-30:]):
            assert secret_text not in html and secret_text not in js_vars, secret_text

    # First message, a streamed reply (the model stops after a few words until the test has seen them).
    held = Hold()
    stack.model.sleep = held.sleep
    stack.model.add_faults([{"kind": "stall", "after_tokens": 3, "seconds": Hold.SECONDS}])
    box = page.locator(".lc-input")
    box.fill("Hello Ada, can you help me with fractions?")
    box.press("Enter")
    expect(page.locator(".lc-msg--assistant[data-status=streaming]")).to_have_count(1)
    held.release()
    expect(replies(page)).to_have_count(2)

    # Moving on now is refused by the server: one message of the two the session asks for.
    page.locator(".otree-btn-next").click()
    refusal = page.locator(".otree-form-errors")
    expect(refusal).to_contain_text("at least 2 messages")
    expect(page).to_have_url(re.compile(r"/chat/Chat/"))
    expect(page.locator("#chat-progress")).to_have_text("Messages sent: 1 of 2.")

    # Second message: the rule holds once it is stored, so the refusal's banner goes (issue 13, item 13).
    held.close()
    stack.model.add_faults([{"kind": "stall", "after_tokens": 3, "seconds": Hold.SECONDS}])
    box.fill("What is 1/2 + 1/3?")
    box.press("Enter")
    expect(page.locator(".lc-msg--assistant[data-status=streaming] .lc-text")).not_to_be_empty()
    expect(refusal).to_have_count(0)
    expect(page.locator("#chat-progress")).to_have_text("You can move on whenever you like.")
    # Reload while the reply streams, on the page the refused Next left: the reload must not submit that
    # form again (the rule holds now: it would move the participant on mid-reply; issue 13, item 12). The
    # page stays, and the history comes back, reply included.
    page.reload()
    expect(page).to_have_url(re.compile(r"/chat/Chat/"))
    expect(page.locator(".lc-status")).to_have_attribute("data-state", "open")
    held.release()
    expect(replies(page)).to_have_count(3)
    chat_id = page.evaluate("() => window.chat.client.chatId")
    stored = [(m.seq, m.role, m.text) for m in stack.store.messages(chat_id)]
    assert [role for _, role, _ in stored] == ["assistant", "user", "assistant", "user", "assistant"]
    assert [tuple(x) for x in page.evaluate(SHOWN)] == stored
    chat = stack.store.get_chat(chat_id)
    assert chat.identity.participant == participant and chat.identity.session == code
    assert chat.bot.name in bots  # the bot oTree assigned, carried only inside the ticket

    # The monitor (admin report) shows the progress, read from the store.
    monitor = page.context.new_page()
    monitor.goto(f"{origin}/AdminReport/{code}")
    row = monitor.locator(f'#chat-monitor tr[data-participant="{participant}"]')  # codes may start with a digit
    expect(row.locator(".user-messages")).to_have_text("2")
    expect(row).to_contain_text(chat.bot.name)
    monitor.close()

    # The picture for the README.
    expect(page.locator(".lc-status")).to_be_empty()
    box.fill("Could you show me with a drawing?")
    box.blur()
    readme_screenshot(page, "otree-chat.png")

    # Now the rule holds: on to the last page.
    box.fill("")
    page.locator(".otree-btn-next").click()
    expect(page.locator("body")).to_contain_text("You sent 2 messages")
    assert page.errors == [], page.errors

    # The custom export: one row per stored message, read by oTree from the store.
    raw = http(f"{origin}/api/export_app_custom?app=chat&session_code={code}").decode("utf-8-sig")
    rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["participant_code"] == participant]
    assert [(int(r["seq"]), r["role"], r["text"]) for r in rows] == stored
    for r in rows:
        assert (r["session_code"], r["round_number"], r["chat_key"], r["chat_id"], r["bot"]) == (
            code, "1", "chat-r1", chat_id, chat.bot.name)
        assert r["created_at"].startswith("20")
    assert [r["model"] for r in rows if r["role"] == "assistant"][1:] == [chat.bot.model] * 2
    assert all(int(r["completion_tokens"]) > 0 for r in rows[2::2])
    # Each reply's provenance in the last four columns: what produced it, as the service stored it.
    assert list(rows[0])[-4:] == list(PROVENANCE_FIELDS)
    provenance = [tuple(r[f] for f in PROVENANCE_FIELDS) for r in rows]
    assert provenance == [tuple(getattr(m.provenance, f) or "" for f in PROVENANCE_FIELDS) if m.provenance else ("",) * 4
                          for m in stack.store.messages(chat_id)]
    prompt_sha256 = hashlib.sha256(chat.bot.system_prompt.encode()).hexdigest()
    assert {(r["model_snapshot"], r["system_fingerprint"], r["system_prompt_sha256"]) for r in rows[2::2]} == {
        (snapshot_of(chat.bot.model), SYSTEM_FINGERPRINT, prompt_sha256)}  # the offline model answered
    assert all(json.loads(r["parameters"])["model"] == chat.bot.model for r in rows[2::2])
    assert set(provenance[:2] + provenance[3:4]) == {("",) * 4}  # the opening and the participant's messages
    # no error in the app's code (oTree's own websocket may log a failed closing handshake on navigation)
    tracebacks = otree_log.read_text().split("Traceback (most recent call last):")[1:]
    ours = [t for t in tracebacks if "otree_project" in t or "ws_handlers" in t or "local_gateway" in t]
    assert not ours, ours[0]
