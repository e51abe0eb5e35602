"""A bot's fields as the experiment server or a study file gives them."""

from __future__ import annotations

import pytest

from ws_handlers.bot import Bot, Pace

FIELDS = {"name": "ada", "model": "gpt-4o-mini", "system_prompt": "You are Ada."}


def test_a_pace_travels_with_the_bot_and_a_bot_without_one_reads_as_before():
    paced = Bot.from_dict({**FIELDS, "pace": {"words_per_minute": 200, "jitter": 0.3}})
    assert paced.pace == Pace(200, 0.3) and Bot.from_dict(paced.to_dict()) == paced
    assert Bot.from_dict(FIELDS).pace is None  # tickets and chats stored before pacing existed


@pytest.mark.parametrize(
    ("pace", "says"),
    [
        ({"words_per_minute": 10}, "words_per_minute"),
        ({"words_per_minute": 250.5}, "words_per_minute"),
        ({"words_per_minute": True}, "words_per_minute"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": "a lot"}, "jitter"),
        ({"speed": 3}, "unknown or missing"),
        ("fast", "pace must be an object"),
    ],
)
def test_a_pace_that_cannot_be_shown_is_refused(pace, says):
    with pytest.raises(ValueError, match=says):
        Bot.from_dict({**FIELDS, "pace": pace})
