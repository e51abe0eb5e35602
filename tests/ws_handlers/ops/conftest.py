"""Fixtures for the operator's command line: the local stack, participants who chat, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.sync.client import connect

from local_gateway.demo_bots import BOTS
from local_gateway.stack import StackConfig, running
from ws_handlers.model import PROVENANCE_FIELDS, Provenance
from ws_handlers.ops.cli import main
from ws_handlers.store import chat_id_for
from ws_handlers.tickets import Identity, mint_ticket, mint_token

ROOT = Path(__file__).resolve().parents[3]
ORIGIN = "http://localhost:8000"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack on SQLite, shared by a module's tests; each test seeds its own experiment."""
    config = StackConfig(port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, store="sqlite",
                         data_dir=tmp_path_factory.mktemp("stack"), model_ttft=0.0, model_tokens_per_second=0.0)
    with running(config) as s:
        yield s


class Participant:
    """A participant's socket: start a chat, send, and read until the reply or an error."""

    def __init__(self, stack, who: Identity, chat_key: str = "main", bot: str = "tutor") -> None:
        url = f"{stack.urls['websocket']}?token={quote(mint_token(stack.secret, who))}"
        self.ws = connect(url, origin=ORIGIN, open_timeout=60, close_timeout=2).__enter__()
        self.who, self.n = who, 0
        self.ws.send(json.dumps({"action": "start", "ticket": mint_ticket(stack.secret, who, chat_key, BOTS[bot])}))
        self.chat_id = self.until("chat")["chat_id"]
        assert self.chat_id == chat_id_for(who, chat_key)

    def until(self, *kinds: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame.get("type") in kinds:
                return frame

    def send(self, text: str) -> dict:
        """The final `message` frame of the reply, or the `error` frame."""
        self.n += 1
        self.ws.send(json.dumps({"action": "send", "chat_id": self.chat_id, "client_msg_id": f"m{self.n}",
                                 "text": text}))
        return self.until("message", "error")

    def close(self) -> None:
        self.ws.close()


@dataclass
class Seeded:
    experiment: str
    people: dict[str, Participant] = field(default_factory=dict)

    def close(self) -> None:
        for p in self.people.values():
            p.close()


def reset_moto(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=60)


@pytest.fixture
def server(moto_url, dynamodb_tables):
    """moto's server, emptied, with the tables under the functions' default names."""
    import boto3

    from ws_handlers.adapters.dynamodb import DynamoStore

    reset_moto(moto_url)
    client = boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1")
    dynamodb_tables(client, "chat-connections", "chat-chats")
    return moto_url, DynamoStore("chat-connections", "chat-chats", client=client)


@pytest.fixture
def seed(stack):
    """seed(experiment): P1 and P2 in session s1, P3 in s2, two messages each, sockets left open."""
    made: list[Seeded] = []

    def make(experiment: str) -> Seeded:
        seeded = Seeded(experiment)
        made.append(seeded)
        for participant, session in (("P1", "s1"), ("P2", "s1"), ("P3", "s2")):
            person = Participant(stack, Identity(participant, experiment, session))
            seeded.people[participant] = person
            for text in (f"Hello from {participant}, what is a fraction?", "=SUM(1,2) and -5, said the spreadsheet"):
                assert person.send(text)["type"] == "message"
        return seeded

    yield make
    for seeded in made:
        seeded.close()


def model_requests(stack) -> int:
    """The offline model's count of completion requests, from its /_stats endpoint."""
    base = stack.urls["model"].removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/_stats", timeout=60) as answer:
        return json.load(answer)["requests"]


#: Where the commands' default target (the local store) points in tests: never the developer's .local/.
NO_DATA_DIR = "/nonexistent/chat-ops-tests"


def cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m ws_handlers.ops ARGS` as an operator runs it (CHAT_OPS_* from this process's environment)."""
    env = {"CHAT_OPS_DATA_DIR": NO_DATA_DIR} | dict(os.environ)
    return subprocess.run([sys.executable, "-m", "ws_handlers.ops", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, env=env, timeout=timeout, check=False)


@pytest.fixture(autouse=True)
def _no_operator_environment(monkeypatch):
    for name in [k for k in os.environ if k.startswith("CHAT_OPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHAT_OPS_DATA_DIR", NO_DATA_DIR)


@pytest.fixture
def ops(capsys):
    """main(argv) in this process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line_error(err: str) -> str:
    """The error output, checked to be one line without a traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


NOW = 1_800_000_000.0


#: What seed_store's replies were produced by.
SEEDED_PROVENANCE = Provenance("gpt-4o-mini-2024-07-18", "fp_44709d6fcb",
                               '{"max_tokens":400,"model":"gpt-4o-mini","temperature":0.7}', "5e" * 32)


def seed_store(store, experiment: str, who: list[tuple[str, str]], turns: int = 2, text_chars: int = 40,
               bot=None) -> list:
    """Chats written through the Store port, as the chat domain writes them: an opening, then
    `turns` user messages each with its reply (3 prompt + 2 completion tokens, gpt-4o-mini, and
    the provenance OpenAI would give it)."""
    from ws_handlers.store import Chat, Lease, Message

    bot = bot or BOTS["tutor"]
    chats = []
    for participant, session in who:
        identity = Identity(participant, experiment, session)
        chat_id = chat_id_for(identity, "main")
        chat = store.open_chat(Chat(chat_id, identity, "main", bot, NOW, next_seq=2, connection_id="k"),
                               Message(chat_id, 1, "assistant", bot.opening_message or "Hi.", NOW), 5)
        for turn in range(turns):
            seq = chat.next_seq
            words = f"{participant} turn {turn} " + "x" * text_chars
            store.append_user_message(chat, Message(chat_id, seq, "user", words[:text_chars], NOW + seq,
                                                    client_msg_id=f"m{turn}"),
                                      Lease(f"t{turn}", NOW + 60, seq), "k", 10_000, NOW + seq)
            reply = Message(chat_id, seq + 1, "assistant", ("reply " + words)[:text_chars], NOW + seq + 1, None,
                            3, 2, "gpt-4o-mini", 250, SEEDED_PROVENANCE)
            assert store.finish_reply(chat, reply, f"t{turn}")
            store.count_tokens(identity.experiment, 5)
            chat = replace(chat, next_seq=seq + 2)
        chats.append(store.get_chat(chat_id))
    return chats


def stored_rows(store, chat_ids: list[str]) -> list[dict]:
    """What the store holds for these chats, read through the chat domain's port (get_chat,
    messages), as export rows: the reference an export is compared with."""
    from ws_handlers.ops.export import iso

    rows = []
    for chat in filter(None, (store.get_chat(c) for c in chat_ids)):
        who = chat.identity
        for m in store.messages(chat.chat_id):
            rows.append({
                "experiment": who.experiment, "session": who.session, "participant": who.participant,
                "chat_key": chat.chat_key, "chat_id": chat.chat_id, "bot": chat.bot.name, "seq": m.seq,
                "role": m.role, "text": m.text, "created_at": iso(m.created_at), "created_at_epoch": m.created_at,
                "latency_ms": m.latency_ms, "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens, "model": m.model, "client_msg_id": m.client_msg_id,
                **{name: getattr(m.provenance, name, None) for name in PROVENANCE_FIELDS},
            })
    return rows
