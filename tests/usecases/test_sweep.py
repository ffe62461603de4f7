"""``memprobe sweep``: calibrations as submitit jobs into one database; a rerun submits only what is missing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import SMALL_BUDGET, TINY, invoke

pytest.importorskip("submitit", reason="submitit is not installed: pip install 'memprobe[cluster]'")

SWEEP = ("sweep", "--arch", TINY, "--precision", "fp32", "--precision", "bf16-mixed")
ON_TRACE = ("--device", "trace", "--gpu-mem", SMALL_BUDGET, "--executor", "local")


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


def test_a_job_that_died_without_a_result_is_failed_and_resubmitted(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dying = ("sweep", "--arch", "tests.tiny_models:exits_when_built", *ON_TRACE, "--db", str(db_path))
    first = invoke(capsys, *dying, "--json")
    assert first.code == 0, first.err
    (job,) = json.loads(first.out)
    assert job["state"] == "failed" and "ended without a result" in job["detail"]
    status = invoke(capsys, "sweep", "--arch", "tests.tiny_models:exits_when_built", "--status",
                    "--db", str(db_path), "--json")  # fmt: skip
    assert json.loads(status.out)[0]["state"] == "failed"  # read again in another process's view
    again = invoke(capsys, *dying, "--json", "--no-wait")
    assert json.loads(again.out)[0]["job_id"] != job["job_id"]  # resubmitted


def test_a_sweep_for_several_gpus_passes_the_layout_into_each_job(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import memprobe.sweep as sweep_module

    submitted: list[tuple[object, ...]] = []

    class _Handle:
        job_id = "1"

        def done(self) -> bool:
            return True

    class _Recorder:
        def submit(self, function: object, *arguments: object) -> _Handle:
            submitted.append(arguments)
            return _Handle()

    def executor(spec: sweep_module.SweepSpec) -> _Recorder:
        spec.folder.mkdir(parents=True, exist_ok=True)
        return _Recorder()

    monkeypatch.setattr(sweep_module, "_executor", executor)
    result = invoke(capsys, "sweep", "--arch", TINY, "--gpus", "4", "--strategy", "fsdp", "--db", str(db_path),
                    "--no-wait", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert submitted[0][-3:-1] == ("fsdp", 4)
    (job,) = json.loads(result.out)
    assert job["layout"] == "fsdp x4"
    refused = invoke(
        capsys, "sweep", "--arch", TINY, "--gpus", "1", "--strategy", "ddp", "--db", str(db_path)
    )
    assert refused.code == 2 and "--gpus 2 or more" in refused.err
