"""CPU per push of the local stack's direct pusher, in isolation (docs/benchmarks.md, issue 15).

`threads` reply-like threads each push `frames` small delta frames, `gap` seconds apart (a model's
next token), through `local_gateway.direct_push.DirectPusher` to an in-memory registry on an event
loop of its own. Reports the process's CPU time per push (the threads' own wake-ups included; run
with `--baseline` for those alone) and the loop thread's share. Run it from another checkout's
directory to measure that checkout's pusher: `cd ../main && python -m load_tests.push_handoff`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import threading
import time

from local_gateway.direct_push import DirectPusher
from local_gateway.management_api import RecordingRegistry

FRAME = {"type": "delta", "chat_id": "c_" + "0" * 32, "seq": 2, "index": 0, "offset": 0,
         "text": "some words of a reply " * 3}


def measure(threads: int, frames: int, gap: float, baseline: bool = False) -> dict[str, float]:
    """CPU microseconds per push: {"process_us", "loop_us"}."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    def loop_cpu() -> float:
        answer: concurrent.futures.Future[float] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: answer.set_result(time.thread_time()))
        return answer.result(60)

    registry = RecordingRegistry()
    for i in range(threads):
        registry.open(f"c{i}")
    pusher = DirectPusher(registry, loop)
    start = threading.Barrier(threads + 1)

    def push(i: int) -> None:
        start.wait(60)
        for _ in range(frames):
            if not baseline:
                pusher.send(f"c{i}", FRAME)
            time.sleep(gap)

    workers = [threading.Thread(target=push, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    loop0 = loop_cpu()
    start.wait(60)
    cpu0 = time.process_time()
    for w in workers:
        w.join()
    deadline = time.monotonic() + 60
    while not baseline and sum(len(registry.posts(f"c{i}")) for i in range(threads)) < threads * frames:
        assert time.monotonic() < deadline, "the frames were not all delivered"
        time.sleep(0.01)
    pushes = threads * frames
    result = {"process_us": (time.process_time() - cpu0) / pushes * 1e6, "loop_us": (loop_cpu() - loop0) / pushes * 1e6}
    loop.call_soon_threadsafe(loop.stop)
    runner.join(60)
    loop.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.push_handoff", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.002, help="seconds between a thread's pushes")
    parser.add_argument("--baseline", action="store_true", help="the threads' wake-ups alone, no push")
    args = parser.parse_args()
    r = measure(args.threads, args.frames, args.gap, args.baseline)
    print(f"{args.threads} threads x {args.frames} frames: {r['process_us']:.0f} us of CPU per push "
          f"(the loop thread {r['loop_us']:.0f} us)")


if __name__ == "__main__":
    main()
