"""How fast this machine runs Python at the moment: a fixed workload, timed in a process of its own.

Why: this project's machine is a virtual one on a shared host, and the same work does not take the
same CPU time from one minute to the next. This fixed pure-Python workload (a streamed chunk parsed
from JSON, a dict built and printed: the kind of work a reply does per token), timed with the
thread's CPU clock once a second with nothing else of ours running, took 10.6 to 16.3 ms over one
half-minute; ten times as much of it took 95 to 231 ms over another. The host's other tenants take
the caches, the memory bandwidth and the core's sibling thread, and none of it shows as "steal". A
run's CPU per reply moves with it, whatever the code does, so one run's figure cannot be compared
with another's.

So each local load run starts this probe beside the stack (`python -m load_tests.speed`, about 2 %
of one core) and reports the workload's median time during the traffic against the fastest time of
the whole run (its "slowdown", 1.0 when the machine ran at its best), and the CPU per reply scaled
to that best speed. The scaled figure is what compares across runs (docs/benchmarks.md, "Phase 4").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

_CHUNK = (b'{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":'
          b'[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}')


def reference_work(iterations: int = 2000) -> int:
    """The fixed workload (~10 ms of CPU on this project's machine at its best)."""
    total = 0
    for i in range(iterations):
        chunk = json.loads(_CHUNK)
        total += len(chunk["choices"][0]["delta"]["content"])
        total += len(str({"index": i, "pair": [i, i + 1]}))
    return total


def sample() -> float:
    """Thread CPU milliseconds of one reference workload."""
    started = time.thread_time()
    reference_work()
    return (time.thread_time() - started) * 1000


class SpeedProbe:
    """The probe in a child process, sampling every `every` seconds until stopped."""

    def __init__(self, every: float = 0.5) -> None:
        self._child = subprocess.Popen([sys.executable, "-m", "load_tests.speed", "--every", str(every)],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # ready once it has a first sample (or has died: an empty line), so every run has one
        self._first = self._child.stdout.readline() if self._child.stdout else ""

    def stop(self) -> list[tuple[float, float]]:
        """End the probe (our own child) and return its samples: (monotonic time, ms)."""
        self._child.terminate()
        out, _ = self._child.communicate(timeout=30)
        samples = []
        for line in (self._first + out).splitlines():
            at, _, ms = line.partition(" ")
            try:
                samples.append((float(at), float(ms)))
            except ValueError:  # a line cut by the termination
                continue
        return samples


def summarise(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, Any] | None:
    """The workload's median during [start, end] (monotonic), the fastest of all samples, and their
    ratio (the slowdown during the traffic). A window too short for a sample of its own (a run of a
    second on a busy machine) takes the last one before its end; None without any."""
    during = [ms for at, ms in samples if start <= at <= end] or [ms for at, ms in samples if at <= end][-1:]
    if not during:
        return None
    fastest = min(ms for _, ms in samples)
    median = statistics.median(during)
    return {"samples": len(during), "median_ms": round(median, 2), "fastest_ms": round(fastest, 2),
            "slowdown": round(median / fastest, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples (default %(default)s)")
    parser.add_argument("--samples", type=int, default=0, help="stop after this many (default: until terminated)")
    args = parser.parse_args()
    taken = 0
    while not args.samples or taken < args.samples:
        ms = sample()
        try:
            print(f"{time.monotonic():.3f} {ms:.3f}", flush=True)
        except BrokenPipeError:  # whoever started the probe is gone: so is the probe
            return
        taken += 1
        time.sleep(args.every)


if __name__ == "__main__":
    main()
