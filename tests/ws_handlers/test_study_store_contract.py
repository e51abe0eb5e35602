"""The study store's contract (`enrolment.StudyStore`, `StudyAdmin`): each test on DynamoDB (moto,
through the strict emulation) and on SQLite, as tests/ws_handlers/test_store_contract.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from studies import register, study
from waiting import at_once

from ws_handlers.enrolment import Assignment
from ws_handlers.store import Conflict

NOW = 1_800_000_000.0


def _assignment(participant: str, arm: str = "warm", index: int = 0, **ids: str) -> Assignment:
    return Assignment("tutor", participant, arm, index, NOW, ids)


def test_a_study_reads_back_as_registered_and_an_id_is_registered_once(store):
    assert store.get_study("tutor") is None
    record = register(store)
    assert store.get_study("tutor") == record and record.entries == 0
    with pytest.raises(Conflict):
        register(store, title="another")
    assert store.get_study("tutor") == record


def test_a_definition_and_a_key_are_replaced_keeping_the_rest(store):
    record = register(store)
    store.take_place("tutor")
    store.put_assignment(_assignment("P1"))
    changed = replace(study(), title="Renamed")
    store.replace_study_definition(changed)
    store.set_study_key("tutor", "0" * 64)
    assert store.get_study("tutor") == replace(record, study=changed, key_sha256="0" * 64, entries=1)
    assert store.get_assignment("tutor", "P1") == _assignment("P1")
    with pytest.raises(Conflict):
        store.replace_study_definition(study("nope"))
    with pytest.raises(Conflict):
        store.set_study_key("nope", "0" * 64)
    assert store.get_study("nope") is None


def test_places_are_taken_in_order_and_count_as_entries(store):
    register(store)
    assert [store.take_place("tutor") for _ in range(3)] == [0, 1, 2]
    assert store.get_study("tutor").entries == 3
    with pytest.raises(Conflict):  # no study: nothing is created
        store.take_place("nope")
    assert store.get_study("nope") is None


def test_concurrent_places_are_all_distinct(store):
    register(store)
    places = at_once(12, lambda i: store.take_place("tutor"))
    assert sorted(places) == list(range(12))


def test_an_assignment_is_written_once_with_its_platform_ids(store):
    register(store)
    first = _assignment("P1", ResponseID="R_abc", PROLIFIC_PID="5f0c")
    store.put_assignment(first)
    with pytest.raises(Conflict):  # the other tab's: the first stands
        store.put_assignment(_assignment("P1", arm="strict", index=1))
    assert store.get_assignment("tutor", "P1") == first
    assert store.get_assignment("tutor", "P2") is None
    assert store.get_assignment("other", "P1") is None


def test_concurrent_assignments_of_one_participant_leave_one(store):
    register(store)
    results = at_once(6, lambda i: store.put_assignment(_assignment("P1", arm=("warm", "strict")[i % 2], index=i)))
    won = [i for i, result in enumerate(results) if result is None]
    assert all(isinstance(r, Conflict) for r in results if r is not None)
    assert len(won) == 1 and store.get_assignment("tutor", "P1").index == won[0]


def test_assignments_are_listed_by_study_a_page_at_a_time(store):
    register(store)
    register(store, "other")
    for i in range(5):
        store.put_assignment(_assignment(f"P{i}", index=i))
    store.put_assignment(replace(_assignment("X"), study="other"))
    assert [a.participant for a in store.assignments("tutor", page_size=2)] == [f"P{i}" for i in range(5)]
    assert [a.participant for a in store.assignments("other")] == ["X"]
    assert list(store.assignments("nope")) == []


def test_deleting_a_participant_or_the_experiment_deletes_assignments_and_keeps_the_study(store):
    record = register(store)
    for i in range(3):
        store.put_assignment(_assignment(f"P{i}", index=i, PROLIFIC_PID=f"pid{i}"))
    assert store.delete_participant("tutor", "P0", session="s1").records == 0  # one session: the arm stays
    assert store.delete_participant("tutor", "P0").records == 1
    assert store.get_assignment("tutor", "P0") is None and store.get_assignment("tutor", "P1") is not None
    assert store.delete_experiment("tutor").records == 2
    assert list(store.assignments("tutor")) == [] and store.get_study("tutor") == record
