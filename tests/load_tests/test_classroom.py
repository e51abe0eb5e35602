"""The classroom benchmark's options (issue 15): every reply exactly --max-tokens long, and the
stack's CPU accounted by process role with the model's process left out of the CPU per reply.

A real run of `python -m load_tests --local` (the stack in a child process, one reply worker, the
model in its own process); it asserts what was counted, never how fast.
"""

from __future__ import annotations

import json

import pytest

from load_tests import classroom, speed
from load_tests.__main__ import main


def test_classroom_run_counts_cpu_by_role_and_caps_replies(tmp_path):
    out = tmp_path / "classroom-3"
    status = main(["--local", "--ttft-ms", "20", "--tokens-per-second", "0", "--max-tokens", "5", "--messages", "2",
                   "--burst", "--ramp", "1", "--participants", "3", "--llm-concurrency", "3",
                   "--function-processes", "1", "--warmup", "1", "--no-progress", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert status == 0, result["verification"]["failures"]
    assert [s["completion_tokens"] for s in result["samples"]] == [5] * 6
    local = result["local_stack"]
    roles = local["cpu_s_by_role"]
    assert {"gateway", "workers", "model"} <= set(roles), roles
    # the model's process is left out: the stack's CPU is the gateway's and the workers' (rounded apart)
    assert local["stack_cpu_s"] == pytest.approx(roles["gateway"] + roles["workers"] + roles.get("other", 0.0), abs=0.03)
    assert local["cpu_ms_per_reply"] == pytest.approx(1000 * local["stack_cpu_s"] / 6, abs=5)
    assert "CPU per reply" in (out / "report.md").read_text()
    # where the rest of the machine's CPU went during the traffic: shares of all cores, the generator's own
    machine = local["machine_cpu"]
    assert set(machine) == {"busy_percent", "idle_percent", "steal_percent"}, machine
    assert sum(machine.values()) == pytest.approx(100, abs=0.5) and machine["busy_percent"] > 0
    assert local["load_generator_cpu_s"] > 0
    assert "The machine's cores during the traffic" in (out / "report.md").read_text()
    # the machine's speed beside the run (load_tests/speed.py), and the CPU per reply scaled to its best
    speed = local["machine_speed"]
    assert speed["samples"] >= 1 and speed["median_ms"] >= speed["fastest_ms"] > 0 and speed["slowdown"] >= 1
    assert local["cpu_ms_per_reply_at_best_speed"] == pytest.approx(local["cpu_ms_per_reply"] / speed["slowdown"],
                                                                     abs=0.1)
    assert classroom.row(result).startswith("| 3 | ")

    # every reply is paired with the model's request by its marker, and split around the model's own times
    split = result["stack_overhead"]
    assert split["available"] and split["replies"] == split["paired"] == 6 and split["unpaired"] == 0, split
    for sample in result["samples"]:
        parts = sample["split"]
        assert sample["marker"] and all(parts[k] >= 0 for k in (
            "before_model", "model_ttft", "after_model_first", "before_model_reply", "model_reply", "after_model_done"))
        # the split adds up to what the client measured (by construction: one clock, the same readings)
        assert parts["before_model"] + parts["model_ttft"] + parts["after_model_first"] == pytest.approx(sample["ttfd_s"])
        assert parts["before_model_reply"] + parts["model_reply"] + parts["after_model_done"] == pytest.approx(
            sample["reply_s"])
        assert parts["stack_to_first_delta"] == pytest.approx(parts["before_model"] + parts["after_model_first"])
    assert split["ms"]["stack_to_first_delta"]["count"] == 6
    row = classroom.row(result)
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[3].endswith(" ms") and cells[4].endswith(" ms") and "-" not in (cells[3], cells[4]), cells  # the split
    assert cells[6].startswith(f"{local['cpu_ms_per_reply']} ms (") and cells[6].endswith("x)"), cells  # CPU, at best
    assert "What the stack adds" in (out / "report.md").read_text()


def _run(size: int, cpu: float, p95_ms: float, overhead_ms: float | None) -> dict:
    """The parts of a result.json the summary reads."""
    split = {"available": False} if overhead_ms is None else {"available": True, "ms": {
        "stack_to_first_delta": {"p99": overhead_ms}, "stack_to_full_reply": {"p99": overhead_ms + 5}}}
    return {"participants": {"planned": size}, "local_stack": {"cpu_ms_per_reply": cpu,
                                                               "cpu_ms_per_reply_at_best_speed": cpu / 2},
            "latency_ms": {"ttfd": {"p95": p95_ms}, "reply": {"p99": p95_ms + 1000}},
            "verification": {"lost": 0, "duplicated": 1 if cpu > 20 else 0}, "stack_overhead": split}


def test_repeated_runs_are_summarised_by_median_and_range():
    runs = [_run(200, 21.5, 3000, 2900), _run(10, 17.0, 570, 60), _run(200, 12.7, 1700, None),
            _run(200, 19.0, 2500, 2000)]
    header, *rows = classroom.repeats(runs)
    assert header.startswith("| N at once | runs |") and "\n|---|" in header
    assert rows == ["| 200 | 3 | 19.0 (12.7-21.5) ms | 9.5 (6.3-10.8) ms | 2.50 (1.70-3.00) s | 3.50 (2.70-4.00) s "
                    "| 2450.0 (2000.0-2900.0) ms | 2455.0 (2005.0-2905.0) ms | 0 / 1 |"]  # N=10 ran once: no row
    assert classroom.repeats([_run(10, 17.0, 570, 60)]) == []


def test_the_speed_summary_takes_the_window_or_the_sample_before_it():
    samples = [(10.0, 10.0), (10.5, 12.0), (11.0, 20.0), (11.5, 11.0)]
    assert speed.summarise(samples, 10.4, 11.2) == {"samples": 2, "median_ms": 16.0, "fastest_ms": 10.0,
                                                    "slowdown": 1.6}
    # a window between two samples: the one before it stands for it
    assert speed.summarise(samples, 10.6, 10.9)["median_ms"] == 12.0
    assert speed.summarise(samples, 1.0, 2.0) is None and speed.summarise([], 0.0, 1.0) is None
