"""``memprobe sweep``: calibrations as submitit jobs into one database; a rerun submits only what is missing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.robustness_helpers import SMALL_BUDGET, TINY, invoke

pytest.importorskip("submitit", reason="submitit is not installed: pip install 'memprobe[cluster]'")

SWEEP = ("sweep", "--arch", TINY, "--precision", "fp32", "--precision", "bf16-mixed")
ON_TRACE = ("--device", "trace", "--budget", SMALL_BUDGET, "--executor", "local")


def test_local_sweep_runs_each_calibration_as_a_job_and_a_rerun_submits_nothing(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = invoke(capsys, *SWEEP, *ON_TRACE, "--db", str(db_path), "--json")
    assert first.code == 0, first.err
    jobs = json.loads(first.out)
    assert [job["state"] for job in jobs] == ["done", "done"]
    assert len({job["job_id"] for job in jobs}) == 2  # separate jobs
    assert first.err.count(": submitted") == 2
    connection = sqlite3.connect(db_path)
    precisions = sorted(row[0] for row in connection.execute("SELECT precision FROM calibrations"))
    connection.close()
    assert precisions == ["bf16-mixed", "fp32"]

    again = invoke(capsys, *SWEEP, *ON_TRACE, "--db", str(db_path), "--json")
    assert again.code == 0, again.err
    assert "submitted" not in again.err
    assert [job["job_id"] for job in json.loads(again.out)] == [job["job_id"] for job in jobs]

    status = invoke(capsys, *SWEEP, "--status", "--db", str(db_path), "--json")
    assert [job["state"] for job in json.loads(status.out)] == ["done", "done"]


def test_a_failed_job_is_shown_and_resubmitted(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failing = ("sweep", "--arch", "tests.tiny_models:no_such_model", *ON_TRACE, "--db", str(db_path))
    first = invoke(capsys, *failing, "--json")
    assert first.code == 0, first.err
    (job,) = json.loads(first.out)
    assert job["state"] == "failed" and job["detail"]
    again = invoke(capsys, *failing, "--json")
    assert json.loads(again.out)[0]["job_id"] != job["job_id"]  # resubmitted


def test_slurm_without_sbatch_names_what_to_install(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    result = invoke(capsys, *SWEEP, "--executor", "slurm", "--db", str(db_path))
    assert result.code == 2
    assert len(result.error_lines) == 1 and "sbatch" in result.err
