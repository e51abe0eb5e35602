"""oTree settings of the LLM chat project (run it with `make dev`; docs in README.md)."""

import os
import sys
from os import environ
from pathlib import Path

# ws_handlers (minting tickets: cryptography + pyjwt only) and ws_handlers.adapters.sqlite (the bots'
# tests) live at the repository root; they import nothing of the service's other dependencies.
# the repository, for ws_handlers; LLM_CHAT_ROOT when the project runs from a copy (tests:
# oTree keeps its SQLite database in db.sqlite3 of the working directory, whatever DATABASE_URL says)
_ROOT = os.environ.get("LLM_CHAT_ROOT") or str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

SESSION_CONFIGS = [
    dict(
        name="chat_demo",
        display_name="LLM chat: two bots as two treatments (balanced randomisation)",
        app_sequence=["chat"],
        num_demo_participants=4,
        # names of bots in chat/bots.py; participants are assigned to them in balanced blocks
        treatments=["ada_friendly", "ada_socratic"],
        # the experimenter's rule for moving on, enforced on the server (chat.Chat.error_message)
        min_user_messages=2,
        min_chat_seconds=0,
    ),
]

SESSION_CONFIG_DEFAULTS = dict(real_world_currency_per_point=1.00, participation_fee=0.00, doc="")

# The treatment is recorded on the participant, on the server only (never in js_vars or the page).
PARTICIPANT_FIELDS = ["chat_bot"]
SESSION_FIELDS = []

LANGUAGE_CODE = "en"
REAL_WORLD_CURRENCY_CODE = "USD"
USE_POINTS = True

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = environ.get("OTREE_ADMIN_PASSWORD")

DEMO_PAGE_INTRO_HTML = """
<p>Open <b>LLM chat</b> below, then a participant link, to chat as a participant.
Locally the chat runs on the offline model: no key needed.</p>
"""

SECRET_KEY = environ.get("OTREE_SECRET_KEY", "llm-chat-local-dev-only")
