"""python -m load_tests: N virtual participants against the chat service, then a verification pass.

Against a running stack (local or deployed):

    python -m load_tests --url ws://127.0.0.1:8787/local --secret-file .local/ticket-secret \\
        --participants 200 --messages 3 --think 2 --ramp 10 --out load_tests/results/p200

Or with the local stack started for the run (in a child process; the offline model's pacing
from the flags):

    python -m load_tests --local --ttft-ms 300 --tokens-per-second 40 --participants 1000 --out ...

A classroom told to begin (--burst): everyone connects and opens a chat, then all send their
first message at the same moment and each sends the next as soon as its reply is complete;
the report shows time to first delta by arrival rank (the reply queue's staircase). On the
DynamoDB adapter with DynamoDB's conflicts emulated and every reply job delivered twice:

    python -m load_tests --local --store dynamodb --duplicate-deliveries 1.0 --burst \
        --participants 200 --messages 3 --llm-concurrency 50 --out ...

Exit status: 0 when no message was lost or duplicated and every reply arrived complete, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ws_handlers.bot import Bot

from . import report
from .local import LocalConfig, LocalStack, cpu_by_role, local_stack, machine_jiffies, machine_share
from .model_floor import measure
from .runner import Options, Run
from .speed import SpeedProbe
from .speed import summarise as summarise_speed
from .stack_overhead import fetch as fetch_timings


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    target = p.add_argument_group("target")
    target.add_argument("--url", help="WebSocket URL without the token, e.g. ws://127.0.0.1:8787/local or "
                        "wss://{api}.execute-api.{region}.amazonaws.com/prod")
    target.add_argument("--secret-file", type=Path, help="the ticket secret shared with the service "
                        "(.local/ticket-secret for `make dev`); or set TICKET_SECRET")
    target.add_argument("--origin", default="http://localhost:8000", help="Origin header ('' to send none)")
    target.add_argument("--model-url", help="OpenAI-compatible base URL to measure the model's own TTFT and "
                        "tokens/s against (with --local: the offline model, measured automatically)")
    target.add_argument("--model-ttft-ms", type=float, help="the model's TTFT if it cannot be measured")
    target.add_argument("--model-tokens-per-second", type=float, help="the model's rate if it cannot be measured")
    local = p.add_argument_group("local stack (--local)")
    local.add_argument("--local", action="store_true", help="start the local stack for this run (child process)")
    local.add_argument("--in-process", action="store_true", help="with --local: run the stack on a thread of "
                       "this process (shares the GIL with the generator: latencies include the generator's work)")
    local.add_argument("--ttft-ms", type=float, default=300.0, help="offline model: time to first token")
    local.add_argument("--tokens-per-second", type=float, default=40.0, help="offline model: token rate (0: unpaced)")
    local.add_argument("--store", choices=("sqlite", "dynamodb"), default="sqlite",
                       help="dynamodb: the production adapter on moto's server under the strict emulation "
                       "(transaction conflicts on unless LOCAL_DYNAMODB_CONFLICTS=off; docs/local.md)")
    local.add_argument("--llm-concurrency", type=int, help="template parameter LlmConcurrency: replies written at "
                       "once, the rest wait in the reply queue (template default 50); with --url, the deployed "
                       "stack's, for the report's slot-blocks")
    local.add_argument("--duplicate-deliveries", type=float, default=0.0, metavar="SHARE",
                       help="share of reply jobs the local queue delivers twice, as SQS may (0 to 1; the "
                       "DynamoDB burst scenarios use 1.0)")
    local.add_argument("--duplicate-lag", type=float, default=0.0, metavar="SECONDS",
                       help="a duplicate comes up to this long after its twin (uniform), as another SQS host "
                       "may hand it out while the first copy's reply runs, so its claim can meet the reply's "
                       "commit (0: right after it)")
    local.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="function environment override, e.g. RATE_LIMIT_FRAMES=40 (repeatable)")
    local.add_argument("--idle-sockets", type=int, default=0, help="first measure the stack's RSS with this "
                       "many idle sockets open vs none (KiB per idle connection)")
    local.add_argument("--warmup", type=int, default=2, help="participants that send one message each before "
                       "the measured run (the stack's cold start: the first reply imports openai), not counted")
    local.add_argument("--model-in-stack", action="store_true",
                       help="run the offline model inside the stack's process (default: a process of its own)")
    local.add_argument("--moto-in-stack", action="store_true", help="with --store dynamodb: run moto's server "
                       "inside the stack's process (default: a process of its own, beside the stack's)")
    local.add_argument("--function-processes", type=_processes, default="dev",
                       help="worker processes for the reply function (0: threads of the stack's process; "
                       "'dev', the default: what `make dev` chooses on this machine, one per core up to 4)")
    local.add_argument("--profile", type=Path, help="write a cProfile of the stack's event loop thread here")
    load = p.add_argument_group("load")
    load.add_argument("--participants", type=int, default=20)
    load.add_argument("--messages", type=int, default=2, help="messages per participant (each waits for its reply)")
    load.add_argument("--think", type=float, help="mean think time before each send, s (0.5x-1.5x); "
                      "default 2, or 0 with --burst")
    load.add_argument("--burst", action="store_true", help="everyone connects and starts a chat first (over "
                      "--ramp), then all send their first message at once (a barrier); later messages follow "
                      "each reply after --think. The report ranks the first messages by ack arrival")
    load.add_argument("--ramp", type=float, default=0.0, help="seconds over which participants connect (0: at once)")
    load.add_argument("--deadline", type=float, default=600.0, help="global time limit for the traffic, s")
    load.add_argument("--reply-timeout", type=float, default=120.0, help="per wait (ack, delta, message), s")
    load.add_argument("--connect-timeout", type=float, default=30.0)
    load.add_argument("--retries", type=int, default=6,
                      help="retries of a send after a retryable error (backoff from 0.5 s, doubling)")
    load.add_argument("--heartbeat", type=float, default=240.0, metavar="SECONDS",
                      help="a ping this often while connected, as the browser client's heartbeat (0: none)")
    load.add_argument("--max-tokens", type=int, help="the bot's max_tokens (default: the tutor's 300); the offline "
                      "model's replies are longer than 40 tokens, so 40 makes every reply exactly 40 tokens")
    load.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("load_tests/results/latest"), help="directory for "
                     "result.json, report.md and the PNG charts")
    out.add_argument("--scenario", help="name in the report (default: p{participants}-m{messages})")
    out.add_argument("--no-progress", action="store_true", help="no progress bar (CI logs)")
    args = p.parse_args(argv)
    if not args.local and not args.url:
        p.error("give --url (and --secret-file) or --local")
    if not 0.0 <= args.duplicate_deliveries <= 1.0:
        p.error("--duplicate-deliveries is a share, from 0 to 1")
    if args.think is None:
        args.think = 0.0 if args.burst else 2.0
    return args


def _processes(value: str) -> int:
    """--function-processes: a count, or "dev" for `make dev`'s own choice."""
    if value == "dev":
        from local_gateway.stack import default_function_processes

        return default_function_processes()
    return int(value)


def _bot(max_tokens: int | None) -> Bot | None:
    """The tutor with another max_tokens, or None (the runner's default bot)."""
    if max_tokens is None:
        return None
    from local_gateway.demo_bots import BOTS

    return dataclasses.replace(BOTS["tutor"], max_tokens=max_tokens)


#: Processes whose CPU is not the stack's own: on AWS the model and DynamoDB are other machines.
NOT_THE_STACK = ("model", "moto")


def cpu_report(before: dict[int, float], traffic_end: dict[int, float], end: dict[int, float], root: int,
               run: Run, machine: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The stack's CPU during the traffic, by process role, and per reply (the model's and moto's
    processes and the load generator excluded); the whole run's too (with the verification pass).
    `machine`: `machine_reading()` at the start and the end of the traffic, for where the rest of
    the machine's CPU went (the load generator's own, and how much stayed idle)."""
    during = cpu_by_role(before, traffic_end, root)
    stack = sum(seconds for name, seconds in during.items() if name not in NOT_THE_STACK)
    whole = cpu_by_role(before, end, root)
    elapsed = max(0.001, run.traffic_s)
    return {
        "cpu_s_by_role": {name: round(seconds, 2) for name, seconds in sorted(during.items())},
        "stack_cpu_s": round(stack, 2),  # gateway + reply workers (+ their helpers), during the traffic
        "stack_cpu_percent_of_one_core": round(100 * stack / elapsed, 1),
        "cpu_ms_per_reply": round(1000 * stack / run.replies_done, 1) if run.replies_done else None,
        "cpu_s_by_role_with_verification": {name: round(seconds, 2) for name, seconds in sorted(whole.items())},
    } | ({} if machine is None else {
        "load_generator_cpu_s": round(machine[1]["generator"] - machine[0]["generator"], 2),
        "machine_cpu": machine_share(machine[0]["jiffies"], machine[1]["jiffies"]),  # all cores, during the traffic
    })


def machine_reading() -> dict[str, Any]:
    """The machine's CPU ticks so far and this load generator's own CPU seconds (Linux)."""
    return {"jiffies": machine_jiffies(), "generator": time.process_time()}


def _secret(args: argparse.Namespace) -> str:
    if args.secret_file:
        return args.secret_file.read_text().strip()
    if os.environ.get("TICKET_SECRET"):
        return os.environ["TICKET_SECRET"]
    raise SystemExit("no secret: give --secret-file or set TICKET_SECRET")


async def _progress(run: Run, enabled: bool) -> None:
    """A rich progress bar of connections, replies and errors, refreshed 4 times a second."""
    if not enabled:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = run.o.participants
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), refresh_per_second=4, transient=False) as bar:
        connections = bar.add_task("connections", total=total, note="")
        replies = bar.add_task("replies", total=total * run.o.messages, note="")
        verified = bar.add_task("verified (history)", total=total, note="")
        while True:
            errors = sum(run.errors.values())
            top = ", ".join(f"{k} {n}" for k, n in run.errors.most_common(3))
            bar.update(connections, completed=run.connected, note=f"open {run.open_now}")
            bar.update(replies, completed=run.replies_done, note=f"errors {errors}" + (f" ({top})" if top else ""))
            bar.update(verified, completed=run.verified, note="")
            await asyncio.sleep(0.25)


async def idle_memory(stack: LocalStack, sockets: int, origin: str | None) -> dict[str, Any]:
    """RSS of the stack process with `sockets` idle connections open, against none."""
    from urllib.parse import quote

    from websockets.asyncio.client import connect

    from ws_handlers.tickets import Identity, mint_token

    await asyncio.sleep(1.0)
    before = stack.rss_kib()
    pending = []
    for n in range(sockets):  # bounded; at most 200 handshakes in flight
        token = mint_token(stack.secret, Identity(f"I{n:05d}", "idle", "idle"))
        pending.append(connect(f"{stack.urls['websocket']}?token={quote(token)}", origin=origin,
                               open_timeout=30, ping_interval=None, compression=None))
    conns = []
    try:
        for i in range(0, len(pending), 200):
            conns += await asyncio.gather(*pending[i : i + 200])
        await asyncio.sleep(2.0)
        after = stack.rss_kib()
    finally:
        for c in conns:
            await c.close()
    await asyncio.sleep(1.0)
    return {"sockets": sockets, "rss_before_kib": before, "rss_after_kib": after, "rss_delta_kib": after - before,
            "kib_per_socket": (after - before) / max(1, sockets)}


async def main_async(args: argparse.Namespace, command: str) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack_scope:
        floor: dict[str, Any] | None = None
        local_info: dict[str, Any] | None = None
        extra: dict[str, Any] = {"loadavg_at_start": report.loadavg()}  # the machine is shared: say how busy
        if args.local:
            config = LocalConfig(ttft=args.ttft_ms / 1000, tokens_per_second=args.tokens_per_second, store=args.store,
                                 llm_concurrency=args.llm_concurrency, model_process=not args.model_in_stack,
                                 moto_process=not args.moto_in_stack,
                                 function_processes=args.function_processes,
                                 duplicate_deliveries=args.duplicate_deliveries, duplicate_lag=args.duplicate_lag,
                                 environment=dict(e.split("=", 1) for e in args.env),
                                 # every request of the run with room for retries; the oldest (floor, warm-up) go first
                                 model_timings=max(1000, 4 * args.participants * args.messages))
            local = stack_scope.enter_context(local_stack(config, in_process=args.in_process,
                                                          profile=str(args.profile) if args.profile else None))
            url, secret, model_url = local.urls["websocket"], local.secret, local.urls["model"]
            local_info = {"ttft_ms": args.ttft_ms, "tokens_per_second": args.tokens_per_second, "store": args.store,
                          "llm_concurrency": args.llm_concurrency or "template default (50)",
                          "duplicate_deliveries": args.duplicate_deliveries, "duplicate_lag_s": args.duplicate_lag,
                          "env": config.environment, "pid": local.pid, "in_process": args.in_process,
                          "rss_start_kib": local.rss_kib()}
            if args.idle_sockets:
                extra["idle_memory"] = await idle_memory(local, args.idle_sockets, args.origin or None)
        else:
            url, secret, model_url, local = args.url, _secret(args), args.model_url, None
        if model_url:
            floor = await measure(model_url)
            floor["configured_ttft_s"] = args.ttft_ms / 1000 if args.local else None
        elif args.model_ttft_ms is not None:
            floor = {"ttft_s": args.model_ttft_ms / 1000, "tokens_per_second": args.model_tokens_per_second,
                     "source": "given"}
        options = Options(url=url, secret=secret, participants=args.participants, messages=args.messages,
                          think=args.think, ramp=args.ramp, deadline=args.deadline, reply_timeout=args.reply_timeout,
                          connect_timeout=args.connect_timeout, retries=args.retries, heartbeat=args.heartbeat, origin=args.origin or None,
                          seed=args.seed, burst=args.burst, bot=_bot(args.max_tokens))
        if args.local and args.warmup:
            warm = Run(Options(url=url, secret=secret, participants=args.warmup, messages=1, think=0.0, deadline=60,
                               origin=args.origin or None, experiment="warmup", hold=False, bot=options.bot))
            await warm.execute()
            extra["warmup"] = {"participants": args.warmup, "replies": warm.replies_done, "errors": dict(warm.errors)}
        run = Run(options)
        probe = SpeedProbe() if local is not None and not args.in_process else None  # the machine's speed (speed.py)
        stats0 = local.stats() if local is not None else None
        cpu0 = local.cpu_seconds() if local and not args.in_process else None
        machine0 = machine_reading() if cpu0 is not None else None
        progress = asyncio.create_task(_progress(run, not args.no_progress))
        traffic: dict[str, Any] = {}  # CPU at the end of the traffic, before the verification pass

        def traffic_ended() -> None:
            traffic.setdefault("cpu", local.cpu_seconds())  # type: ignore[union-attr]
            traffic.setdefault("machine", machine_reading())
            now = time.monotonic()
            traffic.setdefault("window", (now - run.traffic_s, now))

        if cpu0 is not None:
            run.on_traffic_end = traffic_ended
        try:
            await run.execute()
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            speed_samples = probe.stop() if probe is not None else []
        # the model's own times per request (the offline model with OFFLINE_MODEL_TIMINGS; None otherwise),
        # only from this machine: its monotonic clock is ours
        timings = await fetch_timings(model_url) if model_url and _on_this_machine(model_url) else None
        slots = args.llm_concurrency
        if local is not None:
            local_info = (local_info or {}) | {"rss_end_kib": local.rss_kib(), "log_counts": local.log_counts()}
            extra["emulation"] = emulation = report.emulation(stats0 or {}, local.stats())
            slots = next(iter(emulation["queues"].values()), {}).get("concurrency", slots)
            if cpu0 is not None:
                local_info |= cpu_report(cpu0, traffic.get("cpu") or local.cpu_seconds(), local.cpu_seconds(),
                                         local.pid, run, (machine0, traffic.get("machine") or machine_reading()))
                if "window" in traffic and (speed := summarise_speed(speed_samples, *traffic["window"])):
                    local_info["machine_speed"] = speed
                    if local_info.get("cpu_ms_per_reply") is not None:  # as if the machine ran at its best
                        local_info["cpu_ms_per_reply_at_best_speed"] = round(
                            local_info["cpu_ms_per_reply"] / speed["slowdown"], 1)
        scenario = args.scenario or f"p{args.participants}-m{args.messages}"
        return report.build(run, command=command, scenario=scenario, floor=floor, local=local_info, extra=extra,
                            slots=slots, timings=timings)


def _on_this_machine(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _stack_p99(result: dict[str, Any]) -> str:
    """The stack's own overhead (stack_overhead.py), for the summary line; "" without the model's timings."""
    split = result.get("stack_overhead") or {}
    if not split.get("available"):
        return ""
    ms = split["ms"]
    return (f"; the stack's own: p99 {ms['stack_to_first_delta']['p99']} ms to the first delta, "
            f"{ms['stack_to_full_reply']['p99']} ms to the full reply")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "python -m load_tests " + shlex.join(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    result = asyncio.run(main_async(args, command))
    paths = report.write(result, args.out)
    lat, v = result["latency_ms"], result["verification"]
    print(f"{result['scenario']}: {result['participants']['connected']} connected, {result['messages']['replied']} "
          f"replies in {time.monotonic() - t0:.0f} s; TTFD p50 {lat['ttfd']['p50']} p99 {lat['ttfd']['p99']} ms "
          f"(over the model's floor: p99 {lat['ttfd_overhead_over_model']['p99']} ms{_stack_p99(result)}); lost {v['lost']}, duplicated "
          f"{v['duplicated']}, mismatched {v['replies_mismatch']}; errors {result['errors'] or 'none'}; "
          f"AWS ${result['cost']['per_participant_usd']['aws']:.5f}/participant"
          + (f"; CPU per reply {cpu} ms" if (cpu := (result.get("local_stack") or {}).get("cpu_ms_per_reply")) else ""))
    print(f"report: {paths['report']}")
    return 0 if report.ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
