"""`python -m local_gateway`: run the local stack, or mint credentials for it.

    python -m local_gateway serve            # the whole service on loopback (what `make dev` runs)
    python -m local_gateway mint --participant P1 [--bot tutor] [--chat-key main]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from ws_handlers.observability import SERVICE
from ws_handlers.tickets import Identity, mint_ticket, mint_token

from . import ports
from .demo_bots import BOTS
from .demo_study import demo_survey_url, ensure_demo_study
from .gateway import GatewayLimits
from .stack import ROOT, Stack, StackConfig, default_function_processes, dev_secret


def _secret(data_dir: Path) -> str:
    return os.environ.get("TICKET_SECRET") or dev_secret(data_dir)


def mint(args: argparse.Namespace) -> dict[str, str]:
    """What a page needs to chat: the WebSocket URL with its token, and the chat ticket."""
    secret = _secret(args.data_dir)
    identity = Identity(args.participant, args.experiment, args.session)
    token = mint_token(secret, identity, ttl=args.ttl)
    ticket = mint_ticket(secret, identity, args.chat_key, BOTS[args.bot])
    url = args.url.rstrip("/")
    return {"url": url, "token": token, "ticket": ticket, "ws_url": f"{url}?token={quote(token)}",
            "participant": args.participant, "chat_key": args.chat_key, "bot": args.bot}


def serve(args: argparse.Namespace) -> None:
    # a terminal, not CloudWatch: no metric blobs, warnings and errors only (unless asked)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    # The handlers' Powertools logger was made when they were imported, before this and before the
    # root handler of main(): it read no level (so INFO), and it keeps its events off only the root
    # handlers it found then (on Lambda, the runtime's). Apply the level (worker processes read the
    # variable), and print each event once, as Powertools' JSON line, not again through the root.
    handlers_log = logging.getLogger(SERVICE)
    handlers_log.setLevel(os.environ["POWERTOOLS_LOG_LEVEL"].upper())
    handlers_log.propagate = False
    config = StackConfig(
        host=args.host,
        port=args.port,
        management_port=args.management_port,
        model_port=args.model_port,
        demo_port=args.demo_port,
        entry_port=args.entry_port,
        data_dir=args.data_dir,
        store=args.store,
        limits=GatewayLimits(idle_timeout=args.idle_timeout),
        function_processes=args.function_processes,
        duplicate_deliveries=args.duplicate_deliveries,
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
    )
    if args.origins:
        config.parameters["AllowedOrigins"] = args.origins
    if args.llm_concurrency is not None:
        config.parameters["LlmConcurrency"] = str(args.llm_concurrency)
    if args.throttling is not None:
        config.parameters["ThrottlingRateLimit"], config.parameters["ThrottlingBurstLimit"] = map(str, args.throttling)
    offline = config.openai_api_key is None and config.openai_base_url is None
    busy = ports.first_busy(args.host, [
        (args.port, "the WebSocket API", "--port"),
        (args.management_port, "the Management API", "--management-port"),
        *([(args.model_port, "the offline model", "--model-port")] if offline else []),
        (args.demo_port, "the demo page", "--demo-port"),
        (args.entry_port, "the study entry", "--entry-port"),
    ])
    if busy:
        sys.exit(f"python -m local_gateway serve: {busy}")
    if failure := asyncio.run(_serve(Stack(config))):
        raise SystemExit(f"Stopped: {failure}")


async def _serve(stack: Stack) -> str | None:
    """Serve until Ctrl-C or SIGTERM (None), or until the stack must stop (why)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    urls = await stack.start()
    # What start-up built (modules, the template, the apps) lives as long as the process: out
    # of the cyclic collector's way, whose full passes otherwise stalled every socket at once
    # under load (docs/benchmarks.md).
    gc.freeze()
    model = "the offline model" if stack.model is not None else urls["model"]
    lines = [
        f"Local chat service ready (store: {stack.config.store}, data: {stack.config.data_dir}, model: {model})",
        f"  WebSocket       {urls['websocket']}?token=...",
        f"  Management API  {urls['management']}",
        *([f"  Study entry     POST {urls['entry']}/studies/STUDY/entry"] if "entry" in urls else []),
        "  Credentials:    .venv/bin/python -m local_gateway mint --participant P1",
    ]
    if "demo" in urls:
        identity = Identity("demo", "local", "local")
        query = urlencode({
            "url": urls["websocket"],
            "token": mint_token(stack.secret, identity),
            "ticket": mint_ticket(stack.secret, identity, "main", BOTS["tutor"]),
        })
        lines.append(f"  Chat in a browser, as participant 'demo':\n    {urls['demo']}?{query}")
        if "entry" in urls:
            study = ensure_demo_study(stack.store, urls["demo"])
            lines.append(f"  A survey with the chat (a Qualtrics stand-in, study {study.id!r}; each new browser is a new "
                         f"participant):\n    {demo_survey_url(urls['demo'], urls['entry'], study)}")
            lines.append("  The same in a LimeSurvey stand-in:\n    "
                         f"{demo_survey_url(urls['demo'], urls['entry'], study, 'demo-limesurvey.html')}")
    print("\n".join(lines) + "\nStop with Ctrl-C.", flush=True)
    waits = [asyncio.create_task(event.wait()) for event in (stopping, stack.failed)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    print("Stopping: finishing replies in flight...", flush=True)
    await stack.stop(grace=10.0 if stack.failure is None else 0.0)  # without a store nothing can finish
    if stack.failure is None:
        print("Stopped.", flush=True)
    return stack.failure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".local", help="store and dev secret (default .local/)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the whole service on loopback until Ctrl-C")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8787, help="WebSocket port (default 8787)")
    run.add_argument("--management-port", type=int, default=8788)
    run.add_argument("--model-port", type=int, default=8789, help="offline model port, when it runs")
    run.add_argument("--demo-port", type=int, default=8790, help="serves the demo chat page (client_js/)")
    run.add_argument("--entry-port", type=int, default=8791,
                     help="the study entry, POST /studies/{study}/entry (template.yaml's HTTP API)")
    run.add_argument("--store", choices=("sqlite", "dynamodb"), default="sqlite",
                     help="sqlite: durable, the default; dynamodb: moto's DynamoDB server, in memory, "
                          "with DynamoDB's conflicts (LOCAL_DYNAMODB_* variables: docs/local.md)")
    run.add_argument("--idle-timeout", type=float, default=600.0, help="seconds (API Gateway: 600)")
    run.add_argument("--function-processes", type=int, default=default_function_processes(),
                     help="run the reply function in this many worker processes (0: threads of this process)")
    run.add_argument("--origins", help="comma-separated allowed origins (default: local oTree and demo pages)")
    run.add_argument("--llm-concurrency", type=int,
                     help="replies generated at once; more wait in the reply queue (default: the template's LlmConcurrency)")
    run.add_argument("--throttling", nargs=2, type=int, metavar=("RATE", "BURST"),
                     help="the WebSocket stage's per-route throttle (ThrottlingRateLimit, ThrottlingBurstLimit; "
                          "default: the template's)")
    run.add_argument("--duplicate-deliveries", type=float, default=0.0, metavar="SHARE",
                     help="share of reply jobs the queue delivers twice, as SQS may (0 to 1; default 0)")
    run.set_defaults(func=serve)

    minting = commands.add_parser("mint", help="print a WebSocket URL, token and ticket as JSON")
    minting.add_argument("--participant", required=True)
    minting.add_argument("--experiment", default="local")
    minting.add_argument("--session", default="local")
    minting.add_argument("--chat-key", default="main")
    minting.add_argument("--bot", choices=sorted(BOTS), default="tutor")
    minting.add_argument("--ttl", type=int, default=6 * 3600, help="token lifetime in seconds")
    minting.add_argument("--url", default="ws://127.0.0.1:8787/local")
    minting.set_defaults(func=lambda a: print(json.dumps(mint(a), indent=2)))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args.func(args)


if __name__ == "__main__":
    main()
