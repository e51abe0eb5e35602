"""The reply's model stream is read as server-sent events by llm._chunks (not the SDK's per-chunk
pydantic objects): what a compatible server may send is parsed as the SDK would."""

from __future__ import annotations

from ws_handlers.adapters.openai_model import _chunks


def test_events_split_on_blank_lines_with_comments_fields_and_done_skipped():
    lines = [": keep-alive", "", "event: message", 'data: {"choices": [{"delta": {"content": "Hi"}}]}', "",
             'data:{"usage": {"prompt_tokens": 3,', 'data: "completion_tokens": 1}}', "", "data: [DONE]", ""]
    assert list(_chunks(lines)) == [{"choices": [{"delta": {"content": "Hi"}}]},
                                    {"usage": {"prompt_tokens": 3, "completion_tokens": 1}}]


def test_a_last_event_without_its_blank_line_still_counts():
    assert list(_chunks(['data: {"choices": []}'])) == [{"choices": []}]
