"""Study files: what a researcher writes, what is refused and why, and balanced assignment."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from ws_handlers.study import EntryMode, StudyError, arm_for, load_study, study_from_dict, study_to_dict

STUDY = """
id = "tutor-2026"
title = "Maths tutor styles"
entry = "link"
origins = ["https://yourlab.eu.qualtrics.com", "http://localhost:8000"]
min_messages = 3
max_entries = 600
participant_pattern = "[0-9a-f]{24}"

[[arms]]
name = "friendly"
bot = "ada_friendly"
weight = 2

[[arms]]
name = "socratic"
bot = "ada_socratic"

[bots.ada_friendly]
model = "gpt-4o-mini"
system_prompt = "You are Ada, a warm tutor."
opening_message = "Hi, I'm Ada."

[bots.ada_friendly.limits]
max_user_messages = 20

[bots.ada_socratic]
model = "gpt-4o-mini"
system_prompt = "You are Ada, a Socratic tutor."
temperature = 0.4
"""


def _valid() -> dict:
    import tomllib

    return tomllib.loads(STUDY)


def test_a_study_file_reads_back_as_written(tmp_path: Path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY, encoding="utf-8")
    study = load_study(path)
    assert study.entry is EntryMode.LINK and study.min_messages == 3 and study.max_entries == 600
    assert [(a.name, a.bot.name, a.weight) for a in study.arms] == [("friendly", "ada_friendly", 2),
                                                                   ("socratic", "ada_socratic", 1)]
    assert study.arm("friendly").bot.limits.max_user_messages == 20
    assert study_from_dict(study_to_dict(study)) == study
    assert study.accepts_participant("5f0c" * 6) and not study.accepts_participant("not-a-pid")
    assert not study.accepts_participant("a" * 10_000)
    anything = study_from_dict({**_valid(), "participant_pattern": ".+"})
    assert not anything.accepts_participant("has space")  # whatever the pattern: a token must carry it
    assert study.accepts_origin("https://yourlab.eu.qualtrics.com") and not study.accepts_origin("https://evil.example")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"id": "has space"}, "id must be"),
        ({"entry": "magic"}, "entry must be"),
        ({"origins": []}, "origins must list"),
        ({"origins": ["https://lab.example/path"]}, "must be https://host"),
        ({"origins": ["http://lab.example"]}, "http only for localhost"),
        ({"max_entries": 0}, "max_entries must be"),
        ({"max_entries": True}, "max_entries must be"),
        ({"participant_pattern": "("}, "not a regular expression"),
        ({"arms": []}, "arms must be a list"),
        ({"arms": [{"name": "a", "bot": "nobody"}]}, "must name one of the bots"),
        ({"arms": [{"name": "a", "bot": "ada_friendly"}]}, "are in no arm"),
        ({"arms": [{"name": "a", "bot": "ada_friendly", "weight": 0}, {"name": "b", "bot": "ada_socratic"}]},
         "weight must be"),
        ({"arms": [{"name": "a", "bot": "ada_friendly"}, {"name": "a", "bot": "ada_socratic"}]}, "two arms"),
        ({"bots": {"x": {"model": "m"}}}, "bots.x:"),
        ({"bots": {"ada_friendly": {"model": "m", "system_prompt": "p", "temperature": 9}}}, "temperature"),
        ({"treatment": "friendly"}, "unknown fields ['treatment']"),
    ],
)
def test_a_study_that_cannot_work_is_refused_with_what_to_fix(change: dict, says: str):
    with pytest.raises(StudyError, match=None) as refused:
        study_from_dict({**_valid(), **change})
    assert says in str(refused.value)


def test_a_broken_file_names_itself(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text('id = "x"\nentry = \n', encoding="utf-8")
    with pytest.raises(StudyError, match="broken.toml"):
        load_study(path)


def test_assignment_is_balanced_in_every_complete_block_and_follows_the_seed():
    study = study_from_dict(_valid())
    block = 3  # friendly twice, socratic once
    arms = [arm_for(study, b"seed-1", i).name for i in range(300)]
    for start in range(0, 300, block):
        assert collections.Counter(arms[start:start + block]) == {"friendly": 2, "socratic": 1}
    assert arms == [arm_for(study, b"seed-1", i).name for i in range(300)]  # a retry gets the same
    assert arms != [arm_for(study, b"seed-2", i).name for i in range(300)]  # another seed, another order
    assert len({tuple(arms[s:s + block]) for s in range(0, 300, block)}) == 3  # blocks are shuffled
