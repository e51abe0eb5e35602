"""Time to first delta by arrival rank, for a burst: did replies start in the order messages arrived?

In a burst everyone sends at the same moment, so the send time says nothing about order. The
rank of a send is the order in which the participants' `ack` frames arrived: the service acks
a message once it is stored and right before it enqueues its reply job (ws_handlers/chat.py),
so ack order is the closest order the client can see to the queue's own; the `queued` frame
follows the enqueue, and is kept for the queue wait below. (The send order is the generator's
own scheduling of a thousand tasks in one loop turn, not the service's.)

With `slots` replies at once (LlmConcurrency) and a FIFO queue, ranks 1..slots start at once
and each later block of `slots` waits one reply length more: a staircase. This module
measures it (per rank decile and per slot-block) and how far it is from arrival order:
Spearman's rank correlation between ack order and first-delta order, and the share of pairs
more than one slot-block apart in ack order whose replies started the other way round.
"""

from __future__ import annotations

import bisect
from typing import Any

from .stats import percentile


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank (as Spearman's rho needs)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long series (None under 2 points or no spread)."""
    if len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else None


def inversions_beyond(points: list[tuple[int, float]], gap: int) -> tuple[int, int]:
    """(inverted, pairs): of the pairs of sends more than `gap` ranks apart (`points` are
    (rank, start time) in rank order), how many started in the opposite order. O(n log n): for
    each send, count the sends more than `gap` ranks before it that started later than it did."""
    seen: list[float] = []  # start times of the sends more than `gap` ranks before the current one, sorted
    inverted = pairs = j = 0
    for rank, start in points:
        while j < len(points) and points[j][0] < rank - gap:
            bisect.insort(seen, points[j][1])
            j += 1
        pairs += len(seen)
        inverted += len(seen) - bisect.bisect_right(seen, start)
    return inverted, pairs


def _ms(values: list[float]) -> dict[str, float | int | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return {"n": len(values), "p50": r(percentile(values, 50)), "p95": r(percentile(values, 95)),
            "max": r(max(values) if values else None)}


def analyse(samples: list[dict[str, Any]], slots: int | None) -> dict[str, Any] | None:
    """The burst's sends by ack rank (None when the run had no burst). `samples` are
    runner.Reply.public() dicts; `slots` is LlmConcurrency, if known (the blocks need it)."""
    burst = [s for s in samples if s.get("burst")]
    if not burst:
        return None
    acked = sorted((s for s in burst if s["acked_at"] is not None), key=lambda s: s["acked_at"])
    # (ack rank, s from the burst's send to the first delta) of each send whose reply started
    ranked = [(i + 1, s) for i, s in enumerate(acked) if s["first_delta_at"] is not None]
    waits = [(rank, s["first_delta_at"] - s["sent_at"]) for rank, s in ranked]
    sends = [s["sent_at"] for s in burst]
    n = len(acked)
    out: dict[str, Any] = {
        "rank_by": "ack arrival",
        "sends": len(burst), "acked": n, "started": len(ranked), "slots": slots,
        "send_spread_ms": round((max(sends) - min(sends)) * 1000, 1),
        "ack_spread_ms": round((acked[-1]["acked_at"] - acked[0]["acked_at"]) * 1000, 1) if acked else None,
        "points": [[rank, round(w, 4)] for rank, w in waits],
        "spearman_ack_vs_first_delta": _round(spearman([s["acked_at"] for _, s in ranked],
                                                       [s["first_delta_at"] for _, s in ranked])),
    }
    out["deciles"] = [
        {"ranks": f"{lo + 1}-{hi}", **_ms([w for rank, w in waits if lo < rank <= hi])}
        for lo, hi in ((n * d // 10, n * (d + 1) // 10) for d in range(10)) if hi > lo
    ]
    if slots:
        blocks: list[list[float]] = [[] for _ in range(-(-n // slots))]
        for rank, w in waits:
            blocks[(rank - 1) // slots].append(w)
        out["blocks"] = [{"block": k + 1, "ranks": f"{k * slots + 1}-{min(n, (k + 1) * slots)}", **_ms(b)}
                         for k, b in enumerate(blocks)]
        out["step_s"] = _round(_slope([percentile(b, 50) or 0.0 for b in blocks if b]))
        inverted, pairs = inversions_beyond([(rank, s["first_delta_at"]) for rank, s in ranked], slots)
        out["inversions_beyond_one_block"] = {"inverted": inverted, "pairs": pairs,
                                              "share": _round(inverted / pairs if pairs else 0.0, 6)}
    first = [s for rank, s in ranked if rank <= (slots or n)]  # the first block: no wait for a slot
    lengths = [s["done_at"] - s["queued_at"] for s in first if s["done_at"] is not None and s["queued_at"] is not None]
    out["reply_length_s"] = _round(percentile(lengths, 50))  # a slot's occupancy: queued -> final message, unqueued
    return out


def _slope(ys: list[float]) -> float | None:
    """Least-squares slope of ys against 0, 1, 2, ..."""
    if len(ys) < 2:
        return None
    mx, my = (len(ys) - 1) / 2, sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in enumerate(ys)) / sum((x - mx) ** 2 for x in range(len(ys)))


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def queue_wait(samples: list[dict[str, Any]]) -> list[float]:
    """Seconds each answered send waited between its `queued` frame and its first delta (0 when
    `queued` came after the first delta: the reply never waited)."""
    out = []
    for s in samples:
        if s["first_delta_at"] is None:
            continue
        if s["queued_after_delta"]:
            out.append(0.0)
        elif s["queued_at"] is not None:
            out.append(max(0.0, s["first_delta_at"] - s["queued_at"]))
    return out


def chart(result: dict[str, Any], path: Any) -> None:
    """Time from the burst's send to the first delta against ack rank, with each block's median
    and the ideal staircase (block k waits k reply lengths more than the first)."""
    import matplotlib.pyplot as plt

    analysis = result["by_rank"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if analysis["points"]:
        xs, ys = zip(*analysis["points"])
        ax.scatter(xs, ys, s=4, alpha=0.5, label=f"one send (n={len(xs)})")
    slots, length = analysis.get("slots"), analysis.get("reply_length_s")
    if analysis.get("blocks"):
        first = (analysis["blocks"][0]["p50"] or 0) / 1000
        for b in analysis["blocks"]:
            lo, hi = (int(x) for x in b["ranks"].split("-"))
            ax.hlines((b["p50"] or 0) / 1000, lo, hi, colors="C1", linewidth=2,
                      label="block median" if b["block"] == 1 else None)
            if length:
                ideal = first + (b["block"] - 1) * length
                ax.hlines(ideal, lo, hi, colors="k", linestyles="dashed", linewidth=1,
                          label=f"ideal: +{length:.2f} s (one reply) per block of {slots}" if b["block"] == 1 else None)
    ax.set_xlabel("arrival rank (order of the acks)")
    ax.set_ylabel("s from send to first delta")
    rho = analysis.get("spearman_ack_vs_first_delta")
    ax.set_title(f"{result['scenario']}: time to first delta by arrival rank (Spearman {rho})")
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> list[str]:
    """The report's section on arrival order (none without a burst)."""
    a = result.get("by_rank")
    if not a:
        return []

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.0f}"

    inv = a.get("inversions_beyond_one_block")
    lines = [
        "## Arrival order (the burst's first messages)",
        "",
        f"{a['sends']} first messages sent at the barrier within {a['send_spread_ms']} ms; {a['acked']} acked (over "
        f"{a['ack_spread_ms']} ms), {a['started']} replies started. Rank = order in which the acks arrived (the "
        f"service acks a stored message right before it queues the reply). Time = from the send to the reply's "
        f"first delta.",
        "",
        f"- Spearman rank correlation, ack order vs first-delta order: **{a['spearman_ack_vs_first_delta']}** "
        "(1: replies started exactly in arrival order).",
    ]
    if inv is not None:
        lines.append(f"- Pairs more than one slot-block ({a['slots']} ranks) apart that started in the opposite order: "
                     f"**{inv['inverted']} of {inv['pairs']}** ({100 * inv['share']:.3f}%).")
    if a.get("step_s") is not None:
        lines.append(f"- Staircase: each block of {a['slots']} waited {a['step_s']:.2f} s more than the one before "
                     f"(least-squares over the block medians); one reply (a first-block slot from queued to the "
                     f"final message) lasted {a['reply_length_s']} s.")
    lines += ["", "| arrival ranks | n | p50 (ms) | p95 (ms) | max (ms) |", "|---|---|---|---|---|"]
    lines += [f"| {d['ranks']} | {d['n']} | {f(d['p50'])} | {f(d['p95'])} | {f(d['max'])} |" for d in a["deciles"]]
    return lines + [""]
