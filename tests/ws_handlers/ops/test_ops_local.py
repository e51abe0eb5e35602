"""Every subcommand against the local stack (SQLite), seeded by participants really chatting."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import Participant, cli, model_requests, stored_rows
from websockets.exceptions import InvalidStatus

from ws_handlers.identity import Identity
from ws_handlers.ops.export import COLUMNS
from ws_handlers.store import chat_id_for


def stored(stack, experiment: str, who: list[tuple[str, str]]) -> list[dict]:
    return stored_rows(stack.store, [chat_id_for(Identity(p, experiment, s), "main") for p, s in who])


EVERYONE = [("P1", "s1"), ("P2", "s1"), ("P3", "s2")]


def _as_csv(row: dict, escape: bool = True) -> dict:
    """A row as csv.DictReader reads it back: strings, '' for None, formulas made inert."""
    out = {k: "" if v is None else str(v) if not isinstance(v, float) else repr(v) for k, v in row.items()}
    if escape:
        out = {k: "'" + v if v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for k, v in out.items()}
    return out


def test_export_jsonl_and_csv_match_the_stored_messages_row_for_row(stack, seed, tmp_path):
    seed("exp-export")
    expected = stored(stack, "exp-export", EVERYONE)
    assert len(expected) == 3 * 5 and sum(r["role"] == "user" for r in expected) == 6
    replies = [r for r in expected if r["role"] == "assistant" and r["seq"] > 1]
    assert {r["model_snapshot"] for r in replies} == {"gpt-4o-mini-2025-01-01"}  # the snapshot that answered
    assert all(r["parameters"] and len(r["system_prompt_sha256"]) == 64 for r in replies)
    assert all(r[k] is None for r in expected if r not in replies for k in COLUMNS[-4:])  # messages, openings
    data = str(stack.config.data_dir)

    done = cli("export", "--data-dir", data, "--experiment", "exp-export", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == expected
    assert "exported 15 messages of 3 chats" in done.stderr

    target = tmp_path / "out.csv"
    done = cli("export", "--data-dir", data, "--experiment", "exp-export", "--format", "csv", "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    with target.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        read = list(reader)
    assert read == [_as_csv(r) for r in expected]
    formulas = [r["text"] for r in read if r["role"] == "user" and r["text"].startswith("'=SUM")]
    assert len(formulas) == 3  # inert in a spreadsheet; JSONL keeps the text exact
    assert oct(target.stat().st_mode & 0o777) == "0o600"  # participant data: readable by the operator only

    raw = cli("export", "--data-dir", data, "--experiment", "exp-export", "--session", "s2", "--raw-csv", "-q")
    assert raw.returncode == 0 and raw.stderr == ""
    assert list(csv.DictReader(io.StringIO(raw.stdout))) == [
        _as_csv(r, escape=False) for r in stored(stack, "exp-export", [("P3", "s2")])]


def test_delete_participant_leaves_nothing_of_them_and_the_others_intact(stack, seed):
    seeded = seed("exp-delete")
    others = stored(stack, "exp-delete", EVERYONE[1:])
    gone = chat_id_for(Identity("P1", "exp-delete", "s1"), "main")
    data = str(stack.config.data_dir)

    done = cli("delete-participant", "--data-dir", data, "--experiment", "exp-delete", "--participant", "P1", "--yes")
    assert done.returncode == 0, done.stderr
    assert "1 chats, 5 messages, 1 connections" in done.stdout
    assert stack.store.get_chat(gone) is None and stack.store.messages(gone) == []
    assert stack.store.find_client_message(gone, "m1") is None
    exported = cli("export", "--data-dir", data, "--experiment", "exp-delete", "--format", "jsonl", "-q")
    assert [json.loads(line) for line in exported.stdout.splitlines()] == others
    assert "P1" not in exported.stdout
    assert {c.identity.participant for c in stack.store.connections("exp-delete")} == {"P2", "P3"}
    # the others chat on; P1's open socket lost its record, so it is told to reconnect
    assert seeded.people["P2"].send("Still here?")["type"] == "message"
    assert seeded.people["P1"].send("Still here?")["code"] == "not_connected"
    assert stack.store.get_chat(gone) is None


def test_pause_refuses_new_messages_with_its_code_and_resume_lets_them_through(stack, seed):
    seeded = seed("exp-pause")
    person, data = seeded.people["P1"], str(stack.config.data_dir)
    for scope in ([], ["--experiment", "exp-pause"]):
        done = cli("pause", "--data-dir", data, *scope)
        assert done.returncode == 0 and done.stdout.startswith("paused"), done.stderr
        calls = model_requests(stack)
        refused = person.send("Are you there?")
        assert (refused["type"], refused["code"], refused["retryable"]) == ("error", "paused", True)
        assert model_requests(stack) == calls
        done = cli("resume", "--data-dir", data, *scope)
        assert done.returncode == 0 and done.stdout.startswith("resumed"), done.stderr
        assert person.send("Are you there now?")["type"] == "message"
        assert model_requests(stack) == calls + 1


def test_a_paused_service_refuses_new_connections(stack, ops):
    data = str(stack.config.data_dir)
    assert ops("pause", "--data-dir", data)[0] == 0
    try:
        with pytest.raises(InvalidStatus) as refused:
            Participant(stack, Identity("late", "exp-paused", "s1"))
        assert refused.value.response.status_code == 403
        code, out, _ = ops("resume", "--data-dir", data, "--experiment", "exp-paused")
        assert code == 0 and "the whole service is still paused" in out
    finally:
        assert ops("resume", "--data-dir", data)[0] == 0
    Participant(stack, Identity("late", "exp-paused", "s1")).close()


def test_a_budget_below_the_tokens_used_stops_spending(stack, seed):
    seeded = seed("exp-budget")
    data = str(stack.config.data_dir)
    used = stack.store.read_controls("exp-budget").tokens_used
    assert used > 0
    done = cli("budget", "--data-dir", data, "--experiment", "exp-budget", "--set", str(used - 1))
    assert done.returncode == 0, done.stderr
    assert f"{used:,} tokens used of a budget of {used - 1:,}" in done.stdout and "budget_exhausted" in done.stdout
    calls = model_requests(stack)
    refused = seeded.people["P2"].send("One more question?")
    assert (refused["type"], refused["code"], refused["retryable"]) == ("error", "budget_exhausted", False)
    assert model_requests(stack) == calls  # no model call was made
    assert stack.store.read_controls("exp-budget").tokens_used == used

    done = cli("budget", "--data-dir", data, "--experiment", "exp-budget", "--clear")
    assert done.returncode == 0 and "no budget of its own" in done.stdout
    assert seeded.people["P2"].send("One more question?")["type"] == "message"
    shown = cli("budget", "--data-dir", data, "--experiment", "exp-budget")
    assert f"{stack.store.read_controls('exp-budget').tokens_used:,} tokens used" in shown.stdout


def test_status_counts_connections_chats_messages_tokens_and_spend(stack, seed, ops):
    seeded = seed("exp-status")
    data = str(stack.config.data_dir)
    done = cli("status", "--data-dir", data, "--experiment", "exp-status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    rows = stored(stack, "exp-status", EVERYONE)
    replies = [r for r in rows if r["model"]]
    assert (status["connections"], status["chats"], status["active_chats"], status["participants"]) == (3, 3, 3, 3)
    assert (status["participant_messages"], status["replies"]) == (6, 6)
    assert status["prompt_tokens"] == sum(r["prompt_tokens"] for r in replies)
    assert status["completion_tokens"] == sum(r["completion_tokens"] for r in replies)
    assert status["tokens_used"] == status["prompt_tokens"] + status["completion_tokens"]
    assert status["llm_usd"] == pytest.approx(
        (status["prompt_tokens"] * 0.15 + status["completion_tokens"] * 0.60) / 1e6)  # the bots use gpt-4o-mini
    assert status["experiment_paused"] is False and status["service_paused"] is False

    seeded.people["P3"].close()
    seeded.people["P1"].send("And now?")
    done = cli("status", "--data-dir", data, "--experiment", "exp-status", "--session", "s1",
               "--watch", "--count", "2", "--interval", "0")
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().split("\n\n")
    for shown in (first, second):  # the second refresh reads only what is new, and adds up the same
        assert "experiment     exp-status, session s1: running" in shown and "connections    2 open" in shown
        assert "chats          2 (2 active in the last 10 min), 2 participants" in shown
        assert "messages       12 (5 from participants, 5 replies, 2 openings)" in shown
        assert "LLM spend      $0.00" in shown and "at the list prices of" in shown

    code, out, _ = ops("status", "--data-dir", data)
    assert code == 0 and "service        running" in out and "exp-status: " in out


def test_delete_experiment_asks_then_removes_all_of_it(stack, seed, ops, monkeypatch):
    seed("exp-gone")
    seed("exp-kept")
    kept = stored(stack, "exp-kept", EVERYONE)
    data = str(stack.config.data_dir)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("exp-kept\n"))  # the wrong name: nothing happens
    code, _, err = ops("delete-experiment", "--data-dir", data, "--experiment", "exp-gone")
    assert code == 1 and "Type 'exp-gone' to confirm" in err and "not confirmed: nothing deleted" in err
    assert len(stored(stack, "exp-gone", EVERYONE)) == 15

    monkeypatch.setattr("sys.stdin", Terminal("exp-gone\n"))
    code, out, _ = ops("delete-experiment", "--data-dir", data, "--experiment", "exp-gone")
    assert code == 0 and "3 chats, 15 messages, 3 connections" in out
    assert stored(stack, "exp-gone", EVERYONE) == []
    assert list(stack.store.connections("exp-gone")) == []
    assert stack.store.read_controls("exp-gone").tokens_used == 0
    assert stored(stack, "exp-kept", EVERYONE) == kept
