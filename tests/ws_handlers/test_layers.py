"""The layers point one way (docs/architecture.md, "Modules").

The core (ports and domain) is free of I/O: importing it loads none of the libraries the
adapters and the entry points are for. And the import rules of pyproject.toml's
[tool.importlinter] hold: the core imports no adapter, entry point or crypto, the service never
imports the local stack or the load tests, and the Lambda functions never import what their zip
leaves out. import-linter reads every import, those inside functions too, and chains of them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
CORE = next(c for c in CONTRACTS if c["id"] == "core")["source_modules"]
#: What the adapters and the entry points are for; the core loads none of them.
OUTSIDE = ("boto3", "botocore", "openai", "aws_lambda_powertools", "sqlite3", "jwt", "cryptography", "tenacity")


def test_importing_the_core_loads_no_io_library():
    code = (
        "import sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        f"print(' '.join(sorted(m for m in {OUTSIDE!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_core_covers_every_module_of_the_service_but_the_edges():
    """A new module of ws_handlers is either core (listed, so checked) or one of the edges."""
    edges = {"adapters", "ops", "runtime", "entry", "observability", "connect", "disconnect", "message", "reply",
             "enrol", "admission", "tickets"}
    modules = {p.stem for p in (ROOT / "ws_handlers").glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in (ROOT / "ws_handlers").iterdir() if (p / "__init__.py").exists()}
    assert modules - edges == {name.removeprefix("ws_handlers.") for name in CORE}


def test_the_import_rules_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in done.stdout
