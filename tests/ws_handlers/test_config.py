"""Settings: documented defaults, clear errors for bad values."""

import pytest

from ws_handlers.config import NAMES, VARIABLES, Settings


def test_defaults_are_usable():
    s = Settings.from_env({})
    assert s.connections_table == "chat-connections" and s.max_chats_per_participant == 5
    assert s.allowed_origins == frozenset() and s.allow_missing_origin is True and s.paused is False


def test_lists_and_switches():
    s = Settings.from_env({"ALLOWED_ORIGINS": " https://a.org, https://b.org ,", "CHAT_PAUSED": "yes"})
    assert s.allowed_origins == {"https://a.org", "https://b.org"} and s.paused is True


@pytest.mark.parametrize("name, value", [("CHAT_PAUSED", "maybe"), ("MAX_MESSAGE_CHARS", "many"), ("MAX_MESSAGE_CHARS", "0")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_every_variable_is_documented():
    assert len(NAMES) == len(VARIABLES)
    assert all(v.help.endswith(".") for v in VARIABLES)


def test_a_dead_reply_frees_its_chat_well_within_20_seconds():
    """A running reply's lease lapses at most REPLY_LEASE_SECONDS after its function died (its
    last renewal set it that far ahead); a queued reply keeps its longer lease (issue 13, item 9)."""
    s = Settings.from_env({})
    assert s.reply_lease_seconds <= 15 < s.reply_queue_wait_seconds
