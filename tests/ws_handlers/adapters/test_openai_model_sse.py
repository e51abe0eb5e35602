"""The reply's model stream is read as server-sent events by `_chunks`, from the body's bytes (not
the SDK's per-chunk pydantic objects): what a compatible server may send is parsed as the SDK would,
however the body is cut into pieces on the way."""

from __future__ import annotations

import pytest

from ws_handlers.adapters.openai_model import _chunks

BODY = (b': keep-alive\n\nevent: message\ndata: {"choices": [{"delta": {"content": "Hi \xc3\xa9"}}]}\n\n'
        b'data:{"usage": {"prompt_tokens": 3,\ndata: "completion_tokens": 1}}\n\ndata: [DONE]\n\n')
EXPECTED = [{"choices": [{"delta": {"content": "Hi é"}}]}, {"usage": {"prompt_tokens": 3, "completion_tokens": 1}}]


def test_events_split_on_blank_lines_with_comments_fields_and_done_skipped():
    assert list(_chunks([BODY])) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_events_cut_anywhere_between_pieces_read_the_same(size):
    """A piece may end inside a line, inside a UTF-8 character, or between CR and LF."""
    for body in (BODY, BODY.replace(b"\n", b"\r\n"), BODY.replace(b"\n", b"\r")):
        pieces = [body[i:i + size] for i in range(0, len(body), size)]
        assert list(_chunks(pieces)) == EXPECTED


def test_a_last_event_without_its_blank_line_still_counts():
    assert list(_chunks([b'data: {"choices": []}'])) == [{"choices": []}]
    assert list(_chunks([b'data: {"choices": []}\r'])) == [{"choices": []}]
