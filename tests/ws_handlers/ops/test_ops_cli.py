"""The command line itself: --help everywhere, and bad input as one line and a non-zero exit."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest
from conftest import ROOT, cli, one_line_error, seed_store

from ws_handlers.adapters.sqlite import SqliteStore
from ws_handlers.ops import export
from ws_handlers.ops.cli import build_parser

COMMANDS = ("pause", "resume", "budget", "allowlist", "study", "status", "export", "delete-participant",
            "delete-experiment")
ALLOWLIST_ACTIONS = ("add", "remove", "list", "clear")
STUDY_ACTIONS = ("create", "show", "pause", "resume", "rotate-key", "export")


@pytest.fixture
def local(tmp_path):
    """A local store with experiment exp1 (P1, P2), as the stack leaves it in DATA_DIR/chat.sqlite3."""
    store = SqliteStore(tmp_path / "chat.sqlite3")
    seed_store(store, "exp1", [("P1", "s1"), ("P2", "s1")])
    yield str(tmp_path), store
    store.close()


def test_every_subcommand_has_help(ops):
    code, out, _ = ops("--help")
    assert code == 0 and all(c in out for c in COMMANDS) and "CHAT_OPS_STACK" in out
    leaves = ([c for c in COMMANDS if c not in ("allowlist", "study")] + [f"allowlist {a}" for a in ALLOWLIST_ACTIONS]
              + [f"study {a}" for a in STUDY_ACTIONS])
    for command in leaves:
        code, out, _ = ops(*command.split(), "--help")
        assert code == 0 and out.startswith(f"usage: chat-ops {command}") and "--stack NAME" in out
    code, out, _ = ops("allowlist", "--help")
    assert code == 0 and all(action in out for action in ALLOWLIST_ACTIONS)
    code, out, _ = ops("study", "--help")
    assert code == 0 and all(action in out for action in STUDY_ACTIONS)
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(COMMANDS)


@pytest.mark.parametrize("argv, message", [
    (["dance"], "argument COMMAND: invalid choice: 'dance'"),
    (["budget", "--experiment", "exp1", "--set", "-5"], "the budget must be 0 (unlimited) or more tokens, not -5"),
    (["budget", "--experiment", "exp1", "--set", "lots"], "the budget must be a whole number of tokens, not 'lots'"),
    (["budget", "--experiment", "exp1", "--set", "5", "--clear"], "not allowed with argument --set"),
    (["budget"], "the following arguments are required: --experiment"),
    (["export", "--experiment", " "], "--experiment must not be empty"),
    (["export", "--experiment", "exp1", "--format", "xlsx"], "invalid choice: 'xlsx'"),
    (["status", "--interval", "-1"], "expected 0 or more, not -1"),
    (["status", "--local", "--stack", "lab"], "not allowed with argument --local"),
])
def test_usage_errors_are_one_line(ops, argv, message):
    code, out, err = ops(*argv)
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert line.startswith("chat-ops") and message in line and line.endswith("(see --help)")


def test_a_missing_or_broken_store_is_one_line(ops, tmp_path):
    code, _, err = ops("status", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 2 and one_line_error(err).startswith(f"chat-ops: no local store at {tmp_path / 'nowhere'}")
    assert not (tmp_path / "nowhere").exists()  # nothing created on the way
    (tmp_path / "chat.sqlite3").write_text("not a database, just text " * 100)
    code, _, err = ops("status", "--data-dir", str(tmp_path))
    assert code == 1 and "file is not a database" in one_line_error(err)


def test_an_unknown_experiment_exports_nothing_and_says_so(ops, local, tmp_path):
    data, _ = local
    target = tmp_path / "out.csv"
    code, out, err = ops("export", "--data-dir", data, "--experiment", "exp9", "--output", str(target))
    assert code == 1 and out == "" and not target.exists()
    assert one_line_error(err) == (f"chat-ops: no chats in experiment 'exp9' at the local store ({data}/chat.sqlite3): "
                                   "nothing exported (check the name)")
    code, _, err = ops("delete-participant", "--data-dir", data, "--experiment", "exp1", "--participant", "P9", "--yes")
    assert code == 1 and "nothing stored for participant 'P9' of experiment 'exp1'" in one_line_error(err)


def test_export_files_are_never_replaced_by_accident_nor_left_half_written(ops, local, tmp_path):
    data, _ = local
    target = tmp_path / "out.jsonl"
    target.write_text("yesterday's export\n")
    args = ("export", "--data-dir", data, "--experiment", "exp1", "--format", "jsonl", "--output", str(target))
    code, _, err = ops(*args)
    assert code == 2 and "exists: pass --force to replace it" in one_line_error(err)
    assert target.read_text() == "yesterday's export\n"
    code, _, err = ops(*args, "--force")
    assert code == 0 and err == f"exported 10 messages of 2 chats to {target}\n"
    assert len(target.read_text().splitlines()) == 10
    code, _, err = ops(*args[:-1], str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert code == 2 and "no directory" in one_line_error(err)

    with pytest.raises(RuntimeError), export.atomic_file(tmp_path / "cut.csv") as out:
        out.write("half a row")
        raise RuntimeError("the store went away")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.sqlite3", "chat.sqlite3-lock", "chat.sqlite3-shm",
                                                          "chat.sqlite3-wal", "out.jsonl"]


def test_deletion_without_yes_and_without_a_terminal_is_refused(local):
    data, store = local
    for argv in (["delete-participant", "--experiment", "exp1", "--participant", "P1"],
                 ["delete-experiment", "--experiment", "exp1"]):
        done = cli(*argv, "--data-dir", data, stdin="exp1\nP1\n")
        assert done.returncode == 2 and done.stdout == ""
        assert one_line_error(done.stderr) == "chat-ops: refusing to delete without --yes: stdin is not a terminal to confirm on"
    assert len(list(store.experiment_chats("exp1"))) == 2


def test_the_progress_bar_shows_on_a_terminal_only(local):
    data, _ = local
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "ws_handlers.ops", "export", "--data-dir", data, "--experiment",
                               "exp1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=follower, timeout=60, check=False,
                              env={**os.environ, "COLUMNS": "100"})
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 11
    assert b"exporting" in shown and b"10/10" in shown and b"exported 10 messages of 2 chats to stdout" in shown
    quiet = cli("export", "--data-dir", data, "--experiment", "exp1")  # stderr is a pipe: no bar, the summary only
    assert quiet.stderr == "exported 10 messages of 2 chats to stdout\n"



def test_the_operator_package_stays_out_of_the_lambda_zips(tmp_path):
    """What `sam build` runs for each function (ws_handlers/Makefile), into a scratch directory."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "ws_handlers"), "build-MessageFunction",
                    f"ARTIFACTS_DIR={tmp_path}", f"PYTHON={sys.executable}"], check=True, timeout=120,
                   capture_output=True, env={**os.environ, "MAKEFLAGS": ""})
    packaged = {p.relative_to(tmp_path / "ws_handlers").as_posix() for p in (tmp_path / "ws_handlers").rglob("*.py")}
    assert {"message.py", "store.py", "adapters/dynamodb.py", "adapters/openai_model.py"} <= packaged
    assert not any(p.startswith("ops/") for p in packaged)
    assert "adapters/sqlite.py" not in packaged  # the local stack's store: Lambda never runs it
