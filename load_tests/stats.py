"""Percentiles and summaries, without numpy."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99, max (in the values' unit)."""
    present = [v for v in values if v is not None]
    return {
        "count": len(present),
        "mean": sum(present) / len(present) if present else None,
        "p50": percentile(present, 50),
        "p95": percentile(present, 95),
        "p99": percentile(present, 99),
        "max": max(present) if present else None,
    }


def summary_ms(seconds: Iterable[float | None]) -> dict[str, float | int | None]:
    """`summary` of values in seconds, in milliseconds rounded to 0.1 ms."""
    out = summary([None if v is None else v * 1000.0 for v in seconds])
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}
