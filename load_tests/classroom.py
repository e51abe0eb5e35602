"""The classroom benchmark's table (issue 15) from the runs' result.json files.

    python -m load_tests.classroom load_tests/results/classroom-10 load_tests/results/classroom-50 ...

One Markdown row per run: first delta p50 / p95, full reply p50 / p95 / p99 (seconds), what the
stack adds to them (ms: stack_overhead.py's split around the model's own times; "-" without
them), lost, duplicated, CPU per reply (ms: the stack's processes, the model excluded) and the load average
at the start (the machine is shared).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADER = ("| N at once | first delta p50 / p95 | full reply p50 / p95 / p99 | stack overhead to first delta p50 / p99 "
          "| stack overhead to full reply p99 | lost / duplicated | CPU per reply | CPU by role (s) | load average |\n"
          "|---|---|---|---|---|---|---|---|---|")


def row(result: dict[str, Any]) -> str:
    lat, v, local = result["latency_ms"], result["verification"], result.get("local_stack") or {}

    def s(name: str, *qs: str) -> str:
        return " / ".join(f"{lat[name][q] / 1000:.2f}" if lat[name][q] is not None else "-" for q in qs) + " s"

    split = result.get("stack_overhead") or {}

    def ms(name: str, *qs: str) -> str:
        if not split.get("available"):
            return "-"
        values = [split["ms"][name][q] for q in qs]
        return " / ".join("-" if v is None else f"{v:.1f}" for v in values) + " ms"

    roles = ", ".join(f"{k} {v:g}" for k, v in (local.get("cpu_s_by_role") or {}).items())
    return (f"| {result['participants']['planned']} | {s('ttfd', 'p50', 'p95')} | {s('reply', 'p50', 'p95', 'p99')} "
            f"| {ms('stack_to_first_delta', 'p50', 'p99')} | {ms('stack_to_full_reply', 'p99')} "
            f"| {v['lost']} / {v['duplicated']} | {local.get('cpu_ms_per_reply', '-')} ms | {roles} "
            f"| {' '.join(result.get('loadavg_at_start') or [])} |")


def main(argv: list[str]) -> None:
    print(HEADER)
    results = [json.loads((Path(directory) / "result.json").read_text()) for directory in argv]
    for result in sorted(results, key=lambda r: r["participants"]["planned"]):
        print(row(result))


if __name__ == "__main__":
    main(sys.argv[1:])
