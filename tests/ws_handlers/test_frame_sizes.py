"""Frame sizes (issue 12): what API Gateway lets through, measured in bytes as actually sent.

Client frames over 32 KB are refused (`frame_too_large`); no server frame may exceed the
128 KB that post_to_connection accepts, whatever the script: a CJK character takes 3
bytes of UTF-8, a Cyrillic one 2. The Management API here is the local emulator, which
answers 413 over 128 KB as AWS does.
"""

from __future__ import annotations

import json
import random
import threading

import pytest

from ws_handlers import protocol, runtime
from ws_handlers.errors import ChatError
from ws_handlers.model import Usage
from ws_handlers.protocol import History
from ws_handlers.store import Message

POST_LIMIT = 128 * 1024  #: API Gateway's limit on one post_to_connection payload
SCRIPTS = {"cjk": (0x4E00, 0x9FFF), "cyrillic": (0x0410, 0x044F)}


def long_text(script: str, length: int, seed: int = 7) -> str:
    """Letters of `script` with spaces, newlines and quotes among them (which JSON escapes)."""
    first, last = SCRIPTS[script]
    rng = random.Random(seed)
    return "".join(rng.choice(' \n"') if rng.random() < 0.05 else chr(rng.randint(first, last)) for _ in range(length))


def frame_text_bytes(text: str) -> int:
    """What `text` adds to a frame as the service writes it: UTF-8 JSON, not \\u-escaped."""
    return len(protocol.encode({"t": text})) - len(protocol.encode({"t": ""}))


# -- client frames --------------------------------------------------------------------------
def test_frames_are_parsed_up_to_32_kb_and_refused_above():
    pad = '{"action":"history","chat_id":"c_1","pad":"'
    exactly = pad + "x" * (32_768 - len(pad) - 2) + '"}'
    assert len(exactly.encode()) == 32_768 and protocol.parse(exactly) == History("c_1", 0)
    over = pad + "x" * (32_768 - len(pad) - 1) + '"}'
    with pytest.raises(ChatError) as refused:
        protocol.parse(over)
    assert refused.value.code == "frame_too_large" and "32768" in refused.value.message


# -- measuring and splitting text -----------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_text_is_measured_and_split_in_bytes_as_sent(script):
    text = long_text(script, 30_000) + "\x01\t\\"  # control characters escape to 6 and 2 bytes
    assert protocol.text_bytes(text) == frame_text_bytes(text) > 1.5 * len(text)
    pieces = protocol.split_text(text, 10_000)
    assert "".join(pieces) == text
    assert all(frame_text_bytes(p) <= 10_000 for p in pieces)
    assert all(frame_text_bytes(p) > 10_000 - 6 for p in pieces[:-1])  # each as full as it can be


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_history_page_of_long_messages_stays_under_the_post_limit(script):
    messages = [
        Message("c_1", seq, "assistant" if seq % 2 else "user", long_text(script, 10_000, seed=seq), 1.0)
        for seq in range(1, 9)
    ]
    page, more = protocol.history_page(messages)
    frame = {"type": "history", "chat_id": "c_1", "messages": page, "more": more, "replying": None}
    assert more and 0 < len(page) < len(messages)
    assert len(protocol.encode(frame)) <= POST_LIMIT


# -- a turn's frames, through the Management API emulator ----------------------------------------
class ScriptedModel:
    """The model's side of the ChatModel port, scripted: `text` in pieces, then its usage.

    With `pause_at`, it stops before the piece starting there until `release` is set, as a
    model stalls between tokens, so that a test can move the participant to a new socket.
    """

    def __init__(self, text: str, piece: int = 500, pause_at: int | None = None) -> None:
        self.text, self.piece, self.pause_at = text, piece, pause_at
        self.paused, self.release = threading.Event(), threading.Event()

    def stream(self, bot, messages):
        for start in range(0, len(self.text), self.piece):
            if start == self.pause_at:
                self.paused.set()
                self.release.wait(60)
            yield self.text[start : start + self.piece]
        yield Usage(100, 2_000)


def _use(model: ScriptedModel) -> None:
    runtime.services().model_factory = lambda: model


def _send(chat_id: str) -> dict:
    return {"action": "send", "chat_id": chat_id, "client_msg_id": "m1", "text": "Tell me everything."}


def _deltas(frames: list[dict], seq: int) -> list[dict]:
    return [f for f in frames if f["type"] == "delta" and f["seq"] == seq]


def _assemble(deltas: list[dict]) -> str:
    text = ""
    for d in deltas:
        assert d["offset"] <= len(text), "a gap in the stream"
        text = text[: d["offset"]] + d["text"]
    return text


def _largest_post(emulated, cid: str) -> int:
    return max(len(p) for p in emulated.registry.posts(cid))


@pytest.mark.parametrize("script, length", [("cjk", 15_000), ("cyrillic", 25_000)])
def test_a_resumed_long_reply_comes_as_several_deltas_by_offset(emulated, script, length):
    """A new socket gets the whole text so far: over 32 KB of it is split, offsets in step."""
    text = long_text(script, length)
    model = ScriptedModel(text, pause_at=length * 4 // 5)
    _use(model)
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    emulated.send("c1", _send(chat), wait=False)
    assert model.paused.wait(60)
    emulated.registry.mark_gone("c1")  # the participant's socket drops in the middle of the reply
    emulated.connect("c2")
    emulated.send("c2", {"action": "start", "ticket": emulated.ticket()}, wait=False)
    model.release.set()
    assert emulated.queue.wait_idle(60)

    frames = emulated.frames("c2")
    final = frames[-1]
    assert final["type"] == "message" and final["text"] == text == emulated.store.get_message(chat, 2).text
    deltas = _deltas(frames, 2)
    catch_up = [d for d in deltas if d["offset"] < model.pause_at]
    assert len(catch_up) >= 2 and catch_up[0]["offset"] == 0  # the text so far, in more than one delta
    assert all(frame_text_bytes(d["text"]) <= protocol.MAX_DELTA_BYTES for d in deltas)
    assert [d["index"] for d in deltas] == sorted({d["index"] for d in deltas})  # increasing, no repeat
    assert _assemble(deltas) == text
    assert _largest_post(emulated, "c2") <= POST_LIMIT


@pytest.mark.parametrize("script, length", [("cjk", 50_000), ("cyrillic", 80_000)])
def test_a_reply_too_long_for_one_frame_is_cut_so_every_frame_is_delivered(emulated, script, length):
    text = long_text(script, length)  # 150 KB / 160 KB of UTF-8: its message frame could not be posted
    _use(ScriptedModel(text))
    emulated.connect("c1")
    chat = emulated.start("c1")["chat_id"]
    frames = emulated.send("c1", _send(chat))

    final = frames[-1]
    assert final["type"] == "message" and final["seq"] == 2
    stored = emulated.store.get_message(chat, 2)
    assert stored.text == final["text"] and text.startswith(stored.text)
    assert protocol.MAX_REPLY_BYTES - 6 < frame_text_bytes(stored.text) <= protocol.MAX_REPLY_BYTES
    assert _assemble(_deltas(frames, 2)) == stored.text
    assert stored.completion_tokens == 2_000  # the usage still counts: the model was read to its end
    assert _largest_post(emulated, "c1") <= POST_LIMIT
    # the chat's history pages: the cut reply, too big to share a page, comes alone in the next
    emulated.connect("c2")
    [chat_frame] = emulated.send("c2", {"action": "start", "ticket": emulated.ticket()})
    assert [m["seq"] for m in chat_frame["messages"]] == [1] and chat_frame["more"] is True
    [page] = emulated.send("c2", {"action": "history", "chat_id": chat, "after_seq": 1})
    assert [m["text"] for m in page["messages"]] == [stored.text] and page["more"] is False
    assert _largest_post(emulated, "c2") <= POST_LIMIT


def test_server_frames_are_utf8_not_ascii_escaped():
    frame = {"type": "delta", "text": "你好, мир"}
    assert protocol.encode(frame) == json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()
    assert b"\\u" not in protocol.encode(frame)
