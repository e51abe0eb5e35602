"""`chat-ops study`: a study registered from its file, entered over the local stack's HTTP entry,
chatted in over its WebSocket, shown, paused, its key rotated, and exported joined by platform ids."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
import urllib.error
import urllib.request
from urllib.parse import quote

import boto3
from conftest import ORIGIN, cli, one_line_error, reset_moto
from websockets.sync.client import connect

from ws_handlers.adapters.dynamodb import DynamoStore
from ws_handlers.enrolment import key_sha256
from ws_handlers.ops.template import read_template

QUALTRICS = "https://lab.eu.qualtrics.com"

STUDY = """
id = "{id}"
title = "Tutor styles"
entry = "server"
origins = {origins}
min_messages = 2
max_entries = 50

[[arms]]
name = "warm"
bot = "ada_warm"

[[arms]]
name = "strict"
bot = "ada_strict"

[bots.ada_warm]
model = "offline-tutor"
system_prompt = "You are Ada, a warm tutor."
opening_message = "Hi, warm Ada here."

[bots.ada_strict]
model = "offline-tutor"
system_prompt = "You are Ada, a strict tutor."
"""


def _study(study_id: str, origins: list[str] = [ORIGIN]) -> str:  # noqa: B006 - never changed
    """The study file; its origins the local stack's by default (the page that chats below)."""
    return STUDY.format(id=study_id, origins=json.dumps(origins))


def _enter(stack, study: str, key: str, participant: str, **ids: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{stack.urls['entry']}/studies/{study}/entry", method="POST",
        data=json.dumps({"participant": participant, **ids}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _chat(entry: dict, texts: list[str]) -> None:
    with connect(f"{entry['url']}?token={quote(entry['token'])}", origin=ORIGIN, open_timeout=60) as ws:
        ws.send(json.dumps({"action": "start", "ticket": entry["ticket"]}))
        chat = _until(ws, "chat")
        for i, text in enumerate(texts):
            ws.send(json.dumps({"action": "send", "chat_id": chat["chat_id"], "client_msg_id": f"m{i}", "text": text}))
            assert _until(ws, "message", "error")["type"] == "message"


def _until(ws, *kinds: str) -> dict:
    while True:
        frame = json.loads(ws.recv(timeout=60))
        if frame.get("type") in kinds:
            return frame


def _key(out: str) -> str:
    return re.search(r"^    (\S{40,})$", out, re.MULTILINE).group(1)


def test_a_study_from_file_to_export(stack, ops, tmp_path):
    data = ("--data-dir", str(stack.config.data_dir))
    path = tmp_path / "study.toml"
    path.write_text(_study("styles"), encoding="utf-8")
    code, out, err = ops("study", "create", str(path), *data)
    assert code == 0, err
    assert "study 'styles' registered" in out and "shown this once" in out
    key = _key(out)
    code, _, err = ops("study", "create", str(path), *data)
    assert code == 2 and "exists" in one_line_error(err) and "--replace-definition" in err

    entries = {p: _enter(stack, "styles", key, p, ResponseID=f"R_{p}", PROLIFIC_PID=f"pid{p}")
               for p in ("A", "B", "C")}
    assert {status for status, _ in entries.values()} == {200}
    _chat(entries["A"][1], ["first question", "second question"])  # min_messages met
    _chat(entries["B"][1], ["only one"])  # C never chats

    done = cli("study", "show", "styles", *data)  # its own process: stdout holds only the JSON
    out, shown = done.stdout, json.loads(done.stdout)
    assert done.returncode == 0 and shown["entries"] == 3 and sum(shown["assigned"].values()) == 3
    assert shown["definition"]["arms"][0]["name"] == "warm" and "seed" not in out and "key" not in out.lower()

    assert ops("study", "pause", "styles", *data)[0] == 0
    assert _enter(stack, "styles", key, "D") == (403, {"error": "paused"})
    assert ops("study", "resume", "styles", *data)[0] == 0

    code, out, _ = ops("study", "rotate-key", "styles", *data)
    new_key = _key(out)
    assert code == 0 and new_key != key
    assert _enter(stack, "styles", key, "A") == (401, {"error": "study_key_invalid"})
    assert _enter(stack, "styles", new_key, "A")[0] == 200  # A keeps their arm

    path.write_text(_study("styles").replace('title = "Tutor styles"', 'title = "Renamed"'))
    code, out, _ = ops("study", "create", str(path), "--replace-definition", *data)
    assert code == 0 and "definition replaced" in out
    assert json.loads(cli("study", "show", "styles", *data).stdout)["definition"]["title"] == "Renamed"

    code, out, err = ops("study", "export", "styles", "--out", str(tmp_path / "out"), *data)
    assert code == 0, err
    with open(tmp_path / "out" / "participants.csv", newline="", encoding="utf-8") as f:
        people = {r["participant"]: r for r in csv.DictReader(f)}
    with open(tmp_path / "out" / "messages.csv", newline="", encoding="utf-8") as f:
        messages = list(csv.DictReader(f))
    arms = {p: stack.store.get_assignment("styles", p).arm for p in "ABC"}
    assert {p: (r["arm"], r["ResponseID"], r["PROLIFIC_PID"], r["messages_sent"], r["completed"])
            for p, r in people.items()} == {
        "A": (arms["A"], "R_A", "pidA", "2", "True"),
        "B": (arms["B"], "R_B", "pidB", "1", "False"),
        "C": (arms["C"], "R_C", "pidC", "0", "False"),
    }
    assert sorted(r["place"] for r in people.values()) == ["0", "1", "2"]
    user = [(r["participant"], r["arm"], r["ResponseID"], r["text"]) for r in messages if r["role"] == "user"]
    assert user == [("A", arms["A"], "R_A", "first question"), ("A", arms["A"], "R_A", "second question"),
                    ("B", arms["B"], "R_B", "only one")]
    assert {r["bot"] for r in messages if r["participant"] == "A"} == {f"ada_{arms['A']}"}
    assert all(r["study"] == "styles" for r in messages)
    # each reply's provenance, for the methods section; empty for participants' messages and openings
    provenance = ("model_snapshot", "system_fingerprint", "parameters", "system_prompt_sha256")
    assert tuple(messages[0])[-4:] == provenance
    replies = [r for r in messages if r["role"] == "assistant" and r["latency_ms"]]
    assert len(replies) == 3 and all(r[k] == "" for r in messages if r not in replies for k in provenance)
    prompts = {"warm": "You are Ada, a warm tutor.", "strict": "You are Ada, a strict tutor."}
    assert {(r["arm"], r["model_snapshot"], r["system_fingerprint"], r["system_prompt_sha256"]) for r in replies} == {
        (arm, "offline-tutor-2025-01-01", "fp_offline", hashlib.sha256(prompts[arm].encode()).hexdigest())
        for arm in (arms["A"], arms["B"])}
    assert {r["parameters"] for r in replies} == {'{"max_tokens":400,"model":"offline-tutor","temperature":0.7}'}
    code, _, err = ops("study", "export", "styles", "--out", str(tmp_path / "out"), *data)
    assert code == 2 and "--force" in one_line_error(err)


def test_bad_files_and_unknown_studies_are_one_line_errors(stack, ops, tmp_path):
    data = ("--data-dir", str(stack.config.data_dir))
    path = tmp_path / "bad.toml"
    path.write_text(_study("bad").replace('bot = "ada_strict"', 'bot = "nobody"'), encoding="utf-8")
    code, _, err = ops("study", "create", str(path), *data)
    assert code == 2 and "arms[1].bot must name one of the bots" in one_line_error(err)
    huge = _study("huge").replace("You are Ada, a strict tutor.", "x" * 40_000)
    path.write_text(huge, encoding="utf-8")
    code, _, err = ops("study", "create", str(path), *data)
    assert code == 2 and "bots.ada_strict" in one_line_error(err)
    for action in ("show", "pause", "rotate-key"):
        code, _, err = ops("study", action, "nope", *data)
        assert code == 1 and "no study 'nope'" in one_line_error(err)


def test_on_dynamodb_through_the_command_line(server, tmp_path):
    url, store = server
    path = tmp_path / "study.toml"
    path.write_text(_study("remote", [QUALTRICS]), encoding="utf-8")
    done = cli("study", "create", str(path), "--dynamodb-endpoint", url)
    assert done.returncode == 0, done.stderr
    assert "were not checked against the deployment's AllowedOrigins" in done.stderr  # a bare endpoint cannot say
    record = store.get_study("remote")
    assert record.key_sha256 == key_sha256(_key(done.stdout)) and len(record.seed) == 32
    shown = cli("study", "show", "remote", "--dynamodb-endpoint", url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["entries"] == 0
    export = cli("study", "export", "remote", "--out", str(tmp_path / "out"), "--dynamodb-endpoint", url)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "out" / "participants.csv").read_text().startswith("study,participant,arm,place,entered_at,")


def test_origins_the_local_stack_does_not_allow_are_refused_naming_them_and_the_fix(stack, ops, tmp_path):
    data = ("--data-dir", str(stack.config.data_dir))
    path = tmp_path / "study.toml"
    path.write_text(_study("origins", [ORIGIN, QUALTRICS]), encoding="utf-8")
    code, _, err = ops("study", "create", str(path), *data)
    line = one_line_error(err)
    assert code == 2 and f"the origins {QUALTRICS} of study 'origins' are not in the AllowedOrigins" in line
    assert "origin_not_allowed" in line and "--allow-origin-mismatch" in line and "nothing was registered" in line
    allowed = json.loads((Path(stack.config.data_dir) / "parameters.json").read_text())["AllowedOrigins"]
    assert f'serve --origins "{allowed},{QUALTRICS}"' in line and ORIGIN in allowed
    assert stack.store.get_study("origins") is None

    code, out, err = ops("study", "create", str(path), "--allow-origin-mismatch", *data)
    assert code == 0 and "registered" in out and err.startswith(f"warning: the origins {QUALTRICS} ")
    assert stack.store.get_study("origins").study.origins == (ORIGIN, QUALTRICS)
    # a new definition is checked as well
    path.write_text(_study("origins", [ORIGIN, "https://new.example.org"]), encoding="utf-8")
    code, _, err = ops("study", "create", str(path), "--replace-definition", *data)
    assert code == 2 and "the origins https://new.example.org of study" in one_line_error(err)
    assert stack.store.get_study("origins").study.origins == (ORIGIN, QUALTRICS)


def _stack_template() -> dict:
    """A tiny stack: template.yaml's two tables, the outputs that name them and its AllowedOrigins parameter."""
    real = read_template()
    return {
        "Parameters": {"AllowedOrigins": real["Parameters"]["AllowedOrigins"]},
        "Resources": {k: real["Resources"][k] for k in ("ConnectionsTable", "ChatsTable")},
        "Outputs": {k: real["Outputs"][k] for k in ("ConnectionsTableName", "ChatsTableName")},
    }


def test_a_deployed_stacks_allowed_origins_are_read_from_cloudformation(moto_url, monkeypatch, tmp_path):
    """`--stack` on moto's server: the stack's AllowedOrigins parameter, as describe_stacks gives it."""
    reset_moto(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    for name, origins in (("lab", "https://other.example.org"), ("lab-any", "*"), ("lab-ok", f"{QUALTRICS},{ORIGIN}")):
        cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(_stack_template()),
                                    Parameters=[{"ParameterKey": "AllowedOrigins", "ParameterValue": origins}])
    path = tmp_path / "study.toml"
    path.write_text(_study("remote", [QUALTRICS]), encoding="utf-8")

    refused = cli("study", "create", str(path), "--stack", "lab", "--region", "us-east-1")
    line = one_line_error(refused.stderr)
    assert refused.returncode == 2 and f"the origins {QUALTRICS} of study 'remote'" in line
    assert "stack lab (us-east-1) (https://other.example.org)" in line
    assert f'sam deploy --parameter-overrides AllowedOrigins="https://other.example.org,{QUALTRICS}"' in line
    for name in ("lab-any", "lab-ok"):
        done = cli("study", "create", str(path), "--stack", name, "--region", "us-east-1")
        assert done.returncode == 0 and done.stderr == "", done.stderr
    registered = {}
    for name in ("lab", "lab-ok"):
        outputs = {o["OutputKey"]: o["OutputValue"]
                   for o in cloudformation.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]}
        store = DynamoStore(outputs["ConnectionsTableName"], outputs["ChatsTableName"],
                            client=boto3.client("dynamodb", region_name="us-east-1"))
        registered[name] = store.get_study("remote") is not None
    assert registered == {"lab": False, "lab-ok": True}
