"""What a run would cost on AWS: the operations it implies, priced by ws_handlers/ops/prices.py.

The counts come from the run itself (frames each way and their sizes, socket minutes,
replies, tokens, measured reply durations). What each action costs in DynamoDB is not
written down here: `store_profile` runs one participant of the same shape (bot, messages,
sizes) through the template's functions against the DynamoDB adapter on moto and counts the
request units of every call it makes (`dynamo_units`: DynamoDB's on-demand rules), so a
change in the handlers or the adapter changes the cost model by itself.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from ws_handlers.config import Settings
from ws_handlers.ops.prices import (
    APIGW_MESSAGE_BYTES,
    DATE,
    NOT_COUNTED,
    PRICES,
    REGION,
    llm_prices,
    llm_usd,
)
from ws_handlers.turn import REBIND_INTERVAL, RENEWALS_PER_LEASE

from .store_profile import Shape, Units, profile

#: Estimated Lambda durations (ms) where the local stack cannot stand in for AWS: a handful of
#: DynamoDB calls at ~5-8 ms each plus one post_to_connection at ~10-20 ms. The reply function's
#: duration is measured (it waits for the model; that wait dominates its cost).
LAMBDA_MS = {"ConnectFunction": 30, "DisconnectFunction": 15, "start": 60, "send": 70, "history": 40}
REPLY_SETUP_SECONDS = 0.05  #: the reply function's reads before it calls the model (4 DynamoDB calls)
#: The profile's actions the estimate's assumptions describe, call by call.
DESCRIBED = ("connect", "disconnect", "start", "send 1", "reply 1", "refused send",
             "probe: frame (new window)", "probe: frame (same window)", "probe: renewal (reply 1)",
             "probe: rebind (reply 1)")


#: SQS requests per reply job: SendMessage, then the mapping's ReceiveMessage and DeleteMessage.
SQS_REQUESTS_PER_JOB = 3


def shape_of(run: Any) -> Shape:
    """The representative participant of `run`: its bot, the most messages anyone stored, and
    the mean sizes of the messages and replies (the profile's units at the mean sizes)."""
    stored = [[r for r in p.replies if r.user_seq is not None] for p in run.people]
    sent = [r.text_chars for s in stored for r in s]
    replies = [len(r.final_text) for s in stored for r in s if r.final_text]
    return Shape(json.dumps(run.bot.to_dict()), max(1, max(map(len, stored), default=0)),
                 max(1, round(statistics.fmean(sent))) if sent else 1,
                 max(1, round(statistics.fmean(replies))) if replies else 1)


@dataclass
class Tally:
    memory_mb: dict[str, int]  #: MemorySize of each function (template.yaml)
    dynamodb: Units = Units()
    sqs_requests: int = 0
    lambda_requests: dict[str, int] = field(default_factory=dict)
    lambda_gb_s: dict[str, float] = field(default_factory=dict)

    def invoke(self, function: str, ms: float, count: int = 1) -> None:
        self.lambda_requests[function] = self.lambda_requests.get(function, 0) + count
        gb_s = count * math.ceil(ms) / 1000 * self.memory_mb[function] / 1024
        self.lambda_gb_s[function] = self.lambda_gb_s.get(function, 0.0) + gb_s

    def store(self, units: Units, count: float = 1) -> None:
        self.dynamodb += units * count


def estimate(run: Any, model_ttft: float | None = None) -> dict[str, Any]:
    """The cost of the traffic in `run` (a runner.Run after execute), verification excluded.

    The reply function is billed from its start, not from the send: time queued for a slot
    (in the reply queue) is free. With the model's TTFT known, its duration is the model's
    TTFT plus first delta to final message; without it, ack to final message (an upper bound).
    """
    shape = shape_of(run)
    store = profile(shape)
    t = Tally(store.memory_mb)
    inbound = outbound = outbound_metered = 0
    connection_minutes = 0.0
    prompt_tokens = completion_tokens = 0
    model = run.bot.model
    renew_every = store.reply_lease_seconds / RENEWALS_PER_LEASE  #: turn._LeaseKeeper's period
    for p in run.people:
        if p.connected_at is None:
            continue
        # the socket: connect, disconnect, minutes
        t.store(store.units("connect") + store.units("disconnect"))
        t.invoke("ConnectFunction", LAMBDA_MS["ConnectFunction"])
        t.invoke("DisconnectFunction", LAMBDA_MS["DisconnectFunction"])
        connection_minutes += max(0.0, (p.closed_at or run.traffic_s) - p.connected_at) / 60
        # frames in: each one an API Gateway message and a MessageFunction invocation with a frame count
        inbound += p.frames_out
        windows = len({int(x // store.rate_limit_window) for x in p.frame_times})
        t.store(store.probe("probe: frame (new window)"), windows)
        t.store(store.probe("probe: frame (same window)"), len(p.frame_times) - windows)
        # frames out: each one a post_to_connection, metered per 32 KB
        outbound += p.frames_in
        outbound_metered += sum(max(1, math.ceil(b / APIGW_MESSAGE_BYTES)) for b in p.bytes_in)
        # start (first time: the chat is opened)
        if p.chat_id is not None:
            t.invoke("MessageFunction", LAMBDA_MS["start"])
            t.store(store.units("start"))
        turn = 0  #: the participant's stored messages so far: the profile's turn of the same number
        for r in p.replies:
            t.invoke("MessageFunction", LAMBDA_MS["send"], r.attempts)
            stored = r.user_seq is not None
            t.store(store.units("refused send"), r.attempts - stored)  # retries and refusals: their reads
            if not stored:
                continue
            turn += 1
            t.store(store.units(f"send {turn}"))
            t.sqs_requests += SQS_REQUESTS_PER_JOB
            if r.reply_s is None:
                continue
            if model_ttft is not None and r.ttfd_s is not None:
                stream_s = model_ttft + REPLY_SETUP_SECONDS + max(0.0, r.reply_s - r.ttfd_s)
            else:
                stream_s = max(0.0, r.reply_s - (r.ack_s or 0.0))
            t.invoke("ReplyFunction", stream_s * 1000)
            t.store(store.units(f"reply {turn}"))
            t.store(store.probe(f"probe: rebind (reply {turn})"), math.floor(stream_s / REBIND_INTERVAL))
            t.store(store.probe(f"probe: renewal (reply {turn})"), math.floor(stream_s / renew_every))
            prompt_tokens += r.prompt_tokens
            completion_tokens += r.completion_tokens
    participants = max(1, sum(1 for p in run.people if p.connected_at is not None))
    apigw_messages = inbound + outbound_metered
    lines = {
        "API Gateway messages": apigw_messages * PRICES["apigw_message"],
        "API Gateway connection minutes": connection_minutes * PRICES["apigw_connection_minute"],
        "Lambda requests": sum(t.lambda_requests.values()) * PRICES["lambda_request"],
        "Lambda compute (GB-s)": sum(t.lambda_gb_s.values()) * PRICES["lambda_gb_second"],
        "SQS requests": t.sqs_requests * PRICES["sqs_request"],
        "DynamoDB writes (WRU)": t.dynamodb.wru * PRICES["dynamodb_wru"],
        "DynamoDB reads (RRU)": t.dynamodb.rru * PRICES["dynamodb_rru"],
    }
    aws_total = sum(lines.values())
    llm = llm_prices(model)
    llm_cost = llm_usd(model, prompt_tokens, completion_tokens)
    return {
        "prices": {"date": DATE, "region": REGION, "unit_prices_usd": PRICES, "llm_model": model,
                   "llm_usd_per_1m_tokens": llm, "not_counted": list(NOT_COUNTED)},
        "operations": {
            "apigw_messages_inbound": inbound,
            "apigw_messages_outbound": outbound,
            "apigw_messages_metered": apigw_messages,
            "apigw_connection_minutes": round(connection_minutes, 3),
            "lambda_requests": t.lambda_requests,
            "lambda_gb_seconds": {k: round(v, 4) for k, v in t.lambda_gb_s.items()},
            "sqs_requests": t.sqs_requests,
            "dynamodb_wru": t.dynamodb.wru,
            "dynamodb_rru": t.dynamodb.rru,
            "llm_prompt_tokens": prompt_tokens,
            "llm_completion_tokens": completion_tokens,
        },
        "usd": {k: round(v, 8) for k, v in lines.items()},
        "usd_aws_total": round(aws_total, 6),
        "usd_llm_total": None if llm_cost is None else round(llm_cost, 6),
        "per_participant_usd": {
            "aws": aws_total / participants,
            "llm": None if llm_cost is None else llm_cost / participants,
            "total": aws_total / participants + (llm_cost or 0.0) / participants,
        },
        "assumptions": {"lambda_ms_estimated": LAMBDA_MS, "memory_mb": store.memory_mb,
                        "dynamodb_profile": {"messages": shape.messages, "user_chars": shape.user_chars,
                                             "reply_chars": shape.reply_chars},
                        "dynamodb_ops": {action: store.describe(action) for action in DESCRIBED}},
    }


# -- projections: what a study would cost, without running it -------------------------------------

@dataclass(frozen=True)
class Study:
    """What one participant of a typical chat study does; the defaults are documented guesses.

    Replies of about 120 tokens (480 characters) at 60 tokens/s after 0.6 s, as gpt-4o-mini
    streams; 30 s of reading and typing between messages; the prompt resends the whole chat
    so far (system prompt, opening, every message), as turn.py builds it.
    """

    messages: int = 10  #: participant messages, each answered
    user_chars: int = 120
    reply_chars: int = 480
    chars_per_token: float = 4.0  #: English text with OpenAI's tokenizers
    system_prompt_tokens: int = 60
    opening_chars: int = 60
    think_s: float = 30.0
    ttft_s: float = 0.6
    tokens_per_second: float = 60.0
    flush_s: float = 0.12  #: STREAM_FLUSH_MS: a delta at most every 120 ms after the first
    heartbeat_s: float = 240.0  #: client_js heartbeatMs: a ping (and its pong) every 4 minutes
    frame_bytes: int = 300  #: every frame is far below API Gateway's 32 KB metering unit


def _participant(study: Study) -> Any:
    """One synthetic participant, shaped like runner.Participant for estimate()."""
    from types import SimpleNamespace

    tokens = lambda chars: max(1, round(chars / study.chars_per_token))
    completion = tokens(study.reply_chars)
    stream_s = completion / study.tokens_per_second
    deltas = 1 + math.ceil(stream_s / study.flush_s)
    history = study.system_prompt_tokens + tokens(study.opening_chars)
    replies, clock = [], 0.0
    for index in range(study.messages):
        clock += study.think_s
        history += tokens(study.user_chars)
        replies.append(SimpleNamespace(
            attempts=1, user_seq=2 * index + 2, text_chars=study.user_chars, ack_s=0.05,
            ttfd_s=study.ttft_s, reply_s=study.ttft_s + stream_s, final_text="x" * study.reply_chars,
            prompt_tokens=history, completion_tokens=completion,
        ))
        history += completion
        clock += study.ttft_s + stream_s
    pings = int(clock // study.heartbeat_s)
    frames_in = 1 + study.messages * (2 + deltas + 1) + pings  # chat; ack, queued, deltas, message; pongs
    return SimpleNamespace(  # the frames counted: the start at 0 s, then each send
        connected_at=0.0, closed_at=clock, chat_id="c_projection", replies=replies,
        frames_out=1 + study.messages + pings, frame_times=[study.think_s * i for i in range(study.messages + 1)],
        frames_in=frames_in, bytes_in=[study.frame_bytes] * frames_in,
    )


def project(participants: int, study: Study = Study(), model: str = "gpt-4o-mini") -> dict[str, Any]:
    """estimate() for `participants` who each follow `study` (the same synthetic one, N times)."""
    from types import SimpleNamespace

    from ws_handlers.bot import Bot, Limits

    one = _participant(study)
    prompt = "x" * round(study.system_prompt_tokens * study.chars_per_token)  # stored with the chat
    limits = Limits(max_chars=max(Limits.max_chars, study.user_chars),  # limits the study stays within
                    max_user_messages=max(Limits.max_user_messages, study.messages), max_tokens_per_chat=10**9)
    bot = Bot("projection", model, prompt, opening_message="x" * study.opening_chars, limits=limits)
    run = SimpleNamespace(bot=bot, people=[one] * participants, traffic_s=one.closed_at)
    return estimate(run, model_ttft=study.ttft_s)


def table(counts: list[int], study: Study, model: str) -> str:
    """A Markdown table of projections, one column per number of participants."""
    results = [project(n, study, model) for n in counts]
    groups = {
        "API Gateway (messages, connection minutes)": ("API Gateway messages", "API Gateway connection minutes"),
        "Lambda (requests, GB-seconds) and SQS": ("Lambda requests", "Lambda compute (GB-s)", "SQS requests"),
        "DynamoDB (reads, writes)": ("DynamoDB writes (WRU)", "DynamoDB reads (RRU)"),
    }
    header = "| | " + " | ".join(f"{n:,} participants" for n in counts) + " |"
    lines = [header, "|---|" + "---:|" * len(counts)]
    for label, keys in groups.items():
        lines.append(f"| {label} | " + " | ".join(f"${sum(r['usd'][k] for k in keys):,.2f}" for r in results) + " |")
    lines.append("| **AWS total** | " + " | ".join(f"**${r['usd_aws_total']:,.2f}**" for r in results) + " |")
    lines.append(f"| LLM ({model}) | " + " | ".join(
        "not priced" if r["usd_llm_total"] is None else f"${r['usd_llm_total']:,.2f}" for r in results) + " |")
    lines.append("| **Total** | " + " | ".join(
        f"**${r['usd_aws_total'] + (r['usd_llm_total'] or 0):,.2f}**" for r in results) + " |")
    lines.append("| per participant | " + " | ".join(
        f"${r['per_participant_usd']['total']:.4f}" for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    defaults = Study()
    parser = argparse.ArgumentParser(prog="python -m load_tests.cost", description="What a study would cost on AWS "
                                     "and at the model, by the cost model of the load tests (prices: "
                                     f"ws_handlers/ops/prices.py, {DATE}, {REGION}).")
    parser.add_argument("--participants", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--messages", type=int, default=defaults.messages, help="participant messages each")
    parser.add_argument("--user-chars", type=int, default=defaults.user_chars)
    parser.add_argument("--reply-chars", type=int, default=defaults.reply_chars)
    parser.add_argument("--model", default="gpt-4o-mini", help="priced from prices.LLM_PRICES")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.participants) or min(args.messages, args.user_chars, args.reply_chars) < 1:
        parser.error("participants, messages and sizes must be at least 1")
    cap = Settings.from_env({}).max_message_chars  # the store profile sends such messages to the service
    if args.user_chars > cap:
        parser.error(f"--user-chars: the service refuses messages over {cap} characters (MAX_MESSAGE_CHARS)")
    study = Study(messages=args.messages, user_chars=args.user_chars, reply_chars=args.reply_chars)
    print(table(args.participants, study, args.model))
    print(f"\n{study.messages} messages of {study.user_chars} characters each, replies of {study.reply_chars} "
          f"characters ({study.tokens_per_second:g} tokens/s after {study.ttft_s:g} s), {study.think_s:g} s between "
          f"messages; {REGION} on-demand list prices of {DATE}; free tiers not counted.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
