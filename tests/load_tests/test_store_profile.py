"""The store profile counts what one participant costs in DynamoDB on the real adapter, call by call."""

from __future__ import annotations

import json

import pytest

from load_tests import store_profile
from ws_handlers.bot import Bot, Limits
from ws_handlers.store import Store


@pytest.mark.timeout(600)  # a child process on moto: slow on a busy machine, bounded all the same
def test_every_call_of_a_participant_goes_through_the_store_and_is_priced():
    bot = Bot("tutor", "gpt-4o-mini", "You are a tutor.", opening_message="Hello!", limits=Limits(max_chars=2000))
    shape = store_profile.Shape(json.dumps(bot.to_dict()), messages=3, user_chars=1500, reply_chars=3000)
    profile = store_profile.profile(shape)
    port = {name for name in dir(Store) if not name.startswith("_")}
    assert {r.method for r in profile.requests} <= port, "a DynamoDB call outside the Store port"
    actions = {r.action for r in profile.requests}
    assert {"connect", "start", "refused send", "disconnect", "probe: frame (new window)",
            "probe: frame (same window)"} <= actions
    for k in (1, 2, 3):
        assert profile.units(f"send {k}").wru > 0 and profile.units(f"reply {k}").wru > 0
        assert profile.probe(f"probe: renewal (reply {k})").wru > 0
        assert profile.probe(f"probe: rebind (reply {k})").rru > 0
    # each reply reads the chat so far: 4.5 KB of text more per turn
    assert profile.units("reply 3").rru > profile.units("reply 2").rru > profile.units("reply 1").rru
    assert profile.units("refused send").wru == 0  # refused before anything is stored
    assert profile.memory_mb["ReplyFunction"] > 0 and profile.rate_limit_window > 0
    # a shorter shape is served by the longer run: its first turns are the same
    assert store_profile.profile(store_profile.Shape(shape.bot, 2, 1500, 3000)) is profile
