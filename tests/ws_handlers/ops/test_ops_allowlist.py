"""`chat-ops allowlist`: the codes an experiment admits. On the local stack (SQLite, participants
really connecting), on DynamoDB (moto's server, the command line as its own process), and bad
input as one line that names what is wrong, with nothing written."""

from __future__ import annotations

import pytest
from conftest import Participant, cli, one_line_error
from websockets.exceptions import InvalidStatus

from ws_handlers.adapters.sqlite import SqliteStore
from ws_handlers.identity import Identity
from ws_handlers.store import Controls


def _refused(stack, who: Identity) -> int:
    with pytest.raises(InvalidStatus) as refused:
        Participant(stack, who)
    return refused.value.response.status_code


def test_only_the_codes_on_the_allowlist_connect_until_it_is_cleared(stack, ops, tmp_path):
    data = ("--data-dir", str(stack.config.data_dir))
    invited = tmp_path / "invited.txt"
    invited.write_text("\ufeff# invited to study A\nA1\n\n  A2  \r\n# A3 declined\n", encoding="utf-8")
    Participant(stack, Identity("B1", "expA", "s1")).close()  # no allowlist yet: any valid token

    code, out, err = ops("allowlist", "add", *data, "--experiment", "expA", "--file", str(invited), "A4")
    assert code == 0, err
    assert "experiment 'expA': 3 codes added to its allowlist" in out and "only the participants" in out
    Participant(stack, Identity("A1", "expA", "s1")).close()
    Participant(stack, Identity("A4", "expA", "s2")).close()
    assert _refused(stack, Identity("B1", "expA", "s1")) == 403  # participant_not_allowed
    Participant(stack, Identity("B1", "expB", "s1")).close()  # another experiment stays open

    done = cli("allowlist", "list", *data, "--experiment", "expA")  # its own process: stdout holds only the codes
    assert done.returncode == 0 and done.stdout.splitlines() == ["A1", "A2", "A4"]
    assert "experiment 'expA' admits the 3 codes on its allowlist, nobody else" in done.stderr

    assert ops("allowlist", "remove", *data, "--experiment", "expA", "A1")[0] == 0
    assert _refused(stack, Identity("A1", "expA", "s1")) == 403
    code, out, _ = ops("allowlist", "remove", *data, "--experiment", "expA", "A2", "A4")
    assert code == 0 and "the allowlist is empty and stays on: nobody can connect" in out
    assert _refused(stack, Identity("A2", "expA", "s1")) == 403
    assert "has an empty allowlist: nobody can connect" in ops("allowlist", "list", *data, "--experiment", "expA")[2]

    code, out, _ = ops("allowlist", "clear", *data, "--experiment", "expA")
    assert code == 0 and "allowlist cleared (0 codes removed); anyone with a valid token can connect again" in out
    Participant(stack, Identity("B1", "expA", "s1")).close()
    assert "has no allowlist: anyone with a valid token" in ops("allowlist", "list", *data, "--experiment", "expA")[2]


def test_a_long_file_through_the_command_line_on_dynamodb(server, tmp_path):
    url, store = server
    codes = [f"p{i:05d}" for i in range(2_345)]  # several batches of 500, each 20 requests of 25
    path = tmp_path / "codes.txt"
    path.write_text("\n".join(codes) + "\n")
    target = ("--dynamodb-endpoint", url, "--experiment", "study1")
    done = cli("allowlist", "add", *target, "--file", str(path))
    assert done.returncode == 0, done.stderr
    assert "2,345 codes added" in done.stdout and f"DynamoDB at {url}" in done.stdout
    assert store.read_controls("study1").allowlist and store.on_allowlist("study1", "p02344")
    assert not store.on_allowlist("study1", "p02345") and not store.read_controls("study2").allowlist

    done = cli("allowlist", "list", *target)
    assert done.returncode == 0 and done.stdout.splitlines() == codes
    done = cli("allowlist", "clear", *target)
    assert done.returncode == 0 and "2,345 codes removed" in done.stdout
    assert store.read_controls("study1") == Controls() and list(store.allowlist("study1")) == []


@pytest.fixture
def local(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    yield ("--data-dir", str(tmp_path)), store
    store.close()


@pytest.mark.parametrize("content, message", [
    ("".join(f"P{i}\n" for i in range(600)) + "P 600\n",
     "line 601: 'P 600' is not a participant code (1 to 64 characters of A-Z a-z 0-9 _ . : -, as in the connect "
     "tokens); nothing was changed"),
    ("P1\nP2,P3\n", "line 2: 'P2,P3' is not a participant code (1 to 64 characters of A-Z a-z 0-9 _ . : -, as in "
     "the connect tokens) (one code per line, no commas); nothing was changed"),
    ("P1\n" + "x" * 65 + "\n", "line 2: '" + "x" * 40 + "...' is not a participant code"),
    (b"P1\nP\xe92\n", "line 2: not UTF-8 text; nothing was changed"),
])
def test_a_bad_line_stops_the_command_before_anything_is_written(ops, local, tmp_path, content, message):
    target, store = local
    path = tmp_path / "codes.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for action in ("add", "remove"):
        code, out, err = ops("allowlist", action, *target, "--experiment", "exp1", "--file", str(path))
        assert code == 2 and out == ""
        assert one_line_error(err).startswith(f"chat-ops: {path} {message}")
    assert store.read_controls("exp1") == Controls() and list(store.allowlist("exp1")) == []


@pytest.mark.parametrize("argv, message", [
    (["add", "--experiment", "exp1"], "allowlist add: name the codes, or --file PATH (one code per line)"),
    (["add", "--experiment", "exp1", "P1", "P 2"], "'P 2' is not a participant code"),
    (["remove", "--experiment", "exp1", "--file", "/nonexistent/codes.txt"],
     "cannot read /nonexistent/codes.txt: No such file or directory; nothing was changed"),
])
def test_bad_codes_and_missing_files_are_one_line(ops, local, argv, message):
    target, store = local
    code, out, err = ops("allowlist", *argv, *target)
    assert code == 2 and out == "" and message in one_line_error(err)
    assert store.read_controls("exp1") == Controls()


@pytest.mark.parametrize("argv, message", [
    (["allowlist"], "the following arguments are required: ACTION"),
    (["allowlist", "add", "P1"], "the following arguments are required: --experiment"),
    (["allowlist", "add", "--experiment", "exp 1", "P1"],
     "--experiment must be 1 to 64 characters of A-Z a-z 0-9 _ . : -, as in the connect tokens, not 'exp 1'"),
    (["allowlist", "list", "--experiment", "exp1", "P1"], "unrecognized arguments: P1"),
])
def test_usage_errors_are_one_line(ops, argv, message):
    code, out, err = ops(*argv)
    assert code == 2 and out == "" and message in one_line_error(err) and err.rstrip().endswith("(see --help)")
