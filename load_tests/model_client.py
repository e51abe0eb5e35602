"""CPU per reply of the model client alone (docs/benchmarks.md, "Phase 3").

`threads` reply-like threads each stream `replies` replies, one after another, through the
service's own model adapter (`ws_handlers.adapters.openai_model.OpenAIChatModel`) from the
offline model in a process of its own, paced like a provider (TTFT 50 ms, `--tokens-per-second`,
40 tokens). Reports the median thread CPU time per reply (`time.thread_time()`, the request, the
stream read and the parse; each thread's first reply, which builds its client, left out), once
with the adapter's transport (urllib3, `adapters/http_transport.py`) and once with httpx's own
(httpcore and h11), interleaved, so both meet the same machine.

`--cold` also times the parse of one HTTP chunk of a streamed reply (h11 and json, no socket)
back to back and after a pause like a token's: what the same code costs once the CPU's caches
have gone cold, which is what a paced stream meets at every token.

`--wake-cost` also streams the same replies through the same adapter but reads them only once
they have arrived (the thread sleeps after the first token, then reads the rest in one go): the
same bytes, the same code, without a wake-up per token. The difference is what waking once per
token costs a reply thread that is not busy (docs/benchmarks.md, "Phase 4").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time

from local_gateway import model_process
from ws_handlers.adapters import http_transport, openai_model
from ws_handlers.adapters.openai_model import OpenAIChatModel
from ws_handlers.bot import Bot

BOT = Bot(name="bench", model="gpt-4o-mini", system_prompt="You are terse.", max_tokens=40)
ASK = [{"role": "user", "content": "Tell me about fractions."}]
TRANSPORTS = {"urllib3": http_transport.transport_for, "httpx": lambda context: None}


def measure(url: str, transport: str, threads: int, replies: int, after_arrival: float = 0.0) -> float:
    """Median thread CPU milliseconds per reply; `after_arrival` > 0: sleep that long after the
    first token, so the rest of the reply is read in one go (sleeping takes no thread CPU)."""
    adapters_choice = openai_model.transport_for
    openai_model.transport_for = TRANSPORTS[transport]  # read by each thread's new client
    try:
        model = OpenAIChatModel("offline", url, timeout=30, max_retries=0)
        samples: list[float] = []

        def run() -> None:
            for index in range(replies + 1):
                started = time.thread_time()
                for position, _ in enumerate(model.stream(BOT, ASK)):
                    if after_arrival and not position:
                        time.sleep(after_arrival)
                if index:
                    samples.append((time.thread_time() - started) * 1000)

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return statistics.median(samples)
    finally:
        openai_model.transport_for = adapters_choice


def cold_parse(pause: float, chunks: int = 100) -> float:
    """Microseconds of CPU to parse one SSE chunk from an HTTP/1.1 chunked body, `pause` s apart."""
    import h11

    event = b'data: {"object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,' \
            b'"delta":{"content":" word"},"finish_reason":null}]}\n\n'
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="POST", target="/", headers=[("host", "model"), ("content-length", "0")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    connection.next_event()
    spent = 0.0
    for _ in range(chunks):
        time.sleep(pause)
        started = time.thread_time()
        connection.receive_data(b"%x\r\n%s\r\n" % (len(event), event))
        while (received := connection.next_event()) is not h11.NEED_DATA:
            json.loads(received.data[6:])
        spent += time.thread_time() - started
    return spent / chunks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.model_client", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replies", type=int, default=40, help="replies per thread (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="each transport this many times, interleaved")
    parser.add_argument("--tokens-per-second", type=float, default=40.0)
    parser.add_argument("--cold", action="store_true", help="also time one chunk's parse, hot and after a pause")
    parser.add_argument("--wake-cost", action="store_true",
                        help="also read each reply (urllib3) in one go once it has arrived: no wake-up per token")
    args = parser.parse_args()
    child, url = asyncio.run(model_process.start("127.0.0.1", 0, 0.05, args.tokens_per_second))
    try:
        for _ in range(args.rounds):
            for transport in TRANSPORTS:
                cpu = measure(url, transport, args.threads, args.replies)
                print(f"{transport:8} {args.threads} threads x {args.replies} replies: {cpu:.2f} ms of CPU per reply")
            if args.wake_cost:  # the whole reply has arrived 40 tokens / rate after the first
                cpu = measure(url, "urllib3", args.threads, args.replies, after_arrival=60 / args.tokens_per_second)
                print(f"{'urllib3, read once arrived':8} {args.threads} threads x {args.replies} replies: "
                      f"{cpu:.2f} ms of CPU per reply")
    finally:
        model_process.stop(child)
    if args.cold:
        for pause in (0.0, 0.001, 0.025):
            print(f"one chunk's parse, {pause * 1000:g} ms after the last: {cold_parse(pause):.0f} us of CPU")


if __name__ == "__main__":
    main()
