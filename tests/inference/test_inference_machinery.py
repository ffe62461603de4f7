"""Inference on training's machinery: the backend protocol, isolation, user exits, the store and the calibration type."""

from __future__ import annotations

import json
import sqlite3
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from memprobe.core.errors import ModelError, StandInCalibrationWarning
from memprobe.core.inference_config import InferenceConfig, make_inference_config
from memprobe.core.inference_measurement import INFERENCE_CODE_VERSION, InferenceMeasurement
from memprobe.core.measurement import MEASUREMENT_CODE_VERSION, Environment, ReuseKey
from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration
from memprobe.store.database import Database
from tests.helpers import TINY, invoke, make_inference_calibration, run_cli

TRACE = Environment("trace", "trace")


def _config(arch: str = TINY, **fields: object) -> InferenceConfig:
    return make_inference_config(arch, (16, 16, 16), (32, 32, 48), 2, **fields)  # type: ignore[arg-type]


def test_an_isolated_inference_equals_one_in_process() -> None:
    """The child runs the same backend and reports the same measurement, chatty model and all."""
    from memprobe.backends import get_inference_backend

    config = _config("tests.crashy_models:chatty_net")
    isolated = get_inference_backend("trace", isolate=True).measure(config)
    in_process = get_inference_backend("trace").measure(config)
    assert isolated.ok and isinstance(isolated, InferenceMeasurement)
    assert isolated.config == config
    assert isolated.peak_allocated_bytes == in_process.peak_allocated_bytes
    assert isolated.peak_reserved_bytes == in_process.peak_reserved_bytes
    assert isolated.phase_peaks_bytes == in_process.phase_peaks_bytes
    assert isolated.environment == in_process.environment


def test_a_crashed_isolated_inference_is_a_failed_measurement() -> None:
    from memprobe.backends import get_inference_backend

    measured = get_inference_backend("trace", isolate=True).measure(
        _config("tests.crashy_models:exiting_net")
    )
    assert isinstance(measured, InferenceMeasurement) and not measured.ok
    assert measured.error is not None and measured.error.startswith("the probe's process exited with code 3")


def test_a_model_that_calls_sys_exit_while_predicting_is_a_model_error(tmp_path: Path) -> None:
    """The user-exit rule of training steps holds for inference: one ModelError, not an exit of memprobe."""
    from memprobe.backends import get_inference_backend

    with pytest.raises(ModelError, match=r"the model exited while predicting .*sys\.exit"):
        get_inference_backend("trace").measure(_config("tests.tiny_models:exits_in_forward"))


def test_probe_isolate_in_inference_mode_reports_a_crash_in_one_line() -> None:
    result = run_cli(
        "probe", "--mode", "inference", "--arch", "tests.crashy_models:exiting_net", "--patch", "16", "16", "16",
        "--image-shape", "32", "32", "32", "--device", "trace", "--isolate", "--json",
    )  # fmt: skip
    assert result.code == 1, result.err
    assert result.out == "" and "Traceback" not in result.err
    assert result.error_lines == [
        "memprobe: error: the model exited abnormally: the probe's process exited with code 3"
    ]


def test_probe_in_inference_mode_takes_a_custom_models_shape_rule() -> None:
    """--divisor declares a custom model's rule in either mode; a window off the rule is refused by it."""
    base = (
        "probe",
        "--mode",
        "inference",
        "--arch",
        TINY,
        "--image-shape",
        "48",
        "48",
        "48",
        "--device",
        "trace",
    )
    refused = run_cli(*base, "--patch", "12", "16", "16", "--divisor", "8", "8", "8")
    assert refused.code == 2 and "divisible by 8" in refused.err, refused.err
    taken = run_cli(*base, "--patch", "16", "16", "16", "--divisor", "8", "8", "8", "--json")
    assert taken.code == 0, taken.err
    assert "divisible by 8" in taken.err  # the rule it probed with, said on stderr


def test_one_database_stores_and_finds_either_kind(db_path: Path) -> None:
    """add_measurement and find_measurement take an inference as they take a training step, keyed by its own code version."""
    config = make_inference_config("unet", (32, 32, 32), (64, 64, 96), 2)
    measured = InferenceMeasurement(
        config, TRACE, 5000, 6000, phase_peaks_bytes={"forward": 5000}, seconds=1.0
    )
    with Database.open(db_path) as database:
        database.add_measurement(measured)
        assert database.find_measurement(config, TRACE) == measured
        assert (
            database.find_measurement(config, TRACE, reuse_key=ReuseKey(MEASUREMENT_CODE_VERSION + 99))
            is None
        )
        assert database.find_measurement(replace(config, sw_batch_size=3), TRACE) is None
        assert database.measurements() == [] and database.inference_measurements() == [measured]
        other = ReuseKey(INFERENCE_CODE_VERSION, model_hash="abc")
        database.add_measurement(replace(measured, peak_allocated_bytes=7000), other)
        assert database.find_measurement(config, TRACE, reuse_key=other).peak_allocated_bytes == 7000  # type: ignore[union-attr]
        assert database.find_measurement(config, TRACE).peak_allocated_bytes == 5000  # type: ignore[union-attr]


def test_an_inference_calibration_has_a_predictor_field_and_reads_old_records() -> None:
    nnunet = make_inference_calibration(predictor="nnunet")
    assert nnunet.to_dict()["predictor"] == "nnunet" and nnunet.step == INFERENCE
    assert InferenceCalibration.from_dict(nnunet.to_dict()) == nnunet
    old = {**nnunet.to_dict(), "step": "nnunet"}
    del old["predictor"]  # a record from before the field: the predictor was its step
    assert InferenceCalibration.from_dict(old) == nnunet
    assert nnunet.key != make_inference_calibration().key  # one of each predictor is kept


def test_database_round_trips_the_predictor(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_calibration(make_inference_calibration(predictor="nnunet"))
        database.add_calibration(make_inference_calibration())
        stored = database.inference_calibrations()
        assert database.calibrations() == []
    assert sorted(c.predictor.value for c in stored) == ["monai", "nnunet"]


def test_a_gpu_without_its_own_inference_calibration_is_answered_as_training_is(db_path: Path) -> None:
    """The shared chooser: the trace one stands in, with the same warning class and words as training's."""
    from memprobe.inference.api import choose_inference_calibration

    with Database.open(db_path) as database:
        database.add_calibration(make_inference_calibration())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = choose_inference_calibration("unet", "bf16-mixed", db_path, device="NVIDIA A100-SXM4-80GB")
    assert chosen.device == "trace"
    [warning] = caught
    assert warning.category is StandInCalibrationWarning
    assert "using the trace calibration, which counts tensors only" in str(warning.message)
    assert "memprobe calibrate --mode inference --arch unet --device cuda" in str(warning.message)


def test_every_plan_shares_the_plan_type() -> None:
    from memprobe.planning.inference_plan import InferencePlan
    from memprobe.planning.need import MemoryPlan
    from memprobe.planning.size_search import BatchPlan, PatchPlan

    assert all(issubclass(kind, MemoryPlan) for kind in (BatchPlan, PatchPlan, InferencePlan))


def test_a_custom_model_is_planned_from_the_calibration_stored_under_its_rule(db_path: Path) -> None:
    """calibrate_inference stores a custom model under its shape rule, as training's calibrate does;
    planning it by its plain name finds that calibration (it did not: the user was told to calibrate again)."""
    from memprobe.inference.api import calibrate_inference, max_sw_batch_size

    aniso = "tests.aniso_models:aniso_net"  # pools depth by 4, height and width by 8: a rule to find
    report = calibrate_inference(aniso, device="trace", db=db_path)
    assert report.calibration.arch.startswith(aniso + "[div=4x8x8")  # the rule travels with the name
    plan = max_sw_batch_size(aniso, (32, 32, 32), (128, 128, 128), "24GiB", db=db_path, device="trace")
    assert plan.calibration.arch == report.calibration.arch and plan.calibration.source == str(db_path)


def test_an_inference_calibration_row_a_later_memprobe_wrote_is_skipped_with_a_warning(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Database.open(db_path) as database:
        database.add_calibration(make_inference_calibration())
        database.add_calibration(make_inference_calibration(predictor="nnunet"))
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            "UPDATE inference_calibrations SET settings_json = ? WHERE settings_json LIKE '%nnunet%'",
            ('{"predictor": "a-later-one"}',),
        )
    listed = invoke(capsys, "db", "list", "--db", str(db_path), "--no-shipped", "--json")
    assert listed.code == 0, listed.err
    assert [c["predictor"] for c in json.loads(listed.out)] == ["monai"]
    assert listed.err.count("memprobe: warning: skipped inference_calibrations row 2 ") == 1
    assert "'a-later-one' is not a valid Predictor" in listed.err
