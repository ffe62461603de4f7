"""Tests of memprobe.integrations.pytc.compat: PyTorch Connectomics' planner functions answered from calibrations."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from memprobe.api import max_patch_size
from memprobe.core.archs.registry import get_arch
from memprobe.core.errors import InvalidInputError, NoCalibrationError
from memprobe.core.gpus import GpuInfo
from memprobe.formula.calibration import Calibration
from memprobe.integrations.pytc import gpu as pytc_gpu
from memprobe.integrations.pytc.compat import (
    AutoConfigPlanner,
    estimate_gpu_memory_required,
    get_gpu_info,
    print_gpu_info,
    suggest_batch_size,
)
from memprobe.planning.size_search import plan_batch
from memprobe.store.database import Database
from tests.helpers import make_calibration, write_calibrations

GB = 1024**3


FP16 = make_calibration(precision="fp16-mixed", per_voxel=24.0)
FP32 = make_calibration(precision="fp32")


@pytest.fixture
def calibrated_db(db_path: Path) -> Path:
    """MedNeXt calibrated at fp16-mixed and fp32, BasicUNet at fp16-mixed."""
    return write_calibrations(
        db_path, FP16, FP32, make_calibration("basicunet", "fp16-mixed", per_voxel=20.0)
    )


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


# --- The rest of the auto-planning API: get_gpu_info, AutoConfigPlanner, the seed's examples ---

GIB = 2**30
BUDGET_GB = 24.0


def _with_deep_supervision(calibration: Calibration) -> Calibration:
    return replace(calibration, deep_supervision=True)


@pytest.fixture
def planner_db(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MedNeXt and BasicUNet at every mixed precision, with and without deep supervision; the default db."""
    with Database.open(db_path) as db:
        for arch in ("mednext", "basicunet"):
            for precision in ("fp32", "fp16-mixed", "bf16-mixed"):
                plain = make_calibration(arch, precision, per_voxel=40.0 if precision == "fp32" else 24.0)
                db.add_calibration(plain)
                db.add_calibration(_with_deep_supervision(plain))
    monkeypatch.setenv("MEMPROBE_DB", str(db_path))  # the seed's examples pass no db
    return db_path


def _planner(**kwargs: Any) -> AutoConfigPlanner:
    kwargs.setdefault("gpu_memory_gb", BUDGET_GB)
    return AutoConfigPlanner(**kwargs)


def test_get_gpu_info_has_the_planner_keys_without_a_gpu() -> None:
    """Without a GPU: the planner's keys, no GPUs, empty lists; torch is not imported for it."""
    info = get_gpu_info()
    assert {"num_gpus", "gpu_names", "total_memory_gb", "available_memory_gb", "cuda_available"} <= set(info)
    assert info["num_gpus"] == 0 and info["cuda_available"] is False and info["total_memory_gb"] == []


def test_get_gpu_info_lists_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each GPU NVML reports becomes one entry of each list, in GB of 1024^3 bytes."""
    gpus = [GpuInfo("NVIDIA A100", 80 * GIB, (8, 0), 79 * GIB), GpuInfo("Tesla V100", 32 * GIB, (7, 0))]
    monkeypatch.setattr(pytc_gpu, "detect_gpus", lambda: gpus)
    info = get_gpu_info()
    assert info["num_gpus"] == 2 and info["cuda_available"] is True
    assert info["gpu_names"] == ["NVIDIA A100", "Tesla V100"]
    assert info["total_memory_gb"] == [80.0, 32.0] and info["available_memory_gb"] == [79.0, 32.0]


def test_print_gpu_info(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """print_gpu_info prints each GPU's name and memory."""
    monkeypatch.setattr(pytc_gpu, "detect_gpus", lambda: [GpuInfo("NVIDIA A100", 80 * GIB, (8, 0), 70 * GIB)])
    print_gpu_info()
    out = capsys.readouterr().out
    assert "Number of GPUs: 1" in out and "Name: NVIDIA A100" in out
    assert "Total Memory: 80.00 GB" in out and "Available Memory: 70.00 GB" in out


def test_get_gpu_info_does_not_import_torch() -> None:
    """get_gpu_info reads NVML: importing memprobe.integrations.pytc.compat and calling it never imports torch."""
    code = "import sys, memprobe.integrations.pytc.compat as c; c.get_gpu_info(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manual_batch_override_plans_the_patch_for_it(planner_db: Path) -> None:
    """manual_overrides={'batch_size': 2} returns batch 2 and the largest patch that fits at batch 2."""
    result = _planner(median_shape=[128, 256, 256], manual_overrides={"batch_size": 2}).plan()
    assert result.batch_size == 2 and result.reasons["batch_size"] == "manual override"
    expected = max_patch_size(
        "mednext", 2, int(BUDGET_GB * GIB), "bf16-mixed", safety=0.85, median_shape=(128, 256, 256),
        spacing=(1.0, 1.0, 1.0), db=planner_db,
    )  # fmt: skip
    assert result.patch_size == list(expected.patch)
    at_batch_4 = _planner(median_shape=[128, 256, 256], manual_overrides={"batch_size": 4}).plan()
    assert math.prod(at_batch_4.patch_size) < math.prod(result.patch_size)


def test_planned_batch_is_the_calibrated_largest(planner_db: Path) -> None:
    """Without overrides the batch is the largest the calibration fits for the planned patch."""
    result = _planner(median_shape=[96, 96, 96]).plan(deep_supervision=True)
    calibration = _with_deep_supervision(make_calibration(precision="bf16-mixed", per_voxel=24.0))
    expected = plan_batch(
        calibration, get_arch("mednext"), result.patch_size, int(BUDGET_GB * GIB), safety=0.85
    )
    assert result.batch_size == expected.batch > 1
    assert result.estimated_gpu_memory_gb == pytest.approx(expected.predicted_peak_bytes / GIB)
    assert result.precision == "bf16-mixed" and "deep supervision" in result.calibration_source


def test_every_manual_override_wins(planner_db: Path) -> None:
    """Overrides are returned as given; precision '32' plans with the fp32 calibration."""
    overrides = {"patch_size": [64, 64, 64], "precision": "32", "lr": 5e-4, "num_workers": 3}
    result = _planner(manual_overrides={**overrides, "accumulate_grad_batches": 8}).plan()
    assert result.patch_size == [64, 64, 64] and result.precision == "32"
    assert result.lr == 5e-4 and result.num_workers == 3 and result.accumulate_grad_batches == 8
    fp32 = plan_batch(FP32, get_arch("mednext"), (64, 64, 64), int(BUDGET_GB * GIB), safety=0.85)
    assert result.batch_size == fp32.batch


def test_subclass_plan_patch_size_changes_the_plan(planner_db: Path) -> None:
    """A subclass overriding _plan_patch_size gets its patch, and a batch planned for it."""

    class SmallPatchPlanner(AutoConfigPlanner):
        def _plan_patch_size(self) -> list[int]:
            return [max(32, size // 2 // 16 * 16) for size in super()._plan_patch_size()]

    plain = _planner(median_shape=[128, 256, 256]).plan()
    small = SmallPatchPlanner(median_shape=[128, 256, 256], gpu_memory_gb=BUDGET_GB).plan()
    assert small.patch_size == [max(32, size // 2 // 16 * 16) for size in plain.patch_size]
    assert small.batch_size > plain.batch_size
    assert small.reasons["patch_size"] == "SmallPatchPlanner._plan_patch_size"


def test_subclass_architecture_defaults_are_honoured(planner_db: Path) -> None:
    """An architecture added by _get_architecture_defaults plans with its network and learning rate."""

    class CustomPlanner(AutoConfigPlanner):
        def _get_architecture_defaults(self) -> dict[str, dict[str, Any]]:
            defaults = super()._get_architecture_defaults()
            defaults["my_custom_arch"] = {"base_features": 64, "lr": 5e-4, "arch": "basicunet"}
            defaults["no_network"] = {"base_features": 64, "lr": 5e-4}
            return defaults

    result = CustomPlanner("my_custom_arch", gpu_memory_gb=BUDGET_GB).plan()
    assert result.arch == "basicunet" and result.lr == 5e-4 and result.base_features == 64
    with pytest.raises(InvalidInputError, match="memprobe archs"):
        CustomPlanner("no_network", gpu_memory_gb=BUDGET_GB)


@pytest.mark.parametrize(
    ("pytc_name", "arch"),
    [("monai_basic_unet3d", "basicunet"), ("mednext", "mednext"), ("basicunet", "basicunet")],
)
def test_architecture_names_map_to_memprobe_networks(planner_db: Path, pytc_name: str, arch: str) -> None:
    """PyTorch Connectomics' names (and memprobe's own) plan for the matching network."""
    assert _planner(architecture=pytc_name).plan().arch == arch


def test_unknown_architecture_names_memprobe_archs() -> None:
    """An architecture memprobe has no network for is refused, naming `memprobe archs`."""
    with pytest.raises(InvalidInputError, match=r"unknown architecture 'rsunet'.*memprobe archs"):
        AutoConfigPlanner("rsunet")


def test_uncalibrated_architecture_names_calibrate(planner_db: Path) -> None:
    """A known network without a calibration raises NoCalibrationError naming `memprobe calibrate`."""
    with pytest.raises(NoCalibrationError, match="memprobe calibrate --arch unet"):
        _planner(architecture="monai_unet").plan()


def test_without_a_gpu_the_plan_is_for_24_gb_and_says_so(planner_db: Path) -> None:
    """No GPU and no gpu_memory_gb: planned for 24 GB, with a warning saying how to change it."""
    result = AutoConfigPlanner().plan()
    assert result.available_gpu_memory_gb == 24.0
    assert any("no GPU detected" in warning for warning in result.warnings)


def test_seed_example_direct_planner_usage(planner_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's "Direct Planner Usage" example, verbatim but for the import, gives memprobe's plan."""
    from memprobe.integrations.pytc.compat import AutoConfigPlanner

    planner = AutoConfigPlanner(
        architecture="mednext",
        target_spacing=[1.0, 1.0, 1.0],
        median_shape=[128, 256, 256],
        manual_overrides={"batch_size": 2},  # Force batch_size=2
    )

    result = planner.plan(
        in_channels=1,
        out_channels=2,
        deep_supervision=True,
        use_mixed_precision=True,
    )

    planner.print_plan(result)

    # Access results
    print(f"Patch size: {result.patch_size}")
    print(f"Batch size: {result.batch_size}")
    print(f"Learning rate: {result.lr}")
    print(f"Warnings: {result.warnings}")

    out = capsys.readouterr().out
    expected = max_patch_size(
        "mednext", 2, 24 * GIB, "bf16-mixed", safety=0.85, spacing=(1, 1, 1), median_shape=(128, 256, 256),
        deep_supervision=True,
    )  # fmt: skip
    assert f"Patch size: {list(expected.patch)}" in out
    assert "Batch size: 2\n" in out and "Learning rate: 0.001\n" in out and "Calibration: mednext" in out


def test_seed_example_gpu_utilities(planner_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's "GPU Utilities" example runs and gives the calibrated estimate and batch."""
    from memprobe.integrations.pytc.compat import (
        estimate_gpu_memory_required,
        get_gpu_info,
        suggest_batch_size,
    )

    # Query GPU
    gpu_info = get_gpu_info()
    print(f"GPUs: {gpu_info['num_gpus']}")
    print(f"Memory: {gpu_info['total_memory_gb']} GB")

    # Estimate memory
    memory_gb = estimate_gpu_memory_required(
        patch_size=(128, 128, 128),
        batch_size=4,
        in_channels=1,
        out_channels=2,
        deep_supervision=True,
        mixed_precision=True,
    )
    print(f"Estimated: {memory_gb:.2f} GB")

    # Suggest batch size
    batch_size = suggest_batch_size(
        patch_size=(128, 128, 128),
        in_channels=1,
        out_channels=2,
        available_gpu_memory_gb=24.0,
        deep_supervision=True,
    )
    print(f"Suggested batch_size: {batch_size}")

    fp16 = _with_deep_supervision(FP16)
    mednext = get_arch("mednext")
    expected_batch = plan_batch(fp16, mednext, (128, 128, 128), 24 * GIB, safety=0.85).batch
    out = capsys.readouterr().out
    assert "GPUs: 0\n" in out
    assert f"Estimated: {fp16.predict_peak_bytes(mednext, (128, 128, 128), 4) / GIB:.2f} GB" in out
    assert f"Suggested batch_size: {expected_batch}\n" in out


def test_seed_example_programmatic_planning(planner_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's "Programmatic Planning" example fills the OmegaConf config from the calibration."""
    pytest.importorskip("omegaconf")
    from omegaconf import OmegaConf

    from memprobe.integrations.pytc.compat import Config, auto_plan_config

    # Load config
    cfg = OmegaConf.structured(Config())
    cfg.system.auto_plan = True
    cfg.model.architecture = "mednext"
    cfg.model.deep_supervision = True
    cfg.data.target_spacing = [1.0, 1.0, 1.0]
    cfg.data.median_shape = [128, 256, 256]

    # Auto-plan
    cfg = auto_plan_config(cfg, print_results=True)

    # Access planned values
    print(f"Planned batch_size: {cfg.data.batch_size}")
    print(f"Planned patch_size: {cfg.data.patch_size}")
    print(f"Planned precision: {cfg.training.precision}")

    expected = _planner(median_shape=[128, 256, 256]).plan(deep_supervision=True)
    out = capsys.readouterr().out
    assert f"Planned batch_size: {expected.batch_size}\n" in out
    assert f"Planned patch_size: {expected.patch_size}\n" in out and "Planned precision: bf16-mixed" in out
    assert (
        cfg.optimization.lr == 1e-3
        and cfg.training.accumulate_grad_batches == expected.accumulate_grad_batches
    )


def test_seed_example_custom_planning(planner_db: Path) -> None:
    """The seed's "Advanced: Custom Planning" subclass runs unchanged and plans like the base class."""
    from memprobe.integrations.pytc.compat import AutoConfigPlanner

    class CustomPlanner(AutoConfigPlanner):
        def _plan_patch_size(self):  # type: ignore[no-untyped-def]
            """Override patch size planning logic."""
            # Custom logic here
            patch_size = super()._plan_patch_size()
            # Modify patch_size
            return patch_size

        def _get_architecture_defaults(self):  # type: ignore[no-untyped-def]
            """Add custom architecture defaults."""
            defaults = super()._get_architecture_defaults()
            defaults["my_custom_arch"] = {
                "base_features": 64,
                "lr": 5e-4,
            }
            return defaults

    custom = CustomPlanner(median_shape=[128, 256, 256], gpu_memory_gb=BUDGET_GB).plan()
    plain = _planner(median_shape=[128, 256, 256]).plan()
    assert (custom.patch_size, custom.batch_size, custom.lr) == (plain.patch_size, plain.batch_size, 1e-3)
    assert custom.reasons["patch_size"] == plain.reasons["patch_size"]
    with pytest.raises(InvalidInputError, match=r"no network memprobe can measure.*memprobe archs"):
        CustomPlanner("my_custom_arch")


def test_the_old_module_path_still_works_and_says_its_new_one() -> None:
    import importlib
    import sys

    sys.modules.pop("memprobe.compat", None)
    with pytest.warns(DeprecationWarning, match="memprobe.integrations.pytc.compat"):
        old = importlib.import_module("memprobe.compat")
    from memprobe.integrations.pytc import compat

    assert old.suggest_batch_size is compat.suggest_batch_size
    assert old.estimate_gpu_memory_required is compat.estimate_gpu_memory_required
