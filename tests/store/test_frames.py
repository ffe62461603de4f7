"""memprobe.load_measurements() and load_calibrations(): the database as pandas DataFrames."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import memprobe
from memprobe.core.config import StepConfig
from memprobe.core.enums import Precision
from memprobe.core.errors import DatabaseError
from memprobe.core.inference_config import InferenceConfig, Predictor
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.core.measurement import Environment, Measurement
from memprobe.formula.calibration import FitQuality
from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration
from memprobe.store.database import Database
from memprobe.store.frames import load_calibrations, load_measurements
from tests.helpers import file_state, make_calibration

TRACE = Environment("trace", "trace", torch_version="2.13", memprobe_version="0.1.0", host="here")
GPU = Environment(
    "cuda",
    "NVIDIA H100",
    total_memory_bytes=80 * 2**30,
    driver_version="550",
    cuda_version="12.4",
    torch_version="2.13",
    host="gpu-box",
)
ENVIRONMENT_COLUMNS = [
    "device_kind",
    "device_name",
    "total_memory_bytes",
    "driver_version",
    "cuda_version",
    "cudnn_version",
    "torch_version",
    "monai_version",
    "memprobe_version",
    "host",
]
BF16 = StepConfig("mednext", precision=Precision.BF16_MIXED, patch=(64, 64, 64), batch=4)
WINDOWS = InferenceConfig("unet", (64, 64, 64), (128, 128, 96), sw_batch_size=4)


def _inference_calibration() -> InferenceCalibration:
    return InferenceCalibration(
        "unet",
        "trace",
        "fp32",
        INFERENCE,
        False,
        {"forward": {"constant": 1e6, "feature_maps": 4.0}, "stitch": {"image_voxels": 12.0}},
        {"constant": 1e5},
        FitQuality(9, 0.02, 0.04, 3, 0.03, 0.05),
        created_at="2026-02-01T00:00:00+00:00",
        predictor=Predictor.NNUNET,
    )


@pytest.fixture
def filled(db_path: Path) -> Path:
    return fill(db_path)


def fill(db_path: Path) -> Path:
    """Three training and one inference measurement; two training and one inference calibration."""
    with Database.open(db_path) as database:
        database.add_measurement(
            Measurement(
                StepConfig("mednext", patch=(128, 112, 96), batch=2),
                TRACE,
                1000,
                2048,
                phase_peaks_bytes={"forward": 900, "backward": 1000},
                step_seconds=0.5,
                reserved_source="simulated",
            )
        )
        database.add_measurement(Measurement(BF16, GPU, 3 * 2**30, 4 * 2**30))
        database.add_measurement(
            Measurement(
                StepConfig("mednext", patch=(256, 256, 256), batch=8), GPU, None, oom=True, budget_bytes=2**34
            )
        )
        database.add_measurement(InferenceMeasurement(WINDOWS, TRACE, 5000, 6000, seconds=1.5))
        database.add_calibration(make_calibration(), TRACE)
        database.add_calibration(
            replace(make_calibration("basicunet", "bf16-mixed", device="NVIDIA H100"), context_bytes=500), GPU
        )
        database.add_calibration(_inference_calibration())
    return db_path


def test_one_row_per_measurement_training_then_inference(filled: Path) -> None:
    frame = load_measurements(filled)
    assert list(frame["mode"]) == ["training", "training", "training", "inference"]
    assert list(frame["arch"]) == ["mednext", "mednext", "mednext", "unet"]
    assert list(frame["peak_allocated_bytes"][:2]) == [1000, 3 * 2**30]
    assert list(frame["peak_reserved_bytes"][:2]) == [2048, 4 * 2**30]


def test_configuration_columns_are_flat(filled: Path) -> None:
    frame = load_measurements(filled)
    first = frame.iloc[0]
    assert list(first[["patch", "patch_d", "patch_h", "patch_w"]]) == ["128x112x96", 128, 112, 96]
    assert first["voxels"] == 128 * 112 * 96 and first["batch"] == 2
    assert (first["precision"], first["optimizer"], first["step"]) == ("fp32", "adamw", "memprobe")
    assert frame["precision"][1] == "bf16-mixed"
    assert frame.dtypes["patch_d"] == "Int64" and frame.dtypes["peak_allocated_bytes"] == "Int64"
    # Filtering the way a notebook does: by patch text, by integers, by mode.
    training = frame[frame["mode"] == "training"]
    assert len(training[training["patch_d"] >= 128]) == 2
    assert json.loads(first["phase_peaks_json"]) == {"forward": 900, "backward": 1000}
    assert first["seconds"] == 0.5 and first["reserved_source"] == "simulated"


def test_an_out_of_memory_row_has_no_peak(filled: Path) -> None:
    oom = load_measurements(filled).iloc[2]
    assert bool(oom["oom"]) and not bool(oom["ok"])
    assert pd.isna(oom["peak_allocated_bytes"]) and oom["budget_bytes"] == 2**34


def test_inference_rows_have_their_own_columns_and_not_training_ones(filled: Path) -> None:
    row = load_measurements(filled).iloc[3]
    assert (row["roi"], row["roi_d"], row["image"], row["image_w"]) == ("64x64x64", 64, "128x128x96", 96)
    assert row["sw_batch_size"] == 4 and row["windows"] == WINDOWS.windows()
    assert (row["predictor"], row["blend"], row["stitch"]) == ("monai", "constant", "gpu")
    assert row["seconds"] == 1.5 and row["peak_allocated_bytes"] == 5000
    assert all(pd.isna(row[name]) for name in ("patch", "patch_d", "batch", "optimizer", "world_size"))


def test_environment_columns_come_from_the_environment_rows(filled: Path) -> None:
    frame = load_measurements(filled)
    assert set(ENVIRONMENT_COLUMNS) <= set(frame.columns)
    gpu = frame.iloc[1]
    assert (gpu["device_kind"], gpu["device_name"], gpu["device"]) == ("cuda", "NVIDIA H100", "NVIDIA H100")
    assert list(gpu[["total_memory_bytes", "driver_version", "cuda_version"]]) == [80 * 2**30, "550", "12.4"]
    assert gpu["host"] == "gpu-box" and gpu["torch_version"] == "2.13"
    assert frame.iloc[0]["device"] == "trace" and pd.isna(frame.iloc[0]["cuda_version"])


def test_one_row_per_calibration_with_coefficients_and_held_out_errors(filled: Path) -> None:
    frame = load_calibrations(filled)
    assert list(frame["mode"]) == ["training", "training", "inference"]
    assert list(frame["arch"]) == ["basicunet", "mednext", "unet"]
    mednext = frame.iloc[1]
    expected = make_calibration()
    assert json.loads(mednext["phase_coefficients_json"]) == expected.phase_coefficients
    assert json.loads(mednext["parameter_model_json"]) == expected.parameter_model
    assert json.loads(mednext["fit_range_json"]) == expected.fit_range
    assert mednext["segments"] == 2
    assert (mednext["fit_points"], mednext["heldout_points"]) == (10, 4)
    assert mednext["heldout_median_relative_error"] == 0.015 and mednext["heldout_max_relative_error"] == 0.03
    assert mednext["fit_median_relative_error"] == 0.01
    assert pd.isna(mednext["reserved_heldout_median_relative_error"])  # no reserve was fitted
    assert list(mednext[["optimizer", "step", "deep_supervision"]]) == ["adamw", "memprobe", False]
    assert mednext["device_kind"] == "trace" and mednext["host"] == "here"
    gpu = frame.iloc[0]
    assert (gpu["device"], gpu["device_name"], gpu["context_bytes"]) == ("NVIDIA H100", "NVIDIA H100", 500)


def test_an_inference_calibration_names_its_predictor(filled: Path) -> None:
    row = load_calibrations(filled).iloc[2]
    assert row["predictor"] == "nnunet" and row["heldout_median_relative_error"] == 0.03
    assert pd.isna(row["optimizer"]) and pd.isna(row["step"])
    assert pd.isna(row["device_kind"])  # stored without an environment


def test_a_refit_replaces_its_key_as_planning_reads_it(filled: Path) -> None:
    with Database.open(filled) as database:
        database.add_calibration(replace(make_calibration(), created_at="2026-03-01T00:00:00+00:00"))
    frame = load_calibrations(filled)
    assert list(frame["created_at"][frame["arch"] == "mednext"]) == ["2026-03-01T00:00:00+00:00"]


def test_the_database_is_read_without_being_written(filled: Path) -> None:
    before = file_state(filled)
    load_measurements(filled)
    load_calibrations(filled)
    assert file_state(filled) == before


def test_none_means_the_default_database(filled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMPROBE_DB", str(filled))
    assert len(memprobe.load_measurements()) == 4
    assert len(memprobe.load_calibrations()) == 3


def test_an_empty_database_gives_the_columns_and_no_rows(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.environment_id(TRACE)  # the file exists, with no measurement or calibration
    measurements, calibrations = load_measurements(db_path), load_calibrations(db_path)
    assert measurements.empty and calibrations.empty
    assert {"mode", "patch_d", "peak_allocated_bytes", *ENVIRONMENT_COLUMNS} <= set(measurements.columns)
    assert {"heldout_median_relative_error", "phase_coefficients_json"} <= set(calibrations.columns)


@pytest.mark.parametrize("load", [load_measurements, load_calibrations])
def test_a_missing_database_is_one_line(load: object, tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(DatabaseError, match="no database at") as error:
        load(missing)  # type: ignore[operator]
    assert "\n" not in str(error.value) and not missing.exists()


def test_the_exports_are_lazy_and_import_neither_pandas_nor_torch() -> None:
    script = (
        "import sys, memprobe\n"
        "from memprobe.store import frames\n"
        "assert memprobe.load_measurements is frames.load_measurements\n"
        "assert memprobe.load_calibrations is frames.load_calibrations\n"
        "assert 'load_measurements' in memprobe.__all__\n"
        "assert 'pandas' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
