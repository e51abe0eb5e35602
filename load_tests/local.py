"""The local stack for a load test: in a child process (the default) or in this one.

In a child process the stack and the load generator do not share a GIL, so the
generator's own work does not show up as service latency, and the stack's memory (RSS
from /proc/<pid>/status) is its own. `--in-process` runs it on a thread here instead
(what tests/load_tests does, for speed).

    python -m load_tests.local '{"ttft": 0.3, ...}'   # the child; prints its URLs as one JSON line

The child also serves `GET /stats` on loopback (its URL is "stats" in that line): the stack's
own counters (`Stack.stats()`: the reply queue's waits, the strict DynamoDB emulation's
conflicts and throttles), which only its process can read.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Quiet functions: a terminal, not CloudWatch (as `python -m local_gateway serve` does).
QUIET = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING",
         "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1",
         "PYTHONWARNINGS": "ignore::UserWarning"}


def _dev_processes() -> int:
    """`make dev`'s choice of reply function workers on this machine (one per core, up to 4)."""
    from local_gateway.stack import default_function_processes

    return default_function_processes()


@dataclass
class LocalConfig:
    ttft: float = 0.3  #: the offline model's time to first token, seconds
    tokens_per_second: float = 40.0
    store: str = "sqlite"
    model_process: bool = True  #: the offline model in its own process (not on the stack's GIL and loop)
    moto_process: bool = True  #: with store "dynamodb": moto's server (and the strict emulation) likewise
    function_processes: int = field(default_factory=_dev_processes)  #: reply function workers
    llm_concurrency: int | None = None  #: the template's LlmConcurrency (reply threads); None: its default
    environment: dict[str, str] = field(default_factory=dict)  #: function environment overrides
    duplicate_deliveries: float = 0.0  #: share of reply jobs the queue delivers twice (SQS's at-least-once)
    duplicate_lag: float = 0.0  #: seconds up to which the second copy follows the first
    data_dir: str | None = None  #: None: a fresh temporary directory
    #: the offline model keeps the times of this many latest requests (OFFLINE_MODEL_TIMINGS, its
    #: `GET /_timings`) for stack_overhead.py; 0: none, as `make dev`
    model_timings: int = 0


def stack_config(config: LocalConfig, secret: str, data_dir: Path) -> Any:
    from local_gateway.stack import StackConfig

    parameters = {}
    if config.llm_concurrency is not None:
        parameters["LlmConcurrency"] = str(config.llm_concurrency)
    return StackConfig(
        port=0, management_port=0, model_port=0, entry_port=0, demo_port=None, data_dir=data_dir, store=config.store,
        secret=secret, model_ttft=config.ttft, model_tokens_per_second=config.tokens_per_second,
        parameters=parameters, environment=dict(config.environment), model_process=config.model_process,
        moto_process=config.moto_process,
        function_processes=config.function_processes, duplicate_deliveries=config.duplicate_deliveries,
        duplicate_lag=config.duplicate_lag,
    )


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> dict[str, int]:
    """The whole machine's CPU time so far, all cores, in clock ticks (Linux /proc/stat):
    busy (user, nice, system, irq, softirq), idle (with iowait) and steal (taken by the host of a VM)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def machine_share(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """How the machine's CPU time went between two readings: busy, idle and steal, in percent."""
    spent = {k: after[k] - before[k] for k in before}
    total = max(1, sum(spent.values()))
    return {f"{k}_percent": round(100 * v / total, 1) for k, v in spent.items()}


def processes(pid: int) -> list[int]:
    """The process and its live descendants (the stack's reply workers and model), Linux."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            found += processes(int(child))
    return found


def cpu_by_process(pid: int) -> dict[int, float]:
    """CPU seconds of the process and each live descendant (ones that exit meanwhile are left out)."""
    used = {}
    for each in processes(pid):
        try:
            used[each] = cpu_seconds(each)
        except OSError:
            continue
    return used


#: A process of the local stack by what it runs (its command line), for CPU by role: the model
#: and moto stand in for services that are not the stack's own CPU on AWS.
ROLES = (("model", "local_gateway.offline_model"), ("moto", "moto"), ("workers", "multiprocessing"))


def role(pid: int, root: int) -> str:
    """"gateway" (the stack's own process), "workers" (reply function processes and their
    helpers, e.g. multiprocessing's resource tracker), "model", "moto" or "other"."""
    if pid == root:
        return "gateway"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    return next((name for name, marker in ROLES if marker in command), "other")


def cpu_by_role(before: dict[int, float], after: dict[int, float], root: int) -> dict[str, float]:
    """CPU seconds used between two `cpu_by_process` readings, summed by `role`."""
    used: dict[str, float] = collections.Counter()
    for pid, seconds in after.items():
        used[role(pid, root)] += seconds - before.get(pid, 0.0)
    return dict(used)


@dataclass
class LocalStack:
    urls: dict[str, str]
    secret: str
    pid: int
    config: LocalConfig
    stats: Callable[[], dict[str, Any]]  #: the stack's counters now (Stack.stats())
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2000))  #: the child's output

    def log_counts(self) -> dict[str, int]:
        """Warnings and errors the functions logged (powertools JSON lines on stdout), by message."""
        counts: collections.Counter[str] = collections.Counter()
        for line in self.log:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                counts[f"{entry['level']}: {entry.get('message')}"] += 1
        return dict(counts)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds so far of the stack's process and of each of its worker processes."""
        return cpu_by_process(self.pid)


@contextlib.contextmanager
def local_stack(config: LocalConfig, in_process: bool = False, profile: str | None = None) -> Iterator[LocalStack]:
    """Run the stack for the length of the block. profile: a cProfile output path (child only)."""
    secret = secrets.token_urlsafe(48)
    with tempfile.TemporaryDirectory(prefix="load-stack-") as tmp:
        data_dir = Path(config.data_dir or tmp)
        quiet = QUIET | ({"OFFLINE_MODEL_TIMINGS": str(config.model_timings)} if config.model_timings else {})
        if in_process:
            from local_gateway.stack import running

            added = [key for key in quiet if key not in os.environ]
            os.environ.update({key: quiet[key] for key in added})
            try:
                with running(stack_config(config, secret, data_dir)) as stack:
                    yield LocalStack(dict(stack.urls), secret, os.getpid(), config, stack.stats)
            finally:  # leave the caller's environment (a pytest process) as it was
                for key in added:
                    os.environ.pop(key, None)
            return
        spec = json.dumps(asdict(config) | {"data_dir": str(data_dir), "profile": profile})
        env = os.environ | quiet | {"LOAD_TEST_SECRET": secret, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-m", "load_tests.local", spec], cwd=ROOT, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            line = _readline(child, 60)
            urls = json.loads(line)
            local = LocalStack(urls, secret, child.pid, config, functools.partial(_get_json, urls["stats"]))
            # keep reading: a full pipe would block the child's next log line (and its thread)
            threading.Thread(target=_drain, args=(child, local.log), daemon=True).start()
            yield local
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def _drain(child: subprocess.Popen, log: collections.deque) -> None:
    for line in child.stdout:  # type: ignore[union-attr]
        log.append(line)


def _readline(child: subprocess.Popen, timeout: float) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not got or not got[0].strip():
        child.kill()
        raise RuntimeError(f"the local stack did not start within {timeout:.0f} s (exit {child.poll()})")
    return got[0]


def _child(spec: dict[str, Any]) -> None:
    import asyncio
    import gc

    from aiohttp import web

    from local_gateway.stack import Stack

    profile = spec.pop("profile", None)
    config = LocalConfig(**spec)
    stack = Stack(stack_config(config, os.environ["LOAD_TEST_SECRET"], Path(config.data_dir or ".")))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        urls = await stack.start()
        app = web.Application()
        app.router.add_get("/stats", lambda _request: web.json_response(stack.stats()))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        urls = urls | {"stats": f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/stats"}  # type: ignore[union-attr]
        gc.freeze()  # as `python -m local_gateway serve` does: start-up's objects are never garbage
        print(json.dumps(urls), flush=True)
        await stop.wait()
        await runner.cleanup()
        await stack.stop(grace=5)

    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()  # the event loop's thread only; py-spy (`--py-spy`) sees every thread
        try:
            asyncio.run(main())
        finally:
            profiler.disable()
            profiler.dump_stats(profile)
    else:
        asyncio.run(main())


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
