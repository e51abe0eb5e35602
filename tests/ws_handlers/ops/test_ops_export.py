"""Export streams: 20,000 messages go out page by page, never all in memory at once."""

from __future__ import annotations

import csv
import json
import sqlite3
import tracemalloc
from pathlib import Path

import pytest
from conftest import seed_store, stored_rows

from ws_handlers.adapters.sqlite import SqliteStore
from ws_handlers.model import PROVENANCE_FIELDS
from ws_handlers.ops import export
from ws_handlers.ops.cli import main

TEXT_CHARS = 400


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """100 chats of 201 messages (an opening and 100 turns): 20,100 messages, 8 MB of text."""
    data_dir = tmp_path_factory.mktemp("big")
    store = SqliteStore(data_dir / "chat.sqlite3")
    chats = seed_store(store, "big", [(f"P{n:03d}", "s1") for n in range(100)], turns=100, text_chars=TEXT_CHARS)
    yield data_dir, store, [c.chat_id for c in chats]
    store.close()


class _Pages:
    """The store, with the page sizes it was asked for recorded."""

    def __init__(self, store) -> None:
        self.store, self.sizes = store, []

    def experiment_chats(self, *args, **kwargs):
        return self.store.experiment_chats(*args, **kwargs)

    def messages(self, chat_id, after_seq=0, limit=None):
        page = self.store.messages(chat_id, after_seq, limit)
        self.sizes.append(len(page))
        return page


def test_twenty_thousand_messages_stream_out_in_pages(big, tmp_path):
    data_dir, store, chat_ids = big
    target = tmp_path / "big.jsonl"
    tracemalloc.start()
    try:
        code = main(["export", "--data-dir", str(data_dir), "--experiment", "big", "--format", "jsonl",
                     "--output", str(target), "--quiet"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0
    size = target.stat().st_size
    assert size > 12_000_000
    assert peak < 3_000_000, f"export peaked at {peak:,} bytes for {size:,} bytes of rows"  # a page or two, not 20k rows

    with target.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 20_100
    assert rows[:201] == stored_rows(store, chat_ids[:1]) and rows[-201:] == stored_rows(store, chat_ids[-1:])
    assert [r["participant"] for r in rows[::201]] == [f"P{n:03d}" for n in range(100)]

    paged = _Pages(store)
    assert sum(1 for _ in export.rows(paged, "big", page_size=64)) == 20_100
    assert max(paged.sizes) == 64 and len(paged.sizes) == 100 * 4  # 201 messages: pages of 64, 64, 64, 9


def test_csv_is_excel_safe_unless_raw(tmp_path):
    rows = [{c: None for c in export.COLUMNS} | {"text": t, "seq": 1} for t in
            ("=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "\tTab", "plain -1", "")]
    out = tmp_path / "a.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        assert export.write_csv(iter(rows), f) == 7
    with out.open(newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    assert texts == ["'=HYPERLINK(\"http://x\")", "'+1", "'-1", "'@SUM(A1)", "'\tTab", "plain -1", ""]
    with out.open("w", newline="", encoding="utf-8") as f:
        export.write_csv(iter(rows), f, raw=True)
    with out.open(newline="", encoding="utf-8") as f:
        assert [r["text"] for r in csv.DictReader(f)] == [r["text"] for r in rows]


def test_replies_stored_before_provenance_export_with_it_empty(tmp_path):
    """A store file the code before provenance wrote (tests/ws_handlers/adapters/data/store-v4.sql):
    exported with the provenance columns, empty for every row."""
    dump = Path(__file__).parents[1] / "adapters" / "data" / "store-v4.sql"
    db = sqlite3.connect(tmp_path / "chat.sqlite3")
    db.executescript(dump.read_text())
    db.execute("PRAGMA user_version = 4")
    db.close()
    out = tmp_path / "old.csv"
    assert main(["export", "--data-dir", str(tmp_path), "--experiment", "exp1", "--output", str(out), "--quiet"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == export.COLUMNS
        rows = list(reader)
    assert [(r["seq"], r["role"], r["model"], r["prompt_tokens"]) for r in rows] == [
        ("1", "assistant", "", "0"), ("2", "user", "", "0"), ("3", "assistant", "gpt-4o-mini", "12")]
    assert {r[k] for r in rows for k in PROVENANCE_FIELDS} == {""}
