"""The reply function imports `openai` without running the `__init__.py` of `openai.types`'
packages (lazy_types.py), streams replies and reports errors without them, and every name a
package exports is still the very object a plain `import openai` gives. Each check runs in a
fresh interpreter: this one has long imported the SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

#: Reports, as JSON, how much of openai.types is loaded and which packages ran their __init__.
_STATE = """
import json, sys
def state():
    loaded = [n for n in sys.modules if n.startswith("openai.types")]
    packages = [n for n in loaded if hasattr(sys.modules[n], "__path__")]
    ran = sorted(n for n in packages if "_lazy_init" not in sys.modules[n].__dict__)
    return {"modules": len(loaded), "ran": ran, "heavy": "openai.types.responses.response" in sys.modules}
"""

#: The public names of some packages, and where each comes from (its module and name). Submodules
#: are left out: which of them a package has as attributes depends on what was imported before.
_NAMES = """
import importlib, json, types
def where(value, name):
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', name)}"
def names(packages):
    out = {}
    for package in packages:
        module = importlib.import_module(package)
        values = {n: getattr(module, n) for n in dir(module) if not n.startswith("_")}
        out[package] = {n: where(v, n) for n, v in values.items() if not isinstance(v, types.ModuleType)}
    return out
"""

PACKAGES = ["openai.types", "openai.types.chat", "openai.types.responses", "openai.types.beta"]


def _run(code: str) -> Any:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_reply_function_imports_and_streams_without_the_sdks_model_catalogue():
    report = _run(_STATE + """
import ws_handlers.reply
from local_gateway.offline_model import OfflineModel
from local_gateway.threaded import serve_in_thread
from ws_handlers.adapters.openai_model import OpenAIChatModel
from ws_handlers.bot import Bot
from ws_handlers.model import LLMError, Usage
imported = state()
bot = Bot("ada", "gpt-4o-mini", "Be brief.", temperature=0.3, max_tokens=20)
with serve_in_thread(OfflineModel(ttft=0, tokens_per_second=0).app()) as served:
    *pieces, usage = OpenAIChatModel("test", served.url + "/v1", 30, 0).stream(bot, [{"role": "user", "content": "hi"}])
    try:  # a refused request: the SDK's status error, as the adapter's LLMError
        list(OpenAIChatModel("test", served.url + "/nowhere", 30, 0).stream(bot, [{"role": "user", "content": "hi"}]))
        error = None
    except LLMError as exc:
        error = exc.code
print(json.dumps({"imported": imported, "after": state(), "text": "".join(pieces), "usage": isinstance(usage, Usage),
                  "error": error}))
""")
    imported, after = report["imported"], report["after"]
    assert not imported["heavy"] and imported["modules"] < 150  # of ~470 in a plain import
    assert imported["ran"] == []  # no package's __init__ ran: names came from their own modules
    assert report["text"] and report["usage"] and report["error"]
    assert after == imported  # a reply and an error load nothing more


def test_every_name_a_package_exports_is_the_one_a_plain_import_gives():
    plain = _run(_NAMES + f"""
import openai
print(json.dumps(names({PACKAGES!r})))
""")
    # each name read on its own first (a re-export from its module, or the package's __init__ when
    # needed), in the order dir() gives, then the packages' full listing
    one_by_one = _run(_NAMES + f"""
import importlib
import ws_handlers.adapters.openai_model
plain = {json.dumps({p: sorted(n) for p, n in plain.items()})!r}
read = {{p: {{n: where(getattr(importlib.import_module(p), n), n) for n in ns}} for p, ns in json.loads(plain).items()}}
print(json.dumps({{"read": read, "listed": names({PACKAGES!r})}}))
""")
    assert all(len(plain[p]) > 50 for p in PACKAGES)
    assert one_by_one["read"] == plain and one_by_one["listed"] == plain
    assert plain["openai.types.chat"]["ChatCompletionChunk"] == \
        "openai.types.chat.chat_completion_chunk.ChatCompletionChunk"


def test_threads_asking_packages_for_names_at_once_all_get_them():
    report = _run(_STATE + """
import threading
import ws_handlers.adapters.openai_model
import openai
names = ["Assistant", "Thread", "AssistantDeleted", "FileSearchTool", "CodeInterpreterTool", "FunctionTool"]
barrier, got, failed = threading.Barrier(2 * len(names)), {}, []
def ask(name):  # a re-export, read from its own module
    barrier.wait()
    try:
        got[name] = getattr(openai.types.beta, name).__name__
    except Exception as exc:
        failed.append(repr(exc))
def listing():  # the whole package: its __init__ runs, once
    barrier.wait()
    try:
        got.setdefault("listed", len(dir(openai.types.beta)))
    except Exception as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=f, args=a) for n in names for f, a in ((ask, (n,)), (listing, ()))]
for t in threads: t.start()
for t in threads: t.join(60)
print(json.dumps({"got": got, "failed": failed, "ran": "openai.types.beta" in state()["ran"]}))
""")
    got = report["got"]
    assert report["failed"] == [] and report["ran"] and got.pop("listed") > 100
    assert got == {n: n for n in got} and len(got) == 6
