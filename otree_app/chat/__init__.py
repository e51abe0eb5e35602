"""A chat with an LLM bot, through the WebSocket chat service.

- Treatments: the bots of chat/bots.py named in the session config's `treatments`, assigned
  in balanced, shuffled blocks when the session is created and kept on the participant
  (`participant.chat_bot`): a reload cannot change them.
- The page gets only the WebSocket URL, a connect token and an opaque, encrypted chat
  ticket (js_vars). The bot, its model and prompt stay on this server.
- Moving on is decided here, from the stored transcript: at least `min_user_messages`
  participant messages (and `min_chat_seconds` on the page), whatever the page does.
- `custom_export` writes the stored transcript, one row per message (each reply with its
  provenance: the model snapshot that answered, its parameters, the system prompt's hash), and
  `vars_for_admin_report` shows each participant's progress.
"""

import random
import time
from datetime import datetime, timezone

from otree.api import BaseConstants, BaseGroup, BasePlayer, BaseSubsession, Page, models
from ws_handlers.store import chat_id_for, legacy_chat_id_for
from ws_handlers.tickets import Identity, mint_ticket, mint_token

from . import service
from .bots import BOTS

doc = "A chat with an LLM bot; the bot (treatment) is assigned on the server and never shown to the page."


class C(BaseConstants):
    NAME_IN_URL = "chat"
    PLAYERS_PER_GROUP = None
    NUM_ROUNDS = 1


class Subsession(BaseSubsession):
    pass


class Group(BaseGroup):
    pass


class Player(BasePlayer):
    chat_experiment = models.StringField(doc="experiment name the chat is filed under in the service")
    chat_key = models.StringField(doc="the chat's key within the participant's chats")
    chat_id = models.StringField(doc="the service's chat id (ws_handlers.store.chat_id_for)")
    chat_started_at = models.FloatField(doc="epoch seconds when the chat page was first shown")
    user_messages = models.IntegerField(doc="participant messages stored when the participant moved on")
    chat_messages = models.IntegerField(doc="all messages stored when the participant moved on")


def treatment_names(session):
    names = session.config.get("treatments") or sorted(BOTS)
    unknown = [n for n in names if n not in BOTS]
    if unknown:
        raise ValueError(f"treatments {unknown} are not bots of chat/bots.py ({sorted(BOTS)})")
    return list(names)


def creating_session(subsession: Subsession):
    session = subsession.session
    if subsession.round_number == 1:
        # Balanced randomisation: shuffled blocks holding each treatment once.
        names = treatment_names(session)
        order = []
        while len(order) < len(subsession.get_players()):
            block = names[:]
            random.shuffle(block)
            order.extend(block)
        for player, name in zip(subsession.get_players(), order):
            player.participant.chat_bot = name
    for player in subsession.get_players():
        player.chat_experiment = service.experiment()
        player.chat_key = f"chat-r{player.round_number}"
        player.chat_id = chat_id_for(identity(player), player.chat_key)
        # Minted once here so that a bot whose ticket cannot fit in a WebSocket frame stops the
        # session's creation, for the researcher, with mint_ticket's message naming the prompt's
        # size, instead of failing every participant's chat page.
        ticket(player)


def identity(player: Player) -> Identity:
    return Identity(player.participant.code, player.chat_experiment, player.session.code)


def ticket(player: Player) -> str:
    """The player's chat ticket; a ValueError (TicketTooLarge) says why a bot cannot have one."""
    return mint_ticket(service.ticket_secret(), identity(player), player.chat_key, BOTS[player.participant.chat_bot])


def rules(player: Player) -> tuple[int, int]:
    config = player.session.config
    return int(config.get("min_user_messages", 2)), int(config.get("min_chat_seconds", 0))


def chat_ids(players) -> dict[tuple, str]:
    """{(participant code, chat key): the id of the chat the service stores for the player}, for the
    players who have one, found as the service's `start` finds it: the current id, else the id chats
    had before ids named the session, each accepted only if stored for the player's identity (session
    included). Not the id kept on the player: a session created before the upgrade holds old ids,
    which its chats have only if opened before it."""
    reader = service.store()
    found = {}
    for id_for in (chat_id_for, legacy_chat_id_for):
        wanted = {id_for(identity(p), p.chat_key): p for p in players
                  if p.field_maybe_none("chat_key") and _who(p) not in found}
        for chat_id, stored in reader.identities(list(wanted)).items():
            p = wanted[chat_id]
            if stored == (p.chat_experiment, p.session.code, p.participant.code, p.chat_key):
                found[_who(p)] = chat_id
    return found


def _who(player) -> tuple:
    return player.participant.code, player.field_maybe_none("chat_key")


def progress(players):
    """{(participant code, chat key): {chat_id, user_messages, messages, last_activity}} read from the
    service's store, for the players who have a chat."""
    ids = chat_ids(players)
    seen = service.store().progress(list(ids.values()))
    return {who: {"chat_id": chat_id, **seen.get(chat_id, {})} for who, chat_id in ids.items()}


def chat_of(player, seen) -> dict:
    """The player's entry of `progress` ({} before the chat exists)."""
    return seen.get(_who(player), {})


# ---------------------------------------------------------------- pages


class Chat(Page):
    @staticmethod
    def vars_for_template(player: Player):
        if player.field_maybe_none("chat_started_at") is None:
            player.chat_started_at = time.time()
        min_messages, min_seconds = rules(player)
        # seconds_left: for the page's hint, counted here as error_message counts it (no clock skew)
        left = max(0, min_seconds - (time.time() - player.chat_started_at))
        return dict(min_user_messages=min_messages, min_chat_seconds=min_seconds, seconds_left=round(left, 1))

    @staticmethod
    def js_vars(player: Player):
        # Only these three opaque strings reach the browser.
        return dict(
            url=service.ws_url(),
            token=mint_token(service.ticket_secret(), identity(player)),
            ticket=ticket(player),
        )

    @staticmethod
    def error_message(player: Player, values):
        min_messages, min_seconds = rules(player)
        sent = chat_of(player, progress([player])).get("user_messages", 0)
        if sent < min_messages:
            return f"Please send at least {min_messages} messages in the chat before moving on (so far: {sent})."
        started = player.field_maybe_none("chat_started_at") or time.time()
        if time.time() - started < min_seconds:
            return f"Please keep chatting for at least {min_seconds} seconds before moving on."

    @staticmethod
    def before_next_page(player: Player, timeout_happened):
        seen = chat_of(player, progress([player]))
        player.chat_id = seen.get("chat_id", player.chat_id)
        player.user_messages = seen.get("user_messages", 0)
        player.chat_messages = seen.get("messages", 0)


class Results(Page):
    @staticmethod
    def vars_for_template(player: Player):
        return dict(user_messages=player.field_maybe_none("user_messages") or 0)


page_sequence = [Chat, Results]


# ---------------------------------------------------------------- the experimenter's views


def _when(epoch):
    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), timezone.utc).isoformat(timespec="milliseconds")


# Provenance last, so that the columns exports had before it keep their places.
EXPORT_HEADER = [
    "session_code", "participant_code", "participant_label", "round_number", "chat_key", "chat_id", "bot",
    "seq", "role", "text", "created_at", "prompt_tokens", "completion_tokens", "model", "latency_ms",
    *service.PROVENANCE_FIELDS,
]


def custom_export(players):
    """The transcripts as the service stored them: one row per message (read server-side), each reply
    with its provenance (empty for the participant's messages, the opening and older replies)."""
    yield EXPORT_HEADER
    reader = service.store()
    ids = chat_ids(players)
    for player in players:
        chat_id = ids.get(_who(player))
        if not chat_id:
            continue
        participant = player.participant
        bot = participant.vars.get("chat_bot") or ""
        for m in reader.messages(chat_id):
            yield [
                player.session.code, participant.code, participant.label or "", player.round_number,
                player.chat_key, chat_id, m.get("bot_name") or bot, m["seq"], m["role"], m["text"],
                _when(m["created_at"]), m.get("prompt_tokens") or 0, m.get("completion_tokens") or 0,
                m.get("model") or "", "" if m.get("latency_ms") is None else m["latency_ms"],
                *(m.get(name) or "" for name in service.PROVENANCE_FIELDS),
            ]


def vars_for_admin_report(subsession: Subsession):
    """The monitor: each participant's chat progress, read from the store."""
    players = subsession.get_players()
    seen = progress(players)
    now = time.time()
    min_messages = int(subsession.session.config.get("min_user_messages", 2))
    rows = []
    for p in players:
        chat = chat_of(p, seen)
        last = chat.get("last_activity")
        rows.append(dict(
            participant=p.participant.code,
            label=p.participant.label or "",
            bot=p.participant.vars.get("chat_bot", ""),
            page=p.participant._current_page_name or "",
            user_messages=chat.get("user_messages", 0),
            messages=chat.get("messages", 0),
            last_activity=_when(last),
            idle=f"{int(now - float(last))} s ago" if last is not None else "not started",
            done=chat.get("user_messages", 0) >= min_messages,
        ))
    return dict(chat_rows=rows, min_user_messages=min_messages, store=str(service.store_label()))
