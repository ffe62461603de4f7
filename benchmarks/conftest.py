"""Benchmark fixtures, and the tables printed at the end of the run so the CI log shows them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness import RESULTS_DIR, Calibrations, SessionMeasurements

_STARTED = pytest.StashKey[float]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STARTED] = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print every table this session wrote, even without ``-s``."""
    started = config.stash.get(_STARTED, time.time())
    written = sorted(p for p in RESULTS_DIR.glob("*.md") if p.stat().st_mtime >= started)
    for path in written:
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        terminalreporter.write_sep("=", str(shown))
        terminalreporter.write_line(path.read_text().rstrip())


@pytest.fixture(scope="session", autouse=True)
def _benchmark_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never read or write the user's database from the benchmarks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMPROBE_DB", str(tmp_path_factory.mktemp("db") / "default.sqlite"))
        yield


@pytest.fixture(scope="session")
def measurements() -> SessionMeasurements:
    """Trace steps measured once for the whole session."""
    return SessionMeasurements()


@pytest.fixture(scope="session")
def calibrations(measurements: SessionMeasurements) -> Calibrations:
    return Calibrations(measurements)


@pytest.fixture(scope="session")
def results_dir() -> Path:
    return RESULTS_DIR
