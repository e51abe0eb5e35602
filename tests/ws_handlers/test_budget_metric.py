"""BudgetUsedPercent, the metric behind template.yaml's BudgetAlarm: emitted (as CloudWatch
embedded metric format on stdout, which Lambda ships to CloudWatch) whenever the message
function checks an experiment's budget, with the stack as its only dimension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ws_handlers import observability
from ws_handlers.ops.template import read_template

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(autouse=True)
def _metrics_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """Powertools prints metrics unless disabled, which a local stack run in this process may
    have left in the environment (it is read at each flush)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)


def _send(harness, chat_id: str, client_msg_id: str) -> list[dict]:
    return harness.send("c1", {"action": "send", "chat_id": chat_id, "client_msg_id": client_msg_id, "text": "hello"})


def _emitted(text: str, name: str = "BudgetUsedPercent") -> list[tuple[float, dict]]:
    """(value, EMF metadata) of every `name` in the EMF documents printed."""
    found = []
    for line in text.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                if metric["Name"] == name:
                    values = document[name] if isinstance(document[name], list) else [document[name]]
                    found += [(float(v), {**directive, "service": document.get("service"), "unit": metric["Unit"]})
                              for v in values]
    return found


def test_budget_use_is_emitted_when_a_message_is_checked(make_harness, capfd):
    harness = make_harness(TOKEN_BUDGET="100000")
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    capfd.readouterr()

    assert _send(harness, chat, "m1")[-1]["type"] == "message"
    ((first, meta),) = _emitted(capfd.readouterr().out)
    assert first == 0.0  # nothing spent before the first reply
    assert meta["Dimensions"] == [["service"]] and meta["unit"] == "Percent"  # no per-experiment dimension
    assert meta["service"] == observability.SERVICE  # POWERTOOLS_SERVICE_NAME: the stack name on AWS

    used = harness.store.read_controls("exp1").tokens_used
    assert used > 0
    assert _send(harness, chat, "m2")[-1]["type"] == "message"
    ((second, _),) = _emitted(capfd.readouterr().out)
    assert second == pytest.approx(100 * used / 100000)


def test_a_spent_budget_is_reported_over_the_threshold_before_the_refusal(harness, capfd):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    harness.store.set_controls("exp1", token_budget=40)
    harness.ddb.update_item(  # 50 tokens spent, as replies would have added them
        TableName="chats", Key={"pk": {"S": "EXP#exp1"}, "sk": {"S": "CONTROL"}},
        UpdateExpression="SET tokens_used = :n", ExpressionAttributeValues={":n": {"N": "50"}},
    )
    capfd.readouterr()
    (refused,) = _send(harness, chat, "m1")
    assert refused["code"] == "budget_exhausted"
    assert [v for v, _ in _emitted(capfd.readouterr().out)] == [125.0]


def test_no_budget_no_metric(harness, capfd):
    harness.connect("c1")
    chat = harness.start("c1")["chat_id"]
    capfd.readouterr()
    assert _send(harness, chat, "m1")[-1]["type"] == "message"
    out = capfd.readouterr().out
    assert _emitted(out, "Frames") and not _emitted(out)  # metrics are flushed, but not this one


def test_the_alarm_reads_the_metric_as_it_is_emitted():
    template = read_template(TEMPLATE_PATH)
    alarm = template["Resources"]["BudgetAlarm"]["Properties"]
    namespace = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    service = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, "BudgetUsedPercent")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": service}]
    assert alarm["Statistic"] == "Maximum" and alarm["Threshold"] == {"Ref": "BudgetAlarmPercent"}
