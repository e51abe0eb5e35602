"""What a run would cost on AWS: the operations it implies, priced by load_tests/prices.py.

The counts come from the run itself (frames each way and their sizes, socket minutes,
replies, tokens, measured reply durations); what each action does in DynamoDB is read off
ws_handlers/ (chat.py, turn.py, dynamo_store.py, connect.py, message.py) and written down
in `DYNAMO_OPS` below, so a change there should change this table.

Unit rules (DynamoDB on-demand): a write is 1 WRU per started KB, a strongly consistent
read 1 RRU per started 4 KB (a missing item still costs 1), a transaction item costs
double, a batch costs what its items cost, and every write to an item carrying the
`by_experiment` index key (only a chat's META item: gsi1pk) costs one more write on the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ws_handlers.config import Settings
from ws_handlers.turn import RENEWALS_PER_LEASE

from .prices import (
    APIGW_MESSAGE_BYTES,
    DATE,
    NOT_COUNTED,
    PRICES,
    REGION,
    llm_prices,
    llm_usd,
)

#: What each action costs in DynamoDB, as (reads, writes) in items; sizes are applied below.
#: Read off the code (file:function).
DYNAMO_OPS = {
    "$connect": "admission.admit -> get_controls: BatchGetItem of 3 control items (3 RRU); "
                "connect.handler -> put_connection: PutItem (1 WRU)",
    "$disconnect": "disconnect.handler -> delete_connection: DeleteItem (1 WRU)",
    "frame": "message.handler -> count_frame: UpdateItem on the connection (1 WRU; a frame that opens a new "
             "rate window costs 2: the ADD fails its condition, then SET)",
    "start (first)": "chat.start: get_chat (1 RRU), open_chat: get_chat (1 RRU) + transaction of 3 "
                     "(META put, PART update, opening message put: 6 WRU) + META on the index (1 WRU); "
                     "bind_connection UpdateItem on META (1 WRU + 1 index); messages Query (1 RRU per 4 KB)",
    "send": "chat.send: get_chat (1 RRU), find_client_message GetItem (1 RRU), get_controls (3 RRU), "
            "append_user_message: transaction of 3 (META update, message put, CMID put: 2 WRU per KB each) "
            "+ META on the index (1 WRU); SendMessage to the reply queue",
    "reply": "the queue: ReceiveMessage and DeleteMessage by the event source mapping; turn._run: claim_turn "
             "UpdateItem on META (1 WRU + 1 index), get_chat (1 RRU), get_controls (3 RRU), messages Query "
             "(the chat so far: 1 RRU per 4 KB); while streaming, _follow_binding reads META once a second "
             "(1 RRU each) and once at the end; a lease renewal every 5 s (1 WRU + 1 index); count_tokens "
             "UpdateItem on the experiment's CONTROL item (1 WRU); finish_reply: transaction of 2 (META "
             "update, reply put) + META on the index",
    "history": "chat.history: get_chat (1 RRU), bind_connection (1 WRU + 1 index), messages Query",
}

#: Estimated Lambda durations (ms) where the local stack cannot stand in for AWS: a handful of
#: DynamoDB calls at ~5-8 ms each plus one post_to_connection at ~10-20 ms. The reply function's
#: duration is measured (it waits for the model; that wait dominates its cost).
LAMBDA_MS = {"ConnectFunction": 30, "DisconnectFunction": 15, "start": 60, "send": 70, "history": 40}
#: MemorySize from template.yaml (Globals 512; DisconnectFunction 256).
MEMORY_MB = {"ConnectFunction": 512, "DisconnectFunction": 256, "MessageFunction": 512, "ReplyFunction": 512}
META_BYTES = 900  #: a chat's META item: ids, counters, lease, and the bot as JSON (prompt, limits)
MESSAGE_OVERHEAD_BYTES = 320  #: a message item's attributes besides its text (ids, seq, tokens, names)
#: turn._LeaseKeeper renews a running reply's lease every REPLY_LEASE_SECONDS / 3 (its default)
LEASE_RENEW_SECONDS = Settings.from_env({}).reply_lease_seconds / RENEWALS_PER_LEASE
REBIND_SECONDS = 1.0  #: turn.REBIND_INTERVAL
RATE_WINDOW_SECONDS = 10.0  #: RATE_LIMIT_WINDOW_SECONDS
REPLY_SETUP_SECONDS = 0.05  #: the reply function's reads before it calls the model (4 DynamoDB calls)


def wru(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def rru(size: int) -> int:
    return max(1, math.ceil(size / 4096))


def message_bytes(chars: int) -> int:
    return chars + MESSAGE_OVERHEAD_BYTES  # the corpus is ASCII; utf-8 would be 1-4 bytes a char


#: SQS requests per reply job: SendMessage, then the mapping's ReceiveMessage and DeleteMessage.
SQS_REQUESTS_PER_JOB = 3


@dataclass
class Tally:
    rru: float = 0
    wru: float = 0
    sqs_requests: int = 0
    lambda_requests: dict[str, int] = field(default_factory=dict)
    lambda_gb_s: dict[str, float] = field(default_factory=dict)

    def invoke(self, function: str, ms: float, count: int = 1) -> None:
        self.lambda_requests[function] = self.lambda_requests.get(function, 0) + count
        gb_s = count * math.ceil(ms) / 1000 * MEMORY_MB[function] / 1024
        self.lambda_gb_s[function] = self.lambda_gb_s.get(function, 0.0) + gb_s


def estimate(run: Any, model_ttft: float | None = None) -> dict[str, Any]:
    """The cost of the traffic in `run` (a runner.Run after execute), verification excluded.

    The reply function is billed from its start, not from the send: time queued for a slot
    (in the reply queue) is free. With the model's TTFT known, its duration is the model's
    TTFT plus first delta to final message; without it, ack to final message (an upper bound).
    """
    t = Tally()
    inbound = outbound = outbound_metered = 0
    connection_minutes = 0.0
    prompt_tokens = completion_tokens = 0
    model = run.bot.model
    opening = len(run.bot.opening_message or "")
    for p in run.people:
        if p.connected_at is None:
            continue
        # the socket: connect, disconnect, minutes
        t.rru += 3
        t.wru += 1 + 1
        t.invoke("ConnectFunction", LAMBDA_MS["ConnectFunction"])
        t.invoke("DisconnectFunction", LAMBDA_MS["DisconnectFunction"])
        connection_minutes += max(0.0, (p.closed_at or run.traffic_s) - p.connected_at) / 60
        # frames in: each one an API Gateway message and a MessageFunction invocation with a frame count
        inbound += p.frames_out
        windows = {int(x // RATE_WINDOW_SECONDS) for x in p.frame_times}
        t.wru += len(p.frame_times) + len(windows)
        # frames out: each one a post_to_connection, metered per 32 KB
        outbound += p.frames_in
        outbound_metered += sum(max(1, math.ceil(b / APIGW_MESSAGE_BYTES)) for b in p.bytes_in)
        # start (first time: the chat is opened)
        if p.chat_id is not None:
            t.invoke("MessageFunction", LAMBDA_MS["start"])
            t.rru += 1 + 1 + rru(message_bytes(opening))
            t.wru += 2 * (wru(META_BYTES) + 1 + wru(message_bytes(opening))) + 1 + (1 + 1)
        history_bytes = message_bytes(opening)
        for r in p.replies:
            for _ in range(r.attempts):
                t.invoke("MessageFunction", LAMBDA_MS["send"])
                t.rru += 1 + 1 + 3
            if r.user_seq is None:
                continue
            t.wru += 2 * (wru(META_BYTES) + wru(message_bytes(r.text_chars)) + 1) + 1
            t.sqs_requests += SQS_REQUESTS_PER_JOB
            history_bytes += message_bytes(r.text_chars)
            if r.reply_s is None:
                continue
            if model_ttft is not None and r.ttfd_s is not None:
                stream_s = model_ttft + REPLY_SETUP_SECONDS + max(0.0, r.reply_s - r.ttfd_s)
            else:
                stream_s = max(0.0, r.reply_s - (r.ack_s or 0.0))
            reply_chars = len(r.final_text or "")
            t.invoke("ReplyFunction", stream_s * 1000)
            t.rru += 1 + rru(history_bytes) + 3 + math.floor(stream_s / REBIND_SECONDS) + 1
            renewals = 1 + math.floor(stream_s / LEASE_RENEW_SECONDS)
            t.wru += renewals * (1 + 1) + 1  # the claim and renewals (META and its index), count_tokens
            t.wru += 2 * (wru(META_BYTES) + wru(message_bytes(reply_chars))) + 1
            history_bytes += message_bytes(reply_chars)
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
        "DynamoDB writes (WRU)": t.wru * PRICES["dynamodb_wru"],
        "DynamoDB reads (RRU)": t.rru * PRICES["dynamodb_rru"],
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
            "dynamodb_wru": t.wru,
            "dynamodb_rru": t.rru,
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
        "assumptions": {"lambda_ms_estimated": LAMBDA_MS, "memory_mb": MEMORY_MB, "meta_item_bytes": META_BYTES,
                        "dynamodb_ops": DYNAMO_OPS},
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
    return SimpleNamespace(
        connected_at=0.0, closed_at=clock, chat_id="c_projection", replies=replies,
        frames_out=1 + study.messages + pings, frame_times=[study.think_s * (i + 1) for i in range(study.messages)],
        frames_in=frames_in, bytes_in=[study.frame_bytes] * frames_in,
    )


def project(participants: int, study: Study = Study(), model: str = "gpt-4o-mini") -> dict[str, Any]:
    """estimate() for `participants` who each follow `study` (the same synthetic one, N times)."""
    from types import SimpleNamespace

    from ws_handlers.bot import Bot

    one = _participant(study)
    bot = Bot("projection", model, "x", opening_message="x" * study.opening_chars)
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
                                     f"load_tests/prices.py, {DATE}, {REGION}).")
    parser.add_argument("--participants", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--messages", type=int, default=defaults.messages, help="participant messages each")
    parser.add_argument("--user-chars", type=int, default=defaults.user_chars)
    parser.add_argument("--reply-chars", type=int, default=defaults.reply_chars)
    parser.add_argument("--model", default="gpt-4o-mini", help="priced from prices.LLM_PRICES")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.participants) or min(args.messages, args.user_chars, args.reply_chars) < 1:
        parser.error("participants, messages and sizes must be at least 1")
    study = Study(messages=args.messages, user_chars=args.user_chars, reply_chars=args.reply_chars)
    print(table(args.participants, study, args.model))
    print(f"\n{study.messages} messages of {study.user_chars} characters each, replies of {study.reply_chars} "
          f"characters ({study.tokens_per_second:g} tokens/s after {study.ttft_s:g} s), {study.think_s:g} s between "
          f"messages; {REGION} on-demand list prices of {DATE}; free tiers not counted.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
