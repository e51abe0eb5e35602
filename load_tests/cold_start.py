"""python -m load_tests.cold_start: how long each function's code takes to load (Lambda's INIT).

It measures, on this machine, the import of each handler module from the real `sam build`
output (`.aws-sam/build/`), laid out as Lambda lays it out: the function's folder as
/var/task, the dependency layer's python/ folder as /opt/python, and boto3 (which the
python3.11 runtime provides) after them. Each sample is a fresh interpreter (`-I -S -B`: no
site-packages, no PYTHONPATH, nothing written), so nothing is cached in memory between
samples; the files are in the OS cache after the first, as on a warm Lambda host.

Two variants: with the .pyc files the build compiles (what is deployed), and without any
(a copy of the code without __pycache__, compiled in every sample) to show what the build's
compilation saves. A third column times the first call of `runtime.services()`, the boto3
clients a function builds on its first invocation (part of that invocation's Duration, not
of Init Duration; no network is used).

This machine's host slows the same work by up to 2.4 times from one second to the next
(load_tests/speed.py): the speed probe runs beside the samples, and each import with the .pyc is
also given divided by the machine's slowdown while it ran (the "at the machine's best speed"
column), which is what compares from one run to another.

This is the import part of INIT on this machine, not Lambda's Init Duration: that also
holds the runtime's own start, and Lambda's CPU share depends on MemorySize (512 MB is
about a third of a vCPU). After deploying, read the real numbers from the REPORT lines
with the CloudWatch Logs Insights query this command prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .speed import SpeedProbe, summarise

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".aws-sam" / "build"
LAYER = "DependenciesLayer"
#: What the python3.11 Lambda runtime has in /var/runtime, after the layer on sys.path.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "dateutil", "jmespath", "urllib3", "six")

INSIGHTS_QUERY = """filter @type = "REPORT" and ispresent(@initDuration)
| stats count() as cold_starts, avg(@initDuration) as avg_init_ms, pct(@initDuration, 50) as p50_init_ms,
        pct(@initDuration, 99) as p99_init_ms, max(@initDuration) as max_init_ms by @log"""

_CHILD = """
import importlib, json, sys, time
task, opt, runtime, handler, wiring = sys.argv[1:6]
sys.path[:0] = [task, opt, runtime]
module, _, attribute = handler.rpartition(".")
start = time.perf_counter()
loaded = importlib.import_module(module)
imported = time.perf_counter()
assert callable(getattr(loaded, attribute))
wired = None
if wiring == "1":
    from ws_handlers import runtime as services
    services.services()
    wired = (time.perf_counter() - imported) * 1000
print(json.dumps({"import_ms": (imported - start) * 1000, "wiring_ms": wired, "modules": len(sys.modules)}))
"""


class ColdStartError(RuntimeError):
    """What stops the measurement, in one line."""


@dataclass(frozen=True)
class Summary:
    median_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        return cls(statistics.median(samples), max(samples))


@dataclass(frozen=True)
class Result:
    function: str
    handler: str
    with_pyc: Summary
    without_pyc: Summary
    wiring: Summary | None
    modules: int
    #: each import with the .pyc: (ms, start, end), monotonic seconds; for `at_best_speed`
    pyc_samples: tuple[tuple[float, float, float], ...] = ()
    #: `with_pyc` divided by the machine's slowdown while each sample ran (None: no speed samples)
    with_pyc_at_best_speed: Summary | None = None


def at_best_speed(result: Result, speed_samples: list[tuple[float, float]]) -> Result:
    """`result` with each import divided by the machine's slowdown during it (speed.summarise)."""
    scaled = []
    for ms, start, end in result.pyc_samples:
        speed = summarise(speed_samples, start, end)
        if speed is None:
            return result
        scaled.append(ms / speed["slowdown"])
    return replace(result, with_pyc_at_best_speed=Summary.of(scaled)) if scaled else result


def runtime_dir(into: Path) -> Path:
    """A folder standing for /var/runtime: links to this interpreter's boto3 and friends."""
    into.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        link = into / source.name
        if not link.exists():
            link.symlink_to(source)
    return into


def without_pycache(source: Path, into: Path) -> Path:
    """A copy of a built folder without its compiled files."""
    shutil.copytree(source, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=True)
    return into


def sample(python: str, task: Path, opt: Path, runtime: Path, handler: str, env: dict[str, str],
           wiring: bool) -> dict:
    """One fresh interpreter importing the handler: its timings."""
    done = subprocess.run(
        [python, "-I", "-S", "-B", "-c", _CHILD, str(task), str(opt), str(runtime), handler, "1" if wiring else "0"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ColdStartError(f"importing {handler} from {task} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lambda_environment(function_env: dict[str, str], name: str, task: Path) -> dict[str, str]:
    """The function's variables and what Lambda sets, with dummy credentials (nothing is called)."""
    return function_env | {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(task),
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "cold-start",
        "AWS_SECRET_ACCESS_KEY": "cold-start",
        "AWS_SESSION_TOKEN": "cold-start",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def measure(build: Path, functions: dict[str, tuple[str, dict[str, str]]], samples: int, python: str,
            wiring: bool = True, tick: Callable[[], None] = lambda: None) -> list[Result]:
    """Per function (name -> (handler, environment)): `samples` fresh imports with the build's
    .pyc and as many without, after one unmeasured import each (fills the OS file cache)."""
    layer = build / LAYER / "python"
    missing = [p for p in (layer, *(build / n for n in functions)) if not p.is_dir()]
    if missing:
        raise ColdStartError(f"no sam build output at {missing[0]}: run `make check-template` (sam build) first")
    results = []
    with tempfile.TemporaryDirectory(prefix="cold-start-") as scratch:
        runtime = runtime_dir(Path(scratch) / "runtime")
        bare_layer = without_pycache(layer, Path(scratch) / "opt" / "python")
        for name, (handler, function_env) in functions.items():
            task = build / name
            bare_task = without_pycache(task, Path(scratch) / "task" / name)
            env = lambda_environment(function_env, name, task)
            runs: dict[str, list[dict]] = {"pyc": [], "bare": []}
            for variant, (t, o) in (("pyc", (task, layer)), ("bare", (bare_task, bare_layer))):
                sample(python, t, o, runtime, handler, env, wiring=False)  # the OS file cache, not measured
                for _ in range(samples):
                    start = time.monotonic()
                    runs[variant].append(sample(python, t, o, runtime, handler, env, wiring and variant == "pyc"))
                    runs[variant][-1]["window"] = (start, time.monotonic())
                    tick()
            wired = [r["wiring_ms"] for r in runs["pyc"] if r["wiring_ms"] is not None]
            results.append(Result(
                function=name, handler=handler,
                with_pyc=Summary.of([r["import_ms"] for r in runs["pyc"]]),
                without_pyc=Summary.of([r["import_ms"] for r in runs["bare"]]),
                wiring=Summary.of(wired) if wired else None,
                modules=runs["pyc"][0]["modules"],
                pyc_samples=tuple((r["import_ms"], *r["window"]) for r in runs["pyc"]),
            ))
    return results


def markdown(results: list[Result], samples: int, python_version: str) -> str:
    def cell(s: Summary | None) -> str:
        return "n/a" if s is None else f"{s.median_ms:.0f} / {s.max_ms:.0f}"

    lines = [
        (f"Import of each handler module (INIT's import part) on this machine, {samples} fresh "
         f"python {python_version} processes each; median / max in ms."),
        "",
        "| function | handler | with the build's .pyc | the same at the machine's best speed | without .pyc "
        "| first-call clients | modules |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.function} | `{r.handler}` | {cell(r.with_pyc)} | {cell(r.with_pyc_at_best_speed)} "
              f"| {cell(r.without_pyc)} | {cell(r.wiring)} | {r.modules} |" for r in results]
    return "\n".join(lines)


def _functions(names: list[str] | None) -> dict[str, tuple[str, dict[str, str]]]:
    from local_gateway.template import load

    template = load()
    chosen = names or sorted(template.functions)
    unknown = set(chosen) - set(template.functions)
    if unknown:
        raise ColdStartError(f"no function {sorted(unknown)} in template.yaml (it has {sorted(template.functions)})")
    return {n: (template.functions[n].handler, template.functions[n].environment) for n in chosen}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests.cold_start", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--build-dir", type=Path, default=BUILD, help="sam build's output")
    p.add_argument("--samples", type=int, default=10, help="fresh processes per function and variant")
    p.add_argument("--python", default=sys.executable, help="a python3.11 interpreter (Lambda's runtime)")
    p.add_argument("--function", action="append", dest="functions", metavar="LOGICAL_ID",
                   help="only this function (repeatable; default: all of template.yaml's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    args = parse(argv)
    console = Console(stderr=True)
    try:
        version = subprocess.run([args.python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                 capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        if not version.startswith("3.11."):
            raise ColdStartError(f"{args.python} is Python {version or '?'}; the build's .pyc files are for 3.11: "
                                 "pass --python python3.11")
        functions = _functions(args.functions)
        probe = SpeedProbe()
        try:
            with Progress(TextColumn("cold starts"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
                task = progress.add_task("samples", total=2 * args.samples * len(functions))
                results = measure(args.build_dir, functions, args.samples, args.python,
                                  tick=lambda: progress.advance(task))
        finally:
            speed = probe.stop()
        results = [at_best_speed(r, speed) for r in results]
    except (ColdStartError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown(results, args.samples, version))
    print("\nThis is the import part of INIT measured on this machine, not Lambda's Init Duration (which adds the "
          "runtime's own start, on the CPU share MemorySize buys). After deploying, the real Init Duration of cold "
          "starts is in the REPORT lines; in CloudWatch Logs Insights, select the functions' log groups "
          "(/aws/lambda/<stack>-...) and run:\n")
    print(INSIGHTS_QUERY)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
