"""The protocol document lists every error code the code can send, and nothing else."""

import re
from pathlib import Path

from ws_handlers.errors import CODES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_protocol_lists_every_error_code_with_its_retryability():
    text = (DOCS / "protocol.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (yes|no) \|", text, flags=re.M))
    assert set(rows) == set(CODES)
    assert {code: CODES[code].retryable for code in CODES} == {c: r == "yes" for c, r in rows.items()}
