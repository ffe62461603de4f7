"""Interrupts: Ctrl-C or SIGTERM during calibrate keeps every measurement taken; a re-run resumes.

A real ``memprobe calibrate`` process runs a model that sleeps in its forward pass, so it is
still measuring when the database holds three measurements: that is when the signal is sent.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.crashy_models import FORWARD_SECONDS_VARIABLE
from tests.helpers import (
    SMALL_BUDGET,
    measurement_count,
    query,
    repeated_configurations,
    run_cli,
    start_cli,
    wait_for,
)

SLOW = "tests.crashy_models:slow_net"
INTERRUPTED = (
    "memprobe: error: interrupted: every measurement taken so far is saved; run the same command to resume"
)


def _interrupt_after_three_measurements(
    arguments: tuple[str, ...], db_path: Path, signum: int
) -> tuple[int, str, str]:
    process = start_cli(*arguments, env=dict(os.environ, **{FORWARD_SECONDS_VARIABLE: "0.25"}))
    try:
        wait_for(
            lambda: measurement_count(db_path) >= 3 or process.poll() is not None,
            timeout=240,
            what="three stored measurements",
        )
        assert process.poll() is None, "the calibration ended before it could be interrupted"
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_calibration_keeps_its_measurements_and_resumes(db_path: Path, signum: int) -> None:
    arguments = (
        "calibrate",
        "--arch",
        SLOW,
        "--device",
        "trace",
        "--gpu-mem",
        SMALL_BUDGET,
        "--db",
        str(db_path),
        "--json",
    )
    code, out, err = _interrupt_after_three_measurements(arguments, db_path, signum)

    assert code == 130, err
    assert err.splitlines()[-1] == INTERRUPTED
    assert [line for line in err.splitlines() if line.startswith("memprobe:")] == [INTERRUPTED]
    assert "Traceback" not in err and out == ""
    kept = measurement_count(db_path)
    assert kept >= 3
    assert query(db_path, "SELECT COUNT(*) FROM measurements WHERE error IS NOT NULL OR oom = 1") == [(0,)]
    assert query(db_path, "SELECT COUNT(*) FROM calibrations") == [(0,)]

    resumed = run_cli(*arguments)  # no sleeping in forward now
    assert resumed.code == 0, resumed.err
    data = json.loads(resumed.out)
    assert data["reused"] >= kept
    assert measurement_count(db_path) == kept + data["measured"]
    assert repeated_configurations(db_path) == []
    assert query(db_path, "SELECT COUNT(*) FROM calibrations") == [(1,)]
