"""The result of a run: a JSON document, a Markdown report, and charts (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from . import cost, ranks, stack_overhead
from .stats import summary, summary_ms as _ms

MS = 1000.0


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages (Linux), or nothing."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        info["memory"] = subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info["loadavg_at_end"] = loadavg()
    try:
        import websockets

        info["websockets"] = websockets.__version__
    except Exception:
        pass
    try:
        import aiohttp

        info["aiohttp"] = aiohttp.__version__
    except Exception:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def emulation(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the local stack's emulations counted during the run: `after` less `before` (two
    Stack.stats(), around the measured run, so the warm-up is left out)."""
    out: dict[str, Any] = {"queues": {}}
    for name, q in after.get("queues", {}).items():
        q0 = before.get("queues", {}).get(name, {})
        waits = q["waits"][len(q0.get("waits", [])):]
        out["queues"][name] = {k: q[k] - q0.get(k, 0) if k in ("sent", "delivered", "duplicated", "redelivered",
                                                                "expired", "dead_letters") else q[k]
                               for k in q if k != "waits"} | {"wait_ms": _ms(waits)}
    if "gateway" in after:  # sockets closed as not reading during the run; the peak is the stack's so far
        g0 = before.get("gateway", {})
        out["gateway"] = {k: n - g0.get(k, 0) if k == "stalled_closes" else n for k, n in after["gateway"].items()}
    if "strict_dynamodb" in after:
        strict = dict(after["strict_dynamodb"])
        c0 = before.get("strict_dynamodb", {}).get("counters", {})
        strict["counters"] = {k: n - c0.get(k, 0) if k != "held" else n for k, n in strict["counters"].items()}
        out["strict_dynamodb"] = strict
    return out


def build(run: Any, *, command: str, scenario: str, floor: dict[str, Any] | None, local: dict[str, Any] | None,
          extra: dict[str, Any] | None = None, slots: int | None = None, priced: bool = True,
          timings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON result of a finished run; `slots`: replies at once (LlmConcurrency), for the ranks' blocks;
    `priced`: with the AWS cost estimate (it profiles the store in a child process: seconds); `timings`:
    the model's `GET /_timings` after the run, for the split of each reply (stack_overhead.py)."""
    replies = [r for p in run.people for r in p.replies]
    done = [r for r in replies if r.final_text is not None]
    v = run.verification
    model_ttft = (floor or {}).get("ttft_s")
    tps = (floor or {}).get("tokens_per_second")
    overhead_ttfd = [r.ttfd_s - model_ttft for r in done if r.ttfd_s is not None] if model_ttft is not None else []
    overhead_reply: list[float] = []
    if model_ttft is not None and tps:
        for r in done:  # the model streams token i at ttft + i / tps
            model_s = model_ttft + max(0, r.completion_tokens - 1) / tps
            overhead_reply.append(r.reply_s - model_s)  # type: ignore[operator]
    o = run.o
    samples = [r.public() for r in replies]
    overhead = stack_overhead.analyse(samples, timings)  # adds each finished sample's `split`
    result: dict[str, Any] = {
        "scenario": scenario,
        "command": command,
        "started_at": run.started_wall,
        "options": {"participants": o.participants, "messages": o.messages, "think_s": o.think, "ramp_s": o.ramp,
                    "deadline_s": o.deadline, "reply_timeout_s": o.reply_timeout, "retries": o.retries,
                    "url": o.url, "bot": run.bot.name, "model": run.bot.model, "seed": o.seed, "burst": o.burst},
        "machine": machine(),
        "local_stack": local,
        "model_floor": floor,
        "duration_s": {"traffic": round(run.traffic_s, 2), "verification": round(v.duration_s, 2)},
        "participants": {"planned": o.participants, "connected": run.connected, "peak_open_sockets": run.peak_open,
                         "failed": sum(1 for p in run.people if p.error)},
        "messages": {"planned": o.participants * o.messages, "sent": len(replies), "acked": v.sent,
                     "replied": len(done), "retried_sends": sum(max(0, r.attempts - 1) for r in replies)},
        "latency_ms": {
            "connect": _ms([p.connect_s for p in run.people]),
            "ack": _ms([r.ack_s for r in replies]),
            "ttfd": _ms([r.ttfd_s for r in done]),
            "reply": _ms([r.reply_s for r in done]),
            "queue_wait": _ms(ranks.queue_wait(samples)),
            "ttfd_overhead_over_model": _ms(overhead_ttfd),
            "reply_overhead_over_model": _ms(overhead_reply),
        },
        "frames_per_reply": summary([r.frames for r in done]),
        "deltas_per_reply": summary([r.deltas for r in done]),
        "reply_chars": summary([len(r.final_text or "") for r in done]),
        "errors": dict(Counter(run.errors).most_common()),
        "verification": {k: getattr(v, k) for k in (
            "checked", "sent", "stored_once", "lost", "duplicated", "replies_checked", "replies_complete",
            "replies_mismatch", "replies_missing", "replies_stored", "replies_unstored", "replies_duplicated",
            "unanswered", "stored_not_delivered", "unverified")} | {"failures": v.failures[:50]},
        "cost": cost.estimate(run, model_ttft) if priced else None,
        "by_rank": ranks.analyse(samples, slots),
        "stack_overhead": overhead,
        "samples": samples,
    }
    if extra:
        result.update(extra)
    return result


def ok(result: dict[str, Any]) -> bool:
    v = result["verification"]
    return (v["lost"] == 0 and v["duplicated"] == 0 and v["replies_mismatch"] == 0 and v["unverified"] == 0
            and result["participants"]["failed"] == 0)


def charts(result: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in result["samples"] if s["reply_s"] is not None]
    floor = (result.get("model_floor") or {}).get("ttft_s")
    files: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    series = [("ack", "ack_s"), ("time to first delta", "ttfd_s"), ("full reply", "reply_s")]
    data = [[s[k] * MS for s in samples if s[k] is not None] for _, k in series]
    top = max((max(d) for d in data if d), default=1.0)
    bins = [top * i / 60 for i in range(61)]
    for (label, _), d in zip(series, data):
        if d:
            ax.hist(d, bins=bins, alpha=0.55, label=f"{label} (n={len(d)})")
    if floor is not None:
        ax.axvline(floor * MS, color="k", linestyle="--", linewidth=1, label=f"model TTFT {floor * MS:.0f} ms")
    ax.set_xlabel("ms after send")
    ax.set_ylabel("replies")
    ax.set_title(f"{result['scenario']}: latency histogram")
    ax.legend()
    fig.tight_layout()
    files["histogram"] = "latency_histogram.png"
    fig.savefig(out / files["histogram"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, key, marker in (("ack", "ack_s", "."), ("time to first delta", "ttfd_s", "."), ("full reply", "reply_s", ".")):
        points = [(s["sent_at"], s[key] * MS) for s in samples if s[key] is not None]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=4, marker=marker, alpha=0.6, label=label)
    if floor is not None:
        ax.axhline(floor * MS, color="k", linestyle="--", linewidth=1, label="model TTFT")
    ax.set_xlabel("s since start (send time)")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title(f"{result['scenario']}: latency over time")
    ax.legend(markerscale=4)
    fig.tight_layout()
    files["over_time"] = "latency_over_time.png"
    fig.savefig(out / files["over_time"])
    plt.close(fig)
    if result.get("by_rank"):
        files["by_rank"] = "ttfd_by_rank.png"
        ranks.chart(result, out / files["by_rank"])
    return files


def _row(name: str, s: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.0f}" if isinstance(x, float) else str(x)

    return f"| {name} | {s['count']} | {f(s['p50'])} | {f(s['p95'])} | {f(s['p99'])} | {f(s['max'])} |"


def markdown(result: dict[str, Any], files: dict[str, str]) -> str:
    lat = result["latency_ms"]
    v = result["verification"]
    c = result["cost"]
    o = result["options"]
    floor = result.get("model_floor") or {}
    m = result["machine"]
    lines = [
        f"# Load test: {result['scenario']}",
        "",
        f"`{result['command']}`",
        "",
        f"{o['participants']} participants x {o['messages']} messages, think {o['think_s']} s, ramp {o['ramp_s']} s, "
        f"against {o['url']} (bot {o['bot']}, model {o['model']}).",
        f"Machine: {m.get('cores')} cores, Python {m.get('python')}, websockets {m.get('websockets')}, "
        f"load average at the start {' '.join(result.get('loadavg_at_start') or ['?'])}, "
        f"at the end {' '.join(m.get('loadavg_at_end', []))}.",
        "",
        f"**Verification: {'PASS' if ok(result) else 'FAIL'}** - {result['participants']['failed']} participants "
        f"failed; {v['sent']} messages acknowledged, "
        f"{v['stored_once']} stored exactly once, **{v['lost']} lost, {v['duplicated']} duplicated**; "
        f"{v['replies_complete']} of {v['replies_checked']} replies complete (final text = history = merged deltas), "
        f"{v['replies_mismatch']} mismatched; {v['replies_stored']} stored user messages have their reply stored "
        f"exactly once ({v['replies_unstored']} none, {v['replies_duplicated']} extra replies); "
        f"{v['unanswered']} sends without a reply "
        f"({v['stored_not_delivered']} of them stored but not delivered); {v['unverified']} chats unverifiable.",
        "",
        f"Participants connected {result['participants']['connected']}, peak open sockets "
        f"{result['participants']['peak_open_sockets']}; traffic {result['duration_s']['traffic']} s, "
        f"verification {result['duration_s']['verification']} s.",
        "",
        "| latency (ms) | n | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
        _row("connect", lat["connect"]),
        _row("ack (send -> ack)", lat["ack"]),
        _row("time to first delta", lat["ttfd"]),
        _row("full reply", lat["reply"]),
        _row("queue wait (queued -> first delta)", lat["queue_wait"]),
        _row("TTFD minus model TTFT", lat["ttfd_overhead_over_model"]),
        _row("reply minus model time", lat["reply_overhead_over_model"]),
        "",
    ]
    if floor:
        lines += [f"Model floor (measured with one streamed request per sample, before the load): TTFT "
                  f"{(floor.get('ttft_s') or 0) * MS:.0f} ms, {floor.get('tokens_per_second') or 0:.1f} tokens/s.", ""]
    fpr = result["frames_per_reply"]
    lines += [f"Frames per reply: mean {fpr['mean'] or 0:.1f}, p50 {fpr['p50']}, max {fpr['max']}.",
              "", "Errors by code: " + (", ".join(f"`{k}` {n}" for k, n in result["errors"].items()) or "none") + ".", ""]
    if result.get("local_stack"):
        ls = result["local_stack"]
        if ls.get("cpu_ms_per_reply") is not None:
            lines += [f"**CPU per reply: {ls['cpu_ms_per_reply']} ms** (user + system CPU of the stack's processes "
                      f"during the traffic, the model and moto excluded, over {result['messages']['replied']} "
                      f"replies); by process role, s: {ls['cpu_s_by_role']}.", ""]
        if machine := ls.get("machine_cpu"):
            lines += [f"The machine's cores during the traffic: {machine['busy_percent']} % busy, "
                      f"{machine['idle_percent']} % idle, {machine['steal_percent']} % taken by the VM's host "
                      f"(steal); the load generator itself used {ls['load_generator_cpu_s']} s.", ""]
        if speed := ls.get("machine_speed"):
            lines += [f"The machine's speed (load_tests/speed.py): its fixed workload took {speed['median_ms']} ms "
                      f"during the traffic ({speed['samples']} samples) against {speed['fastest_ms']} ms at its "
                      f"fastest, a slowdown of {speed['slowdown']}: **CPU per reply at the machine's best speed "
                      f"{ls.get('cpu_ms_per_reply_at_best_speed')} ms**.", ""]
        lines += [f"Local stack: {json.dumps({k: ls[k] for k in ls if k != 'urls'})}", ""]
    lines += stack_overhead.markdown(result) + ranks.markdown(result) + _emulation_lines(result.get("emulation"))
    if result.get("idle_memory"):
        im = result["idle_memory"]
        lines += [f"Idle sockets: {im['sockets']} sockets add {im['rss_delta_kib']} KiB of RSS to the stack process: "
                  f"**{im['kib_per_socket']:.1f} KiB per idle connection**.", ""]
    per = c["per_participant_usd"]
    ops = c["operations"]
    lines += [
        f"## Estimated AWS cost ({c['prices']['region']}, on-demand, prices of {c['prices']['date']})",
        "",
        "| item | operations | USD (whole run) |",
        "|---|---|---|",
        f"| API Gateway messages | {ops['apigw_messages_metered']} ({ops['apigw_messages_inbound']} in, "
        f"{ops['apigw_messages_outbound']} out) | {c['usd']['API Gateway messages']:.6f} |",
        f"| API Gateway connection minutes | {ops['apigw_connection_minutes']} | "
        f"{c['usd']['API Gateway connection minutes']:.6f} |",
        f"| Lambda requests | {sum(ops['lambda_requests'].values())} {ops['lambda_requests']} | "
        f"{c['usd']['Lambda requests']:.6f} |",
        f"| Lambda compute | {sum(ops['lambda_gb_seconds'].values()):.2f} GB-s {ops['lambda_gb_seconds']} | "
        f"{c['usd']['Lambda compute (GB-s)']:.6f} |",
        f"| DynamoDB writes | {ops['dynamodb_wru']} WRU | {c['usd']['DynamoDB writes (WRU)']:.6f} |",
        f"| DynamoDB reads | {ops['dynamodb_rru']} RRU | {c['usd']['DynamoDB reads (RRU)']:.6f} |",
        f"| **AWS total** | | **{c['usd_aws_total']:.6f}** |",
        f"| LLM ({c['prices']['llm_model']}) | {ops['llm_prompt_tokens']} input + {ops['llm_completion_tokens']} "
        f"output tokens | {c['usd_llm_total'] if c['usd_llm_total'] is not None else '-'} |",
        "",
        f"Per participant: AWS ${per['aws']:.6f}, LLM ${per['llm'] or 0:.6f}, total ${per['total']:.6f} "
        f"(x 1000 participants: ${per['total'] * 1000:.2f}).",
        "",
        "## Charts",
        "",
    ]
    lines += [f"![{name}]({path})" for name, path in files.items()]
    if v["failures"]:
        lines += ["", "## Verification failures (first 50)", ""] + [f"- {f}" for f in v["failures"]]
    return "\n".join(lines) + "\n"


def _emulation_lines(e: dict[str, Any] | None) -> list[str]:
    if not e:
        return []
    lines = ["## The local emulations during the run", ""]
    for name, q in e["queues"].items():
        w = q["wait_ms"]
        lines.append(f"- Reply queue `{name}` (MaximumConcurrency {q['concurrency']}, duplicate deliveries "
                     f"{q['duplicates']}): {q['sent']} jobs, {q['delivered']} deliveries ({q['duplicated']} "
                     f"jobs delivered twice, {q['redelivered']} redelivered after a failure), at most "
                     f"{q['max_waiting']} waiting, {q['dead_letters']} dead letters; wait from send to first "
                     f"delivery p50 {w['p50']} ms, p95 {w['p95']} ms, max {w['max']} ms.")
    if strict := e.get("strict_dynamodb"):
        c = strict["counters"]
        throttles = c["throttled_requests"] + c["throttled_transactions"] + c["unprocessed_keys"] + c["unprocessed_items"]
        lines.append(f"- Strict DynamoDB emulation (conflicts {'on' if strict['conflicts'] else 'OFF'}, a transaction "
                     f"holds its items {strict['hold_ms']:g} ms, throttle rate {strict['throttle_rate']}): "
                     f"**{c['transaction_conflicts']} transactions cancelled (TransactionConflict), "
                     f"{c['write_conflicts']} writes refused (TransactionConflictException)**, {c['read_conflicts']} "
                     f"transactional reads cancelled, {c['batch_conflicts']} batch writes left unprocessed; "
                     f"{throttles} throttles injected; {c['replays']} transactions replayed by ClientRequestToken.")
    return lines + [""]


def write(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = charts(result, out)
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "report.md").write_text(markdown(result, files))
    return {"json": out / "result.json", "report": out / "report.md", **{k: out / f for k, f in files.items()}}
