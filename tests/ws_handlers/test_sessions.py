"""A chat belongs to one (experiment, session, participant, chat key).

A participant code reused in a new session (lab seat labels, Prolific IDs used as labels) is
another person: they get a new chat with the bot their ticket names and never see the old
session's transcript. Chats stored before ids named the session still resume, in their own
session only.
"""

from __future__ import annotations

import json
from typing import Any

from harness import EXPERIMENT, SESSION, Harness, bot

from ws_handlers.store import Chat, Message, chat_id_for, legacy_chat_id_for
from ws_handlers.tickets import Identity, mint_ticket, mint_token

OLD, NEW = Identity("P1", EXPERIMENT, SESSION), Identity("P1", EXPERIMENT, "sess2")


def _connect(h: Harness, cid: str, who: Identity) -> None:
    assert h.connect(cid, token=mint_token(h.secret, who)) == {"statusCode": 200}


def _start(h: Harness, cid: str, who: Identity, **bot_overrides: Any) -> dict[str, Any]:
    [chat] = h.send(cid, {"action": "start", "ticket": mint_ticket(h.secret, who, "main", bot(**bot_overrides))})
    assert chat["type"] == "chat", chat
    return chat


def _say(h: Harness, cid: str, chat_id: str, cmid: str, text: str) -> list[dict[str, Any]]:
    frames = h.send(cid, {"action": "send", "chat_id": chat_id, "client_msg_id": cmid, "text": text})
    assert frames[0]["type"] == "ack" and frames[-1]["type"] == "message", frames
    return frames


def _texts(chat: dict[str, Any]) -> list[str]:
    return [m["text"] for m in chat["messages"]]


def test_a_code_reused_in_a_new_session_gets_a_new_empty_chat_with_its_own_bot(make_harness):
    h = make_harness(MAX_CHATS_PER_PARTICIPANT="1")  # the new session's chat is not counted against the old one's
    _connect(h, "old", OLD)
    first = _start(h, "old", OLD, name="bot-a", model="offline-a", opening_message="Hello from A. OLDMARK")
    _say(h, "old", first["chat_id"], "m1", "My secret answer is OLDMARK-42")

    _connect(h, "new", NEW)
    second = _start(h, "new", NEW, name="bot-b", model="offline-b", opening_message="Hello from B.")
    assert second["chat_id"] != first["chat_id"] and second["chat_id"] == chat_id_for(NEW, "main")
    assert _texts(second) == ["Hello from B."] and second["limits"]["user_messages"] == 0
    assert h.store.get_chat(second["chat_id"]).bot.name == "bot-b"

    # both sessions' chats keep working, each with its own bot
    _say(h, "new", second["chat_id"], "m1", "Hi, I am new here")
    _say(h, "old", first["chat_id"], "m2", "Still there?")
    assert h.store.get_message(second["chat_id"], 3).model == "offline-b"
    assert h.store.get_message(first["chat_id"], 5).model == "offline-a"
    [history] = h.send("new", {"action": "history", "chat_id": second["chat_id"], "after_seq": 0})
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3]
    assert _start(h, "new", NEW)["chat_id"] == second["chat_id"]  # a reload resumes the new session's chat
    assert _texts(_start(h, "old", OLD))[:3] == ["Hello from A. OLDMARK", "My secret answer is OLDMARK-42",
                                                  h.store.get_message(first["chat_id"], 3).text]

    # the old session's chat is another participant's to the new socket, and nothing of it ever reached it
    [refused] = h.send("new", {"action": "history", "chat_id": first["chat_id"], "after_seq": 0})
    assert refused["code"] == "chat_not_found"
    old_texts = [m.text for m in h.store.messages(first["chat_id"])]
    for frame in h.frames("new"):
        shown = json.dumps(frame, ensure_ascii=False)
        assert "OLDMARK" not in shown and not any(text in shown for text in old_texts), frame


def _legacy_chat(h: Harness, who: Identity, opening: str) -> Chat:
    """A chat as the service stored it before ids named the session."""
    chat_id = legacy_chat_id_for(who, "main")
    chat = Chat(chat_id, who, "main", bot(name="bot-old"), 1_800_000_000.0, next_seq=2)
    return h.store.open_chat(chat, Message(chat_id, 1, "assistant", opening, chat.created_at), 5)


def test_a_chat_stored_under_the_old_id_resumes_in_its_session(harness):
    old = _legacy_chat(harness, OLD, "Hello from before the upgrade.")
    _connect(harness, "c1", OLD)
    resumed = _start(harness, "c1", OLD, name="bot-new")  # a session in progress during the upgrade
    assert resumed["chat_id"] == old.chat_id != chat_id_for(OLD, "main")
    assert _texts(resumed) == ["Hello from before the upgrade."]
    _say(harness, "c1", old.chat_id, "m1", "Still the same chat?")
    assert harness.store.get_chat(old.chat_id).bot.name == "bot-old"  # its treatment stays
    assert harness.store.get_chat(chat_id_for(OLD, "main")) is None
    assert [c.chat_id for c in harness.store.experiment_chats(EXPERIMENT)] == [old.chat_id]  # exports list it


def test_a_chat_stored_under_the_old_id_is_never_resumed_by_another_session(harness):
    old = _legacy_chat(harness, OLD, "OLDMARK transcript of session one.")
    _connect(harness, "c1", NEW)  # the same code, the same chat key, another session
    fresh = _start(harness, "c1", NEW, opening_message="Welcome.")
    assert fresh["chat_id"] == chat_id_for(NEW, "main") != old.chat_id
    assert _texts(fresh) == ["Welcome."] and "OLDMARK" not in json.dumps(harness.frames("c1"))
    assert [m.text for m in harness.store.messages(old.chat_id)] == ["OLDMARK transcript of session one."]


def test_start_refuses_a_chat_stored_under_its_id_for_someone_else(harness):
    """Ids are hashes: a record under the ticket's id whose stored owner differs (a collision, a
    hand-edited table) is refused like another participant's chat, never shown."""
    forged = Chat(chat_id_for(NEW, "main"), OLD, "main", bot(), 1_800_000_000.0, next_seq=2)
    harness.store.open_chat(forged, Message(forged.chat_id, 1, "assistant", "OLDMARK", forged.created_at), 5)
    _connect(harness, "c1", NEW)
    [refused] = harness.send("c1", {"action": "start", "ticket": mint_ticket(harness.secret, NEW, "main", bot())})
    assert refused["type"] == "error" and refused["code"] == "chat_not_found"
    assert "OLDMARK" not in json.dumps(harness.frames("c1"))
