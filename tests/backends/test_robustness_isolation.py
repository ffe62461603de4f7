"""Isolation: with --isolate each probe runs in a child process, and a crash is a failed measurement.

A probe whose process dies (segfault, SIGKILL as from the OOM killer, an abrupt exit, a hang)
is recorded with ``error`` set and the calibration goes on; a model that raises is reported
exactly as without isolation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprobe.core.config import StepConfig
from memprobe.core.errors import InvalidInputError, MemprobeError, ModelError
from tests.helpers import SMALL_BUDGET, query, run_cli

SEGFAULTS_ABOVE_BATCH_2 = "tests.crashy_models:segfaults_above_batch_2"


def _isolated_trace() -> object:
    from memprobe.backends.isolated import IsolatedBackend
    from memprobe.backends.trace_backend import TraceBackend

    return IsolatedBackend(TraceBackend())


def _config(arch: str, batch: int = 1) -> StepConfig:
    return StepConfig(arch=arch, patch=(16, 16, 16), batch=batch)


@pytest.mark.parametrize(
    ("arch", "described"),
    [
        ("tests.tiny_models:segfaulting_net", "the probe's process was killed by SIGSEGV"),
        ("tests.crashy_models:killed_net", "the probe's process was killed by SIGKILL"),
        ("tests.crashy_models:exiting_net", "the probe's process exited with code 3"),
    ],
)
def test_a_crashed_probe_is_a_failed_measurement(arch: str, described: str) -> None:
    measurement = _isolated_trace().measure(_config(arch))  # type: ignore[attr-defined]
    assert measurement.error.startswith(described)
    assert not measurement.ok and not measurement.oom and measurement.peak_allocated_bytes is None
    assert measurement.config == _config(arch)


@pytest.mark.parametrize(
    ("arch", "error_type", "message"),
    [
        ("tests.tiny_models:raising_net", ModelError, "forward failed on purpose"),
        ("tests.tiny_models:not_a_module", InvalidInputError, "not a torch.nn.Module"),
    ],
)
def test_a_model_that_raises_is_reported_as_without_isolation(
    arch: str, error_type: type[MemprobeError], message: str
) -> None:
    with pytest.raises(error_type, match=message) as raised:
        _isolated_trace().measure(_config(arch))  # type: ignore[attr-defined]
    assert type(raised.value) is error_type


def test_an_isolated_measurement_equals_one_in_process() -> None:
    """The child's report survives a model that prints to stdout without a newline."""
    from memprobe.backends.trace_backend import TraceBackend

    config = _config("tests.crashy_models:chatty_net", batch=2)
    isolated = _isolated_trace().measure(config)  # type: ignore[attr-defined]
    in_process = TraceBackend().measure(config)
    assert isolated.ok
    assert isolated.peak_allocated_bytes == in_process.peak_allocated_bytes
    assert isolated.phase_peaks_bytes == in_process.phase_peaks_bytes
    assert isolated.environment == in_process.environment


def test_a_probe_that_hangs_is_stopped_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    import memprobe.backends.isolated as isolated

    monkeypatch.setattr(isolated, "CHILD_TIMEOUT_SECONDS", 1)
    measurement = _isolated_trace().measure(_config("tests.crashy_models:hanging_net"))  # type: ignore[attr-defined]
    assert measurement.error == "the probe's process did not finish within 1 s"


def test_probe_isolate_reports_a_segfault_as_a_model_failure() -> None:
    """A crashed child is the model's failure: one line, exit 1 (#15; it was exit 0)."""
    result = run_cli(
        "probe",
        "--arch",
        "tests.tiny_models:segfaulting_net",
        "--patch",
        "16",
        "16",
        "16",
        "--batch",
        "1",
        "--device",
        "trace",
        "--isolate",
        "--json",
    )
    assert result.code == 1, result.err
    assert "Traceback" not in result.err and result.out == ""
    assert result.error_lines == [
        "memprobe: error: the model exited abnormally: the probe's process was killed by SIGSEGV"
    ]


def _seed_what_does_not_crash(db_path: Path, arch: str) -> int:
    """Run the same calibration in this process first, leaving out (unrecorded) each probe that would
    crash, so that the isolated run pays a child process (seconds each) only for those."""
    from memprobe.api import default_budget_bytes
    from memprobe.backends.recorder import MeasurementLog
    from memprobe.backends.trace_backend import TraceBackend
    from memprobe.calibration_run import calibrate
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.core.config import make_step_config
    from memprobe.core.measurement import Measurement
    from memprobe.store.database import Database
    from tests.crashy_models import LARGEST_SAFE_BATCH

    class LogSkippingCrashes(MeasurementLog):
        def measure(self, config: StepConfig) -> Measurement:
            if config.batch > LARGEST_SAFE_BATCH:
                return Measurement(config, self.backend.environment(), None, error="left to the isolated run")
            return super().measure(config)

    spec = resolve_arch(arch)
    budget_bytes = default_budget_bytes(TraceBackend().environment(), SMALL_BUDGET)
    with Database.open(db_path) as database:
        log = LogSkippingCrashes(TraceBackend(), database, budget_bytes)
        calibrate(log, make_step_config(arch, (2 * spec.divisor,) * 3, 1), budget_bytes)
    return len(log.taken)


def test_calibrate_isolate_records_crashes_and_finishes(db_path: Path) -> None:
    seeded = _seed_what_does_not_crash(db_path, SEGFAULTS_ABOVE_BATCH_2)
    result = run_cli(
        "calibrate",
        "--arch",
        SEGFAULTS_ABOVE_BATCH_2,
        "--device",
        "trace",
        "--precision",
        "fp32",  # as seeded
        "--isolate",
        "--gpu-mem",
        SMALL_BUDGET,
        "--db",
        str(db_path),
        "--json",
    )
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    data = json.loads(result.out)
    assert data["reused"] >= seeded
    crashed = [m for m in data["measurements"] if m["error"]]
    assert crashed, "a held-out point at batch 3 must have crashed"
    assert all(m["batch"] > 2 and m["error"] == "the probe's process was killed by SIGSEGV" for m in crashed)
    assert all(
        m["error"] is None and m["peak_allocated_bytes"] for m in data["measurements"] if m["batch"] <= 2
    )
    stored_errors = query(db_path, "SELECT batch, error FROM measurements WHERE error IS NOT NULL")
    assert sorted(stored_errors) == sorted((m["batch"], m["error"]) for m in crashed)
    assert query(db_path, "SELECT COUNT(*) FROM measurements") == [(seeded + data["measured"],)]
    assert query(db_path, "SELECT DISTINCT arch FROM calibrations") == [(SEGFAULTS_ABOVE_BATCH_2,)]
