"""The demo study `make dev` registers for the demo survey page (local_gateway/demo_study.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from local_gateway.demo_study import demo_survey_url, ensure_demo_study
from ws_handlers.adapters.sqlite import SqliteStore
from ws_handlers.enrolment import Assignment
from ws_handlers.study import EntryMode


def test_registered_once_kept_across_starts_and_following_the_pages_port(tmp_path):
    store = SqliteStore(tmp_path / "chat.sqlite3")
    study = ensure_demo_study(store, "http://127.0.0.1:8790/demo.html")
    assert study.entry is EntryMode.LINK and len(study.arms) == 2
    assert store.get_study(study.id).study.origins == ("http://127.0.0.1:8790", "http://localhost:8790")
    seed = store.get_study(study.id).seed
    store.put_assignment(Assignment(study.id, "R_1", study.arms[0].name, 0, 0.0))

    ensure_demo_study(store, "http://127.0.0.1:8790/demo.html")  # the next `make dev`
    ensure_demo_study(store, "http://127.0.0.1:9790/demo.html")  # `make dev PORT=9787`
    record = store.get_study(study.id)
    assert record.study.origins == ("http://127.0.0.1:9790", "http://localhost:9790")
    assert record.seed == seed and [a.participant for a in store.assignments(study.id)] == ["R_1"]


def test_the_survey_link_enters_the_demo_study(tmp_path):
    study = ensure_demo_study(SqliteStore(tmp_path / "chat.sqlite3"), "http://127.0.0.1:8790/demo.html")
    url = urlsplit(demo_survey_url("http://127.0.0.1:8790/demo.html", "http://127.0.0.1:8791", study))
    assert url.path == "/demo-survey.html"
    assert parse_qs(url.query) == {"chat_entry": ["http://127.0.0.1:8791"], "chat_study": [study.id]}
    limesurvey = urlsplit(demo_survey_url("http://127.0.0.1:8790/demo.html", "http://127.0.0.1:8791", study,
                                          "demo-limesurvey.html"))
    assert (limesurvey.path, limesurvey.query) == ("/demo-limesurvey.html", url.query)
