"""Training steps by name: memprobe's, MONAI's and a user's, measured, stored and planned apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from memprobe.backends.recorder import MeasurementLog
from memprobe.backends.trace_backend import CpuBackend, TraceBackend
from memprobe.core.config import Setup, make_step_config
from memprobe.core.errors import InvalidInputError, NoCalibrationError
from memprobe.core.measurement import Environment, Measurement
from memprobe.core.step_names import check_step_name
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.store.calibration_sources import choose_calibration
from memprobe.store.database import Database
from tests.custom_steps import EXTRA_BYTES
from tests.helpers import TINY, invoke

PATCH = (16, 16, 16)
EXTRA = "tests.custom_steps:step_with_extra"
PLAIN = "tests.custom_steps:plain_step"


def _config(step: str, batch: int = 2, out_channels: int = 2) -> object:
    return make_step_config(TINY, PATCH, batch, step=step, out_channels=out_channels)


@pytest.mark.parametrize("backend", [TraceBackend, CpuBackend])
def test_a_custom_step_is_measured_with_exactly_its_extra_tensor(backend: type) -> None:
    plain = backend().measure(_config(PLAIN))
    extra = backend().measure(_config(EXTRA))
    assert plain.ok and extra.ok
    assert extra.peak_allocated_bytes - plain.peak_allocated_bytes == EXTRA_BYTES
    assert set(extra.phase_peaks_bytes) == {"step"}  # one segment: a user's step announces no phases


def test_monai_and_memprobe_steps_differ_where_their_losses_differ() -> None:
    # Many classes, so the loss's one-hot (int64 in memprobe's, float32 in MONAI's) is visible.
    backend = TraceBackend()
    ours = backend.measure(_config("memprobe", out_channels=16))
    monai = backend.measure(_config("monai", out_channels=16))
    assert ours.ok and monai.ok
    assert ours.phase_peaks_bytes["forward"] != monai.phase_peaks_bytes["forward"]
    assert ours.peak_allocated_bytes != monai.peak_allocated_bytes


def _calibration(step: str) -> Calibration:
    return Calibration(
        TINY, "trace", "fp32", "adamw", False, {"step": {"constant": 1.0}}, {}, FitQuality(1, 0, 0), step=step
    )


def test_each_calibration_plans_only_for_its_own_step(fresh_db: Database) -> None:
    fresh_db.add_calibration(_calibration("monai"))
    stored = fresh_db.calibrations()
    assert [c.step for c in stored] == ["monai"]
    assert (
        choose_calibration(
            stored,
            Setup.of(TINY, precision="fp32", step="monai"),
            "trace",
        ).calibration.step
        == "monai"
    )
    with pytest.raises(NoCalibrationError, match="calibrated for the training step monai"):
        choose_calibration(
            [_calibration("monai")],
            Setup.of(TINY, precision="fp32"),
            "trace",
        )
    with pytest.raises(NoCalibrationError, match="step monai"):
        choose_calibration(
            [_calibration("memprobe")],
            Setup.of(TINY, precision="fp32", step="monai"),
            "trace",
        )


def test_a_calibration_without_a_step_loads_as_memprobes() -> None:
    data = _calibration("memprobe").to_dict()
    del data["step"]
    assert Calibration.from_dict(data).step == "memprobe"


def test_a_measurement_of_one_step_is_never_reused_for_another(fresh_db: Database) -> None:
    log = MeasurementLog(TraceBackend(), fresh_db)
    log.measure(_config(PLAIN))
    log.measure(_config("monai"))
    assert log.reused == 0 and len(log.taken) == 2
    log.measure(_config(PLAIN))
    assert log.reused == 1
    rows = fresh_db.measurements()
    assert [m.config.step for m in rows] == [PLAIN, "monai"]


def test_an_edited_custom_step_is_measured_afresh(
    fresh_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = MeasurementLog(TraceBackend(), fresh_db)
    config = _config(PLAIN)
    log.measure(config)
    log.measure(config)
    assert log.reused == 1
    monkeypatch.setattr("memprobe.training.named_steps.step_source_hash", lambda name: "edited source")
    log.measure(config)
    assert log.reused == 1 and len(log.taken) == 2


def test_the_label_names_a_step_other_than_memprobes() -> None:
    assert "step" not in _config("memprobe").label()
    assert _config("monai").label().endswith("step monai")


@pytest.mark.parametrize("name", ["", "nope", "a:", ":b", "a b:c", "pkg.mod:1x"])
def test_a_malformed_step_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInputError, match=r"package\.module:function"):
        check_step_name(name)


PROBE = ("probe", "--arch", TINY, "--patch", "16", "16", "16", "--batch", "1", "--device", "trace")


@pytest.mark.parametrize(
    ("step", "code", "says"),
    [
        ("tests.custom_steps:NOT_CALLABLE", 2, "is not callable"),
        ("tests.custom_steps:wrong_signature", 2, "has the signature (model, optimizer)"),
        ("tests.custom_steps:missing", 2, "has no attribute 'missing'"),
        ("tests.no_such_module:step", 2, "cannot import 'tests.no_such_module'"),
        ("tests.custom_steps:raising_step", 1, "raised RuntimeError: step failed on purpose"),
    ],
)
def test_a_bad_custom_step_is_one_line_naming_it_and_the_protocol(
    capsys: pytest.CaptureFixture[str], step: str, code: int, says: str
) -> None:
    result = invoke(capsys, *PROBE, "--step", step)
    assert result.code == code
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if not line.startswith("measuring ")]  # progress
    assert len(lines) == 1, result.err
    assert says in lines[0] and step in lines[0]
    assert "def step(model, optimizer, inputs, labels, scaler)" in lines[0]


def test_probe_measures_the_chosen_step(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, *PROBE, "--step", EXTRA, "--json")
    assert result.code == 0, result.err
    assert f'"step": "{EXTRA}"' in result.out


def test_the_isolated_child_runs_the_chosen_step() -> None:
    from memprobe.backends.isolated import IsolatedBackend

    measured = IsolatedBackend(TraceBackend()).measure(_config(EXTRA, batch=1))
    plain = TraceBackend().measure(_config(PLAIN, batch=1))
    assert measured.config.step == EXTRA
    assert measured.peak_allocated_bytes == (plain.peak_allocated_bytes or 0) + EXTRA_BYTES


def test_a_stored_measurement_keeps_its_step(tmp_path: Path) -> None:
    environment = Environment("trace", "trace", host="test")
    with Database.open(tmp_path / "db.sqlite") as database:
        database.add_measurement(Measurement(_config("monai"), environment, 5))  # type: ignore[arg-type]
        assert database.measurements()[0].config.step == "monai"


def test_the_cuda_backends_step_runner_runs_the_chosen_step() -> None:
    import torch

    from memprobe.backends.cuda import run_real_step

    phases: list[str | None] = []
    run = run_real_step(_config(EXTRA, batch=1), torch.device("cpu"), phases.append, lambda: None)
    assert phases == ["step", None]  # the measured step is the user's, announced as one segment
    assert run.warmup_steps == 1 and run.parameters > 0
