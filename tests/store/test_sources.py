"""Tests of memprobe.store.calibration_sources: the user's calibrations first, then the shipped ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import memprobe
from memprobe.core.config import Setup
from memprobe.core.errors import NoCalibrationError
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.store.calibration_sources import (
    all_calibrations,
    choose_calibration,
    shipped_calibrations,
    user_calibrations,
)
from tests.helpers import write_calibrations

GPU_NAME = "NVIDIA H100 80GB HBM3"


def make_calibration(
    arch: str = "mednext",
    device: str = "trace",
    precision: str = "fp32",
    deep_supervision: bool = False,
    per_voxel: float = 40.0,
    source: str = "user",
) -> Calibration:
    """A calibration whose feature-map coefficient tells it apart from others of the same key."""
    return Calibration(
        arch=arch,
        device=device,
        precision=precision,
        optimizer="adamw",
        deep_supervision=deep_supervision,
        phase_coefficients={"forward": {"constant": 1e8, "parameters": 16.0, "feature_maps": per_voxel}},
        parameter_model={"constant": 5.6e6, "in_channels": 100.0, "out_channels": 100.0, "tokens": 0.0},
        quality=FitQuality(10, 0.01, 0.02),
        created_at="2026-01-01T00:00:00+00:00",
        source=source,
    )


SHIPPED = [
    make_calibration(per_voxel=10.0, source="shipped"),
    make_calibration(arch="basicunet", per_voxel=11.0, source="shipped"),
    make_calibration(precision="bf16-mixed", per_voxel=12.0, source="shipped"),
]


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> list[Calibration]:
    """Replace the calibrations memprobe ships with three known ones."""
    monkeypatch.setattr("memprobe.store.calibration_sources.shipped_calibrations", lambda: list(SHIPPED))
    return SHIPPED


def test_user_calibration_takes_precedence_over_shipped(shipped: list[Calibration], db_path: Path) -> None:
    """For the same key the user's calibration is used; shipped ones fill the other keys."""
    write_calibrations(db_path, make_calibration(per_voxel=99.0))
    calibrations = all_calibrations(db_path)
    by_key = {c.key: c for c in calibrations}
    assert len(calibrations) == len(by_key) == 3
    mine = by_key[("mednext", "trace", "fp32", "adamw", False, "memprobe", False, "single", 1)]
    assert mine.phase_coefficients["forward"]["feature_maps"] == 99.0 and mine.source == str(db_path)
    assert (
        by_key[("basicunet", "trace", "fp32", "adamw", False, "memprobe", False, "single", 1)].source
        == "shipped"
    )
    assert calibrations[0] is mine  # user calibrations come first


def test_precedence_reaches_estimates(shipped: list[Calibration], db_path: Path) -> None:
    """Estimates use the user's calibration where one exists and the shipped one elsewhere."""
    write_calibrations(db_path, make_calibration(per_voxel=99.0))
    assert memprobe.estimate("mednext", (64, 64, 64), 1, "fp32", db=db_path).calibration.source == str(
        db_path
    )
    assert memprobe.estimate("basicunet", (64, 64, 64), 1, "fp32", db=db_path).calibration.source == "shipped"


def test_shipped_only_when_the_user_has_no_database(shipped: list[Calibration]) -> None:
    """Without a default database file, the shipped calibrations answer on their own."""
    result = memprobe.estimate("mednext", (64, 64, 64), 1, precision="bf16-mixed")
    assert result.calibration.source == "shipped"
    assert result.calibration.phase_coefficients["forward"]["feature_maps"] == 12.0


def test_newest_user_calibration_wins(db_path: Path) -> None:
    """Calibrating again replaces the previous calibration of the same key."""
    write_calibrations(db_path, make_calibration(per_voxel=1.0), make_calibration(per_voxel=2.0))
    (calibration,) = user_calibrations(db_path)
    assert calibration.phase_coefficients["forward"]["feature_maps"] == 2.0


def test_user_calibrations_of_missing_databases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that does not exist yet holds none, named by $MEMPROBE_DB or by argument alike."""
    monkeypatch.setenv("MEMPROBE_DB", str(tmp_path / "absent.sqlite"))
    assert user_calibrations() == []
    assert user_calibrations(tmp_path / "named.sqlite") == []
    assert not (tmp_path / "absent.sqlite").exists() and not (tmp_path / "named.sqlite").exists()


def test_shipped_calibrations_are_marked_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the package ships is read without error and marked as shipped."""
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED")
    calibrations = shipped_calibrations()
    assert all(c.source == "shipped" for c in calibrations)
    assert len({c.key for c in calibrations}) == len(calibrations)


def test_shipped_calibrations_cover_every_architecture_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh install can plan every registered network at every precision, within the fit targets."""
    from memprobe.core.archs.registry import ARCHS

    monkeypatch.delenv("MEMPROBE_NO_SHIPPED")
    by_key = {c.key: c for c in shipped_calibrations()}
    for arch in ARCHS:
        for precision in ("fp32", "bf16-mixed", "fp16-mixed"):
            quality = by_key[
                (arch, "trace", precision, "adamw", False, "memprobe", False, "single", 1)
            ].quality
            assert quality.heldout_points == 4
            assert (quality.heldout_median_relative_error or 1) <= 0.03
            assert (quality.heldout_max_relative_error or 1) <= 0.05


def test_choose_exact_device() -> None:
    """The calibration of the asked-for device is chosen, without a warning."""
    calibrations = [make_calibration(), make_calibration(device=GPU_NAME, per_voxel=50.0)]
    choice = choose_calibration(
        calibrations,
        Setup.of("mednext", precision="fp32"),
        GPU_NAME,
    )
    assert choice.calibration.device == GPU_NAME and choice.warning is None
    assert (
        choose_calibration(
            calibrations,
            Setup.of("mednext", precision="fp32"),
            None,
        ).calibration.device
        == "trace"
    )


def test_choose_falls_back_to_trace_with_a_warning() -> None:
    """A GPU without its own calibration gets the trace one and a warning saying what to run."""
    choice = choose_calibration(
        [make_calibration()],
        Setup.of("mednext", precision="fp32"),
        GPU_NAME,
    )
    assert choice.calibration.device == "trace"
    assert (
        choice.warning
        and GPU_NAME in choice.warning
        and "memprobe calibrate --arch mednext" in choice.warning
    )


def test_choose_never_substitutes_another_key() -> None:
    """No other precision, optimizer, architecture or deep-supervision setting stands in."""
    others = [
        make_calibration(precision="bf16-mixed"),
        make_calibration(arch="mednext-b"),
        replace(make_calibration(), optimizer="sgd"),
        make_calibration(deep_supervision=True),
    ]
    with pytest.raises(NoCalibrationError) as caught:
        choose_calibration(
            others,
            Setup.of("mednext", precision="fp32"),
            "trace",
        )
    assert "--device trace" in str(caught.value)
    with pytest.raises(NoCalibrationError) as caught:
        choose_calibration(
            others,
            Setup.of("mednext", precision="fp32", deep_supervision=True),
            GPU_NAME,
            fallback_device=None,
        )
    assert "--deep-supervision --device cuda" in str(caught.value)


def test_no_fallback_when_none_allowed() -> None:
    """With no fallback device, a GPU without its own calibration is an error."""
    with pytest.raises(NoCalibrationError):
        choose_calibration(
            [make_calibration()],
            Setup.of("mednext", precision="fp32"),
            GPU_NAME,
            fallback_device=None,
        )


def test_a_plan_for_ddp_x4_never_uses_a_single_gpu_calibration_nor_the_reverse() -> None:
    single = make_calibration()
    ddp4 = replace(make_calibration(per_voxel=50.0), strategy="ddp", world_size=4)
    with pytest.raises(NoCalibrationError) as missing:
        choose_calibration(
            [single],
            Setup.of("mednext", precision="fp32", strategy="ddp", world_size=4),
            "trace",
        )
    assert "--gpus 4 --strategy ddp --device trace" in str(missing.value)
    assert "calibrated for one GPU" in str(missing.value)
    with pytest.raises(NoCalibrationError) as missing:
        choose_calibration(
            [ddp4],
            Setup.of("mednext", precision="fp32"),
            "trace",
        )
    assert "ddp x4: --gpus 4 --strategy ddp" in str(missing.value)
    chosen = choose_calibration(
        [single, ddp4],
        Setup.of("mednext", precision="fp32", strategy="ddp", world_size=4),
        "trace",
    )
    assert chosen.calibration is ddp4
    assert (
        choose_calibration([single, ddp4], Setup.of("mednext", precision="fp32"), "trace").calibration
        is single
    )
