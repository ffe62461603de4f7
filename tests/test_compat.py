"""Tests of memprobe.compat: PyTorch Connectomics' planner functions answered from calibrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from memprobe.archs.registry import get_arch
from memprobe.compat import estimate_gpu_memory_required, suggest_batch_size
from memprobe.db import Database
from memprobe.errors import NoCalibrationError
from memprobe.planner import plan_batch
from tests.factories import make_calibration

GB = 1024**3


FP16 = make_calibration(precision="fp16-mixed", per_voxel=24.0)
FP32 = make_calibration(precision="fp32")


@pytest.fixture
def calibrated_db(db_path: Path) -> Path:
    """MedNeXt calibrated at fp16-mixed and fp32, BasicUNet at fp16-mixed."""
    with Database.open(db_path) as db:
        for calibration in (FP16, FP32, make_calibration("basicunet", "fp16-mixed", per_voxel=20.0)):
            db.add_calibration(calibration)
    return db_path


def test_estimate_is_gib_as_a_float(calibrated_db: Path) -> None:
    """The estimate is a float of GB (1024^3 bytes), from the fp16 calibration by default."""
    required = estimate_gpu_memory_required([128, 128, 128], 2, db=calibrated_db)
    assert isinstance(required, float)
    assert required == pytest.approx(FP16.predict_peak_bytes(get_arch("mednext"), (128, 128, 128), 2) / GB)


def test_mixed_precision_false_is_fp32(calibrated_db: Path) -> None:
    """mixed_precision=False reads the fp32 calibration, which needs more memory."""
    fp32 = estimate_gpu_memory_required((128, 128, 128), 2, mixed_precision=False, db=calibrated_db)
    assert fp32 == pytest.approx(FP32.predict_peak_bytes(get_arch("mednext"), (128, 128, 128), 2) / GB)
    assert fp32 > estimate_gpu_memory_required((128, 128, 128), 2, db=calibrated_db)


def test_planner_only_arguments_are_accepted(calibrated_db: Path) -> None:
    """base_features and num_pool_stages are accepted for compatibility and do not change the answer."""
    plain = estimate_gpu_memory_required((96, 96, 96), 1, db=calibrated_db)
    assert estimate_gpu_memory_required((96, 96, 96), 1, 1, 2, 64, 5, db=calibrated_db) == pytest.approx(
        plain
    )


def test_estimate_follows_arch_and_channels(calibrated_db: Path) -> None:
    """Another arch reads its own calibration; more channels need more memory."""
    mednext = estimate_gpu_memory_required((128, 128, 128), 2, db=calibrated_db)
    assert estimate_gpu_memory_required((128, 128, 128), 2, arch="basicunet", db=calibrated_db) != mednext
    assert (
        estimate_gpu_memory_required((128, 128, 128), 2, in_channels=4, out_channels=8, db=calibrated_db)
        > mednext
    )


@pytest.mark.parametrize("memory_gb", [8.0, 12.0, 24, 40.0, 80.0])
def test_suggest_batch_size_matches_the_planner(calibrated_db: Path, memory_gb: float) -> None:
    """The suggested batch is the planner's batch for memory * safety_margin, as an int >= 1."""
    batch = suggest_batch_size((128, 128, 128), 1, 2, memory_gb, db=calibrated_db)
    expected = plan_batch(FP16, get_arch("mednext"), (128, 128, 128), int(memory_gb * GB), safety=0.85).batch
    assert isinstance(batch, int) and batch == max(1, expected) and batch >= 1


def test_suggest_batch_size_is_at_least_one(calibrated_db: Path) -> None:
    """Even when batch 1 does not fit, the planner's contract of at least 1 holds."""
    assert suggest_batch_size((256, 256, 256), 1, 2, 4.0, db=calibrated_db) == 1


def test_suggest_batch_size_grows_with_memory(calibrated_db: Path) -> None:
    """More memory never suggests a smaller batch; a larger safety margin never a smaller one either."""
    batches = [suggest_batch_size((128, 128, 128), 1, 2, gb, db=calibrated_db) for gb in (8, 16, 24, 48, 80)]
    assert batches == sorted(batches) and batches[-1] > batches[0]
    assert suggest_batch_size(
        (128, 128, 128), 1, 2, 24, safety_margin=0.95, db=calibrated_db
    ) >= suggest_batch_size((128, 128, 128), 1, 2, 24, safety_margin=0.7, db=calibrated_db)


def test_missing_calibration_is_reported(calibrated_db: Path) -> None:
    """An uncalibrated combination raises NoCalibrationError rather than guessing."""
    with pytest.raises(NoCalibrationError):
        suggest_batch_size(
            (128, 128, 128), 1, 2, 24, mixed_precision=False, arch="basicunet", db=calibrated_db
        )
