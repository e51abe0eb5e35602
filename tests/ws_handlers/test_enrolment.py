"""Enrolment, the entry endpoint's domain, on both store adapters: who may enter, and an arm that stays theirs."""

from __future__ import annotations

import collections

import pytest
from studies import KEY, ORIGIN, register
from waiting import at_once

from ws_handlers.enrolment import Enrolment, Entry, EntryRefused

NOW = 1_800_000_000.0


def _enrolment(store) -> Enrolment:
    return Enrolment(store, controls_for=store.get_controls, on_allowlist=store.on_allowlist, clock=lambda: NOW)


def _entry(participant: str = "P1", study: str = "tutor", **kwargs) -> Entry:
    return Entry(study, participant, **({"key": KEY} | kwargs))


def test_the_first_entry_assigns_and_records_the_platform_ids(store):
    register(store)
    study, assignment = _enrolment(store).enter(_entry(platform_ids={"ResponseID": "R_1", "PROLIFIC_PID": "abc"}))
    assert study.id == "tutor" and assignment.index == 0 and assignment.entered_at == NOW
    assert assignment.arm in ("warm", "strict")
    assert store.get_assignment("tutor", "P1") == assignment
    assert dict(assignment.platform_ids) == {"ResponseID": "R_1", "PROLIFIC_PID": "abc"}


def test_a_refresh_or_a_second_tab_keeps_the_arm_and_takes_no_place(store):
    register(store)
    enrolment = _enrolment(store)
    _, first = enrolment.enter(_entry())
    _, again = enrolment.enter(_entry(platform_ids={"ResponseID": "R_other"}))
    assert again == first and store.get_study("tutor").entries == 1


def test_one_participant_entering_from_many_tabs_at_once_gets_one_arm(store):
    register(store)
    enrolment = _enrolment(store)
    results = at_once(6, lambda i: enrolment.enter(_entry())[1])
    assert all(r == results[0] for r in results), results
    assert [a.participant for a in store.assignments("tutor")] == ["P1"]
    assert store.get_assignment("tutor", "P1") == results[0]


def test_participants_entering_at_once_get_distinct_places(store):
    register(store)
    enrolment = _enrolment(store)
    results = at_once(10, lambda i: enrolment.enter(_entry(f"P{i}"))[1])
    assert sorted(a.index for a in results) == list(range(10))
    assert len(list(store.assignments("tutor"))) == 10


def test_arms_are_in_their_weights_after_complete_blocks(store):
    register(store, weights=(2, 1))
    enrolment = _enrolment(store)
    arms = [enrolment.enter(_entry(f"P{i}"))[1].arm for i in range(30)]
    assert collections.Counter(arms) == {"warm": 20, "strict": 10}
    for block in range(10):  # every block of 3 holds each arm its weight
        assert collections.Counter(arms[3 * block: 3 * block + 3]) == {"warm": 2, "strict": 1}


def test_a_full_study_refuses_newcomers_but_not_those_who_entered(store):
    register(store, max_entries=2)
    enrolment = _enrolment(store)
    _, first = enrolment.enter(_entry("P1"))
    enrolment.enter(_entry("P2"))
    with pytest.raises(EntryRefused) as refused:
        enrolment.enter(_entry("P3"))
    assert (refused.value.status, refused.value.code) == (403, "study_full")
    assert enrolment.enter(_entry("P1"))[1] == first
    assert store.get_assignment("tutor", "P3") is None


def test_made_up_ids_are_bounded_by_the_cap(store):
    register(store, entry="link", max_entries=5)
    enrolment = _enrolment(store)
    results = at_once(12, lambda i: enrolment.enter(Entry("tutor", f"madeup{i}", origin=ORIGIN))[1])
    entered = [r for r in results if not isinstance(r, Exception)]
    assert len(entered) == 5 and sorted(a.index for a in entered) == list(range(5))
    assert {r.code for r in results if isinstance(r, EntryRefused)} == {"study_full"}
    assert len(list(store.assignments("tutor"))) == 5


@pytest.mark.parametrize(("entry", "status", "code"), [
    (Entry("nope", "P1", key=KEY), 404, "study_unknown"),
    (Entry("tutor", "P1"), 401, "study_key_invalid"),
    (Entry("tutor", "P1", key="wrong"), 401, "study_key_invalid"),
    (Entry("tutor", "P 1", key=KEY), 400, "participant_invalid"),
    (Entry("tutor", "P1", key=KEY, platform_ids={"a b": "x"}), 400, "platform_ids_invalid"),
    (Entry("tutor", "P1", key=KEY, platform_ids={f"id{i}": "x" for i in range(9)}), 400, "platform_ids_invalid"),
])
def test_refusals_assign_nothing(store, entry, status, code):
    register(store)
    with pytest.raises(EntryRefused) as refused:
        _enrolment(store).enter(entry)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert store.get_study("tutor").entries == 0


def test_link_entry_only_from_the_studys_origins(store):
    register(store, entry="link")
    enrolment = _enrolment(store)
    for origin in (None, "https://evil.example"):
        with pytest.raises(EntryRefused, match="origin_not_allowed"):
            enrolment.enter(Entry("tutor", "P1", origin=origin))
    assert enrolment.enter(Entry("tutor", "P1", origin=ORIGIN))[1].index == 0


def test_the_experiment_controls_apply_to_a_study(store):
    register(store)
    enrolment = _enrolment(store)
    store.set_controls("tutor", paused=True)
    with pytest.raises(EntryRefused, match="paused"):
        enrolment.enter(_entry())
    store.set_controls("tutor", paused=False)
    store.add_to_allowlist("tutor", ["P1"])
    with pytest.raises(EntryRefused, match="participant_not_allowed"):
        enrolment.enter(_entry("P2"))
    assert enrolment.enter(_entry("P1"))[1].index == 0
    assert store.get_study("tutor").entries == 1
