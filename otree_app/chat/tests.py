"""oTree's bots (`make test-otree`). Bots run no JavaScript, so they cannot chat through the
widget; they check what the server decides. On the chat page a bot first tries to move on
with nothing stored (the server must refuse), then writes the chat the service would have
stored, with the local stack's own store code, into the throwaway CHAT_STORE, and moves on.
The rule is the same for bots and humans: nothing here weakens it.
"""

import os
import time
import uuid

from otree.api import Bot, Submission, SubmissionMustFail, expect
from ws_handlers.model import Provenance  # standard library only, as __init__'s ws_handlers imports

from . import Chat, custom_export, identity, rules, service
from .bots import BOTS

#: The provenance of the bots' last reply (the earlier ones have none, as replies stored before it).
PROVENANCE = Provenance(model_snapshot="gpt-4o-mini-2024-07-18", system_fingerprint="fp_bots",
                        parameters='{"model":"gpt-4o-mini","temperature":0.7}', system_prompt_sha256="0" * 64)
PROVENANCE_FIELDS = service.PROVENANCE_FIELDS


def _bot_store():
    from ws_handlers.adapters.sqlite import SqliteStore  # stdlib sqlite3 + ws_handlers only

    path = os.environ.get("CHAT_STORE", "")
    if not path or path.startswith("dynamodb:") or os.path.abspath(path) == str(service.DEFAULT_STORE):
        raise RuntimeError("bots write a chat: run them with CHAT_STORE set to a throwaway SQLite file (make test-otree)")
    return SqliteStore(path)


def stored_chat_id(player):
    """The id the service stores the player's chat under. Half the bots' chats have the id chats had
    before ids named the session (a session in progress when the service was upgraded): the server
    finds a chat by its identity, whatever its id and whatever the player holds."""
    from ws_handlers.store import legacy_chat_id_for

    return legacy_chat_id_for(identity(player), player.chat_key) if player.id_in_group % 2 else player.chat_id


def earlier_session(player):
    """The identity and old-style id of a chat the same participant code left in an earlier session:
    the server must neither count it for this player nor export it."""
    from ws_handlers.identity import Identity
    from ws_handlers.store import legacy_chat_id_for

    earlier = Identity(player.participant.code, player.chat_experiment, "earlier-session")
    return earlier, legacy_chat_id_for(earlier, player.chat_key)


def store_exchanges(player, count, who=None, chat_id=None, provenance=None):
    """What `count` more exchanges leave in the service's store (the chat is opened first): the
    player's chat, or the one `who` has under `chat_id`; the replies with `provenance` (None: as
    replies stored before provenance was recorded)."""
    from ws_handlers.store import Chat as StoredChat, Lease, Message

    bot = BOTS[player.participant.chat_bot]
    who, chat_id = who or identity(player), chat_id or stored_chat_id(player)
    store = _bot_store()
    try:
        chat = store.get_chat(chat_id)
        if chat is None:
            now = time.time()
            opening = Message(chat_id, 1, "assistant", bot.opening_message, now)
            chat = StoredChat(chat_id, who, player.chat_key, bot, created_at=now, next_seq=2)
            store.open_chat(chat, opening, max_chats=5)
        for i in range(count):
            chat = store.get_chat(chat_id)
            seq, now = chat.next_seq, time.time()
            lease = Lease(uuid.uuid4().hex, now + 60, seq)
            sent = Message(chat_id, seq, "user", f"message {seq}", now, client_msg_id=uuid.uuid4().hex)
            store.append_user_message(chat, sent, lease, "bot", bot.limits.max_user_messages, now)
            reply = Message(chat_id, seq + 1, "assistant", f"reply {seq + 1}", time.time(),
                            prompt_tokens=10, completion_tokens=5, model=bot.model, latency_ms=42,
                            provenance=provenance)
            assert store.finish_reply(store.get_chat(chat_id), reply, lease.turn_id)
    finally:
        store.close()


class PlayerBot(Bot):
    def play_round(self):
        player = self.player
        treatments = self.session.config["treatments"]
        expect(player.participant.chat_bot, "in", treatments)
        # balanced: with 4 participants and 2 bots, each bot twice
        counts = [p.participant.chat_bot for p in self.subsession.get_players()]
        expect(max(counts.count(t) for t in treatments) - min(counts.count(t) for t in treatments), "<=", 1)

        # The page carries no trace of the treatment.
        bot = BOTS[player.participant.chat_bot]
        for secret_text in (bot.name, bot.model, bot.system_prompt[:40]):
            expect(secret_text, "not in", self.html)

        min_messages, _ = rules(player)
        if not player.id_in_group % 2:  # beside the players whose own chats have old-style ids
            store_exchanges(player, min_messages, *earlier_session(player))
        yield SubmissionMustFail(Chat, check_html=False)  # nothing stored: refused on the server
        store_exchanges(player, min_messages - 1)
        yield SubmissionMustFail(Chat, check_html=False)  # one message short: still refused
        store_exchanges(player, 1, provenance=PROVENANCE)
        yield Submission(Chat, check_html=False)
        # the Results page: before_next_page recorded the count read from the store
        expect(f"You sent {min_messages} messages", "in", self.html)

        rows = list(custom_export([player]))
        expect(len(rows), 1 + 2 * min_messages + 1)
        header = rows[0]
        mine = [dict(zip(header, r)) for r in rows[1:]]
        expect([r["seq"] for r in mine], list(range(1, 2 * min_messages + 2)))
        expect({r["participant_code"] for r in mine}, {player.participant.code})
        expect({r["chat_id"] for r in mine}, {stored_chat_id(player)})
        expect({r["bot"] for r in mine}, {bot.name})
        # Provenance: appended after the columns the export had before; only the last reply has it.
        expect(header[-4:], list(PROVENANCE_FIELDS))
        provenance = [tuple(r[f] for f in PROVENANCE_FIELDS) for r in mine]
        expect(provenance[-1], tuple(getattr(PROVENANCE, f) for f in PROVENANCE_FIELDS))
        expect(set(provenance[:-1]), {("",) * 4})
        # Results is the last page: nothing to submit
