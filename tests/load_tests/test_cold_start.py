"""load_tests.cold_start: fresh interpreters import each handler from sam's build layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from load_tests import cold_start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A build laid out as sam lays it out: a function folder and the layer's python/."""
    package = tmp_path / "build" / "FakeFunction" / "fake_handlers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "entry.py").write_text("import dep\n\ndef handler(event, context):\n    return dep.VALUE\n")
    layer = tmp_path / "build" / "DependenciesLayer" / "python"
    layer.mkdir(parents=True)
    (layer / "dep.py").write_text("VALUE = 1\n")
    return tmp_path / "build"


def test_measures_each_function_in_fresh_processes(build):
    ticks = []
    (result,) = cold_start.measure(build, {"FakeFunction": ("fake_handlers.entry.handler", {})}, samples=2,
                                   python=sys.executable, wiring=False, tick=lambda: ticks.append(1))
    assert len(ticks) == 4  # two samples with .pyc, two without
    assert result.function == "FakeFunction" and result.wiring is None
    assert 0 < result.with_pyc.median_ms <= result.with_pyc.max_ms
    assert 0 < result.without_pyc.median_ms <= result.without_pyc.max_ms
    assert not list(build.rglob("__pycache__")), "the samples must not write .pyc files into the build"
    table = cold_start.markdown([result], 2, "3.11.7")
    assert "| FakeFunction | `fake_handlers.entry.handler` |" in table and "INIT" in table


def test_each_import_is_scaled_by_the_machines_slowdown_while_it_ran(build):
    (result,) = cold_start.measure(build, {"FakeFunction": ("fake_handlers.entry.handler", {})}, samples=2,
                                   python=sys.executable, wiring=False)
    assert len(result.pyc_samples) == 2 and all(start <= end for _, start, end in result.pyc_samples)
    (first, start1, end1), (second, start2, end2) = result.pyc_samples
    # the probe's fixed workload: 10 ms at best, 20 ms during the first import, 10 ms during the second
    speed = [(start1 - 5, 10.0), ((start1 + end1) / 2, 20.0), ((start2 + end2) / 2, 10.0)]
    scaled = cold_start.at_best_speed(result, speed).with_pyc_at_best_speed
    assert scaled is not None and scaled.max_ms == pytest.approx(max(first / 2, second))
    assert cold_start.at_best_speed(result, []).with_pyc_at_best_speed is None  # no probe, no claim
    assert "| n/a |" in cold_start.markdown([result], 2, "3.11.7")


def test_an_import_that_fails_is_named(build):
    (build / "FakeFunction" / "fake_handlers" / "entry.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(cold_start.ColdStartError, match="fake_handlers.entry.handler.*not_installed_anywhere"):
        cold_start.measure(build, {"FakeFunction": ("fake_handlers.entry.handler", {})}, 1, sys.executable, False)


def test_without_a_build_it_says_what_to_run(tmp_path, capsys):
    assert cold_start.main(["--build-dir", str(tmp_path), "--samples", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no sam build output") and "make check-template" in err


@pytest.mark.skipif(not (cold_start.BUILD / "DisconnectFunction").is_dir(), reason="no sam build: make check-template")
def test_the_real_build(capsys):
    assert cold_start.main(["--samples", "1", "--function", "DisconnectFunction"]) == 0
    out = capsys.readouterr().out
    assert "| DisconnectFunction | `ws_handlers.disconnect.handler` |" in out
    assert "at the machine's best speed" in out and "| n/a |" not in out  # the speed probe ran beside it
    assert "import part of INIT measured on this machine" in out and "@initDuration" in out
