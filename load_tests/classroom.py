"""The classroom benchmark's table (issue 15) from the runs' result.json files.

    python -m load_tests.classroom load_tests/results/classroom-10 load_tests/results/classroom-50 ...

One Markdown row per run: first delta p50 / p95, full reply p50 / p95 / p99 (seconds), what the
stack adds to them (ms: stack_overhead.py's split around the model's own times; "-" without
them), lost, duplicated, CPU per reply (ms: the stack's processes, the model excluded) and the load average
at the start (the machine is shared).

When a size was run more than once (`make bench-classroom` runs each CLASSROOM_REPEATS times), a
second table gives each figure's median and range over its runs. One run says little on this
project's machine: the same code gave 11.4 to 21.5 ms of CPU per reply at N=200 from one run to the
next, because the virtual machine's host slows it down by up to 2.4 times from one second to the next
(speed.py). The CPU per reply "at the machine's best speed" divides each run's figure by the slowdown
its speed probe measured during the traffic (docs/benchmarks.md, "Phase 4").
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

HEADER = ("| N at once | first delta p50 / p95 | full reply p50 / p95 / p99 | stack overhead to first delta p50 / p99 "
          "| stack overhead to full reply p99 | lost / duplicated "
          "| CPU per reply (at the machine's best speed; slowdown) | CPU by role (s) "
          "| machine busy / idle / steal | load average |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _overhead(result: dict[str, Any], name: str, q: str) -> float | None:
    """One quantile (ms) of the run's stack overhead split (stack_overhead.py); None without it."""
    split = result.get("stack_overhead") or {}
    return split["ms"][name][q] if split.get("available") else None


def row(result: dict[str, Any]) -> str:
    lat, v, local = result["latency_ms"], result["verification"], result.get("local_stack") or {}

    def s(name: str, *qs: str) -> str:
        return " / ".join(f"{lat[name][q] / 1000:.2f}" if lat[name][q] is not None else "-" for q in qs) + " s"

    def ms(name: str, *qs: str) -> str:
        if not (result.get("stack_overhead") or {}).get("available"):
            return "-"
        values = [_overhead(result, name, q) for q in qs]
        return " / ".join("-" if v is None else f"{v:.1f}" for v in values) + " ms"

    roles = ", ".join(f"{k} {v:g}" for k, v in (local.get("cpu_s_by_role") or {}).items())
    if "load_generator_cpu_s" in local:
        roles += f", load generator {local['load_generator_cpu_s']:g}"
    cpu = f"{local.get('cpu_ms_per_reply', '-')} ms"
    if (speed := local.get("machine_speed")) and local.get("cpu_ms_per_reply_at_best_speed") is not None:
        cpu += f" ({local['cpu_ms_per_reply_at_best_speed']} ms; {speed['slowdown']:g}x)"
    machine = local.get("machine_cpu")
    shares = " / ".join(f"{machine[k]:g}" for k in ("busy_percent", "idle_percent", "steal_percent")) + " %" \
        if machine else "-"
    return (f"| {result['participants']['planned']} | {s('ttfd', 'p50', 'p95')} | {s('reply', 'p50', 'p95', 'p99')} "
            f"| {ms('stack_to_first_delta', 'p50', 'p99')} | {ms('stack_to_full_reply', 'p99')} "
            f"| {v['lost']} / {v['duplicated']} | {cpu} | {roles} | {shares} "
            f"| {' '.join(result.get('loadavg_at_start') or [])} |")


REPEATS_HEADER = ("| N at once | runs | CPU per reply | at the machine's best speed | first delta p95 | full reply p99 "
                  "| stack overhead to first delta p99 | stack overhead to full reply p99 | lost / duplicated |\n"
                  "|---|---|---|---|---|---|---|---|---|")


def _spread(values: list[float | None], unit: str, scale: float = 1.0, digits: int = 1) -> str:
    """"median (min-max) unit" of the runs that have the figure; "-" when none has it."""
    present = sorted(v * scale for v in values if v is not None)
    if not present:
        return "-"
    median = statistics.median(present)
    if len(present) == 1:
        return f"{median:.{digits}f} {unit}"
    return f"{median:.{digits}f} ({present[0]:.{digits}f}-{present[-1]:.{digits}f}) {unit}"


def repeats(results: list[dict[str, Any]]) -> list[str]:
    """One row per size run more than once: each figure's median and range over its runs."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for result in results:
        by_size.setdefault(result["participants"]["planned"], []).append(result)
    rows = []
    for size, runs in sorted(by_size.items()):
        if len(runs) < 2:
            continue
        overhead = {name: [_overhead(r, name, "p99") for r in runs]
                    for name in ("stack_to_first_delta", "stack_to_full_reply")}
        cpu = [(r.get("local_stack") or {}).get("cpu_ms_per_reply") for r in runs]
        at_best = [(r.get("local_stack") or {}).get("cpu_ms_per_reply_at_best_speed") for r in runs]
        lost = sum(r["verification"]["lost"] for r in runs)
        duplicated = sum(r["verification"]["duplicated"] for r in runs)
        rows.append(f"| {size} | {len(runs)} | {_spread(cpu, 'ms')} | {_spread(at_best, 'ms')} "
                    f"| {_spread([r['latency_ms']['ttfd']['p95'] for r in runs], 's', 1 / 1000, 2)} "
                    f"| {_spread([r['latency_ms']['reply']['p99'] for r in runs], 's', 1 / 1000, 2)} "
                    f"| {_spread(overhead['stack_to_first_delta'], 'ms')} "
                    f"| {_spread(overhead['stack_to_full_reply'], 'ms')} | {lost} / {duplicated} |")
    return [REPEATS_HEADER, *rows] if rows else []


def main(argv: list[str]) -> None:
    print(HEADER)
    results = [json.loads((Path(directory) / "result.json").read_text()) for directory in argv]
    for result in sorted(results, key=lambda r: r["participants"]["planned"]):
        print(row(result))
    if summary := repeats(results):
        print("\nOver the runs of each size, median (min-max):\n")
        print("\n".join(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
