"""Cold starts: only the reply function loads the openai client."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, loads_openai", [("connect", False), ("disconnect", False), ("message", False), ("reply", True)])
def test_which_handlers_import_openai(module, loads_openai):
    code = f"import sys, ws_handlers.{module}; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(loads_openai)
