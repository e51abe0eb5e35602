"""Cold starts: each handler module loads, at Lambda's INIT, the libraries its invocations use and
no others: only the reply function loads the openai client, and only the functions that read
credentials (connect, message, enrol) load PyJWT and cryptography."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("openai", "jwt", "cryptography")


@pytest.mark.parametrize("module, loads", [
    ("connect", {"jwt", "cryptography"}),
    ("disconnect", set()),
    ("message", {"jwt", "cryptography"}),
    ("enrol", {"jwt", "cryptography"}),
    ("reply", {"openai"}),
])
def test_which_libraries_each_handler_imports(module, loads):
    code = f"import sys, ws_handlers.{module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == loads
