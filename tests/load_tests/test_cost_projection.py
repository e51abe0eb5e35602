"""The cost projection behind docs/operations.md, and the price table's lookup by model name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from load_tests import cost
from ws_handlers.ops import prices

ROOT = Path(__file__).resolve().parents[2]


def test_dated_model_names_are_priced_as_their_family():
    assert prices.llm_prices("gpt-4o-mini-2024-07-18") == prices.LLM_PRICES["gpt-4o-mini"]
    assert prices.llm_prices("gpt-4o-2024-08-06") == prices.LLM_PRICES["gpt-4o"]
    assert prices.llm_prices("gpt-4o") == prices.LLM_PRICES["gpt-4o"]
    assert prices.llm_prices("offline") is None and prices.llm_prices(None) is None
    assert prices.llm_usd("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert prices.llm_usd("llama3", 10, 10) is None


@pytest.mark.timeout(600)  # the projection runs the store profile, a child process on moto
def test_a_projection_scales_with_participants_and_counts_what_a_session_does():
    one = cost.project(1)  # first: its profile (10 messages) serves the 5-message study too
    five, thousand = cost.project(1, cost.Study(messages=5)), cost.project(1000)
    assert thousand["usd_aws_total"] == pytest.approx(1000 * one["usd_aws_total"], rel=1e-3)
    assert thousand["usd_llm_total"] == pytest.approx(1000 * one["usd_llm_total"], rel=1e-3)
    ops = one["operations"]
    study = cost.Study()
    assert ops["lambda_requests"]["ReplyFunction"] == study.messages
    assert ops["lambda_requests"]["MessageFunction"] == study.messages + 1  # the start and each send
    assert ops["llm_completion_tokens"] == study.messages * study.reply_chars / study.chars_per_token
    # every prompt resends the chat so far: the tenth costs more than the first
    first = study.system_prompt_tokens + (study.opening_chars + study.user_chars) / study.chars_per_token
    assert ops["llm_prompt_tokens"] > study.messages * first
    assert one["usd_llm_total"] > 2 * five["usd_llm_total"]
    # DynamoDB's units are those the store profile counted, call by call, on the adapter
    assert all(one["assumptions"]["dynamodb_ops"].values())
    assert ops["dynamodb_wru"] > 0 and ops["dynamodb_rru"] > 0


@pytest.mark.timeout(600)  # the store profile, a child process on moto (shared with the test above in one worker)
def test_the_command_prints_the_table_of_the_docs(capsys):
    assert cost.main(["--participants", "100", "1000", "10000", "--messages", "10"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    assert table.splitlines()[0] == "| | 100 participants | 1,000 participants | 10,000 participants |"
    assert "| **AWS total** |" in table and "| LLM (gpt-4o-mini) |" in table
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert table in operations, "docs/operations.md shows another table: paste the command's output there"


def test_the_command_refuses_what_it_cannot_project(capsys):
    bad = subprocess.run([sys.executable, "-m", "load_tests.cost", "--participants", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    with pytest.raises(SystemExit) as long:
        cost.main(["--user-chars", "5000"])
    assert long.value.code == 2 and "MAX_MESSAGE_CHARS" in capsys.readouterr().err  # refused before any run
