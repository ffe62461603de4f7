"""Tests of memprobe.training_plan: the whole training plan, each value with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memprobe.core.archs.registry import get_arch
from memprobe.core.errors import InvalidInputError
from memprobe.core.gpus import GpuInfo
from memprobe.training_plan import choose_precision, make_plan
from tests.helpers import make_calibration, write_calibrations

GIB = 2**30
VALUES = (
    "precision",
    "patch_size",
    "batch_size",
    "accumulate_grad_batches",
    "num_workers",
    "lr",
    "scheduler",
)
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", 80 * GIB, (8, 0))
V100 = GpuInfo("Tesla V100-SXM2-32GB", 32 * GIB, (7, 0))


@pytest.fixture
def calibrated_db(db_path: Path) -> Path:
    """MedNeXt and DynUNet calibrated on trace at every precision."""
    return write_calibrations(
        db_path,
        *(
            make_calibration(arch, precision, per_voxel=40.0 if precision == "fp32" else 24.0)
            for arch in ("mednext", "dynunet")
            for precision in ("fp32", "fp16-mixed", "bf16-mixed")
        ),
    )


def _assert_complete(plan: object) -> None:
    for name in VALUES:
        assert name in plan.values and plan.values[name].reason, name  # type: ignore[attr-defined]


def test_plan_without_overrides_is_complete(calibrated_db: Path) -> None:
    """Every value is filled with a reason; patch and batch fit the budget."""
    plan = make_plan(
        "mednext", 24 * GIB, spacing=(1, 1, 1), median_shape=(128, 256, 256), cpu_count=16, db=calibrated_db
    )
    _assert_complete(plan)
    assert plan.value("precision") == "bf16-mixed"  # no GPU detected: bf16
    assert all(size % 16 == 0 for size in plan.value("patch_size"))
    assert plan.value("batch_size") >= 1 and plan.need.total_bytes <= 24 * GIB
    assert plan.value("num_workers") == 4 and plan.value("lr") == get_arch("mednext").default_lr
    assert plan.value("scheduler") == get_arch("mednext").scheduler
    assert plan.budget_bytes == 24 * GIB and plan.arch == "mednext" and not plan.warnings


def test_manual_overrides_win(calibrated_db: Path) -> None:
    """Values given by the user are kept, marked as manual overrides."""
    plan = make_plan(
        "mednext", 24 * GIB, precision="fp32", patch=(64, 160, 160), batch=3, lr=0.02, db=calibrated_db
    )
    _assert_complete(plan)
    for name, value in (
        ("precision", "fp32"),
        ("patch_size", [64, 160, 160]),
        ("batch_size", 3),
        ("lr", 0.02),
    ):
        assert plan.value(name) == value and plan.values[name].reason == "manual override"
    calibration = make_calibration(precision="fp32")
    assert plan.predicted_peak_bytes == pytest.approx(
        calibration.predict_peak_bytes(get_arch("mednext"), (64, 160, 160), 3)
    )


def test_precision_override_in_any_case(calibrated_db: Path) -> None:
    """A precision typed in capitals is normalised and its exports still work."""
    plan = make_plan("mednext", 24 * GIB, precision="BF16-Mixed", patch=(128, 128, 128), db=calibrated_db)
    assert plan.value("precision") == "bf16-mixed"
    assert plan.exports()["pytorch_connectomics"]["training.precision"] == "bf16-mixed"


def test_unknown_precision_override(calibrated_db: Path) -> None:
    """An unknown precision override is an input error listing the choices."""
    with pytest.raises(InvalidInputError, match="fp32, fp16-mixed, bf16-mixed"):
        make_plan("mednext", 24 * GIB, precision="fp8", db=calibrated_db)


def test_oversized_batch_override_warns(calibrated_db: Path) -> None:
    """A manual batch over the budget is kept but warned about."""
    plan = make_plan("mednext", 24 * GIB, precision="fp32", patch=(128, 128, 128), batch=20, db=calibrated_db)
    assert plan.value("batch_size") == 20
    assert any("batch 20 is predicted to need" in warning for warning in plan.warnings)


@pytest.mark.parametrize(
    ("gpu", "precision"), [(A100, "bf16-mixed"), (V100, "fp16-mixed"), (None, "bf16-mixed")]
)
def test_precision_follows_the_gpu(gpu: GpuInfo | None, precision: str, calibrated_db: Path) -> None:
    """bf16 on Ampere and later (and without a GPU), fp16 autocast before, each with its reason."""
    assert choose_precision(gpu).value == precision
    plan = make_plan("mednext", 32 * GIB, gpu=gpu, patch=(128, 128, 128), db=calibrated_db)
    assert plan.value("precision") == precision
    assert (gpu.name if gpu else "no GPU") in plan.values["precision"].reason


@pytest.mark.parametrize(
    ("effective", "batch", "accumulation"), [(None, 1, 4), (None, 2, 1), (8, 3, 3), (8, 2, 4)]
)
def test_accumulation_rules(
    calibrated_db: Path, effective: int | None, batch: int, accumulation: int
) -> None:
    """Accumulate to the effective batch; else 4 steps at batch 1 and none above it."""
    plan = make_plan(
        "mednext",
        24 * GIB,
        precision="fp32",
        patch=(128, 128, 128),
        batch=batch,
        effective_batch=effective,
        db=calibrated_db,
    )
    assert plan.value("accumulate_grad_batches") == accumulation
    assert plan.values["accumulate_grad_batches"].reason


def test_workers_are_capped_by_cpus(calibrated_db: Path) -> None:
    """Four workers per GPU, never more than the CPUs."""
    common: dict[str, Any] = dict(precision="fp32", patch=(128, 128, 128), db=calibrated_db)
    assert make_plan("mednext", 24 * GIB, num_gpus=2, cpu_count=32, **common).value("num_workers") == 8
    assert make_plan("mednext", 24 * GIB, num_gpus=2, cpu_count=6, **common).value("num_workers") == 6


def test_arch_defaults(calibrated_db: Path) -> None:
    """Learning rate and scheduler come from the architecture when not overridden."""
    plan = make_plan("dynunet", 24 * GIB, precision="fp32", patch=(128, 128, 128), db=calibrated_db)
    assert plan.value("lr") == 1e-2 and "polynomial" in plan.value("scheduler")


def test_exports_carry_the_plan(calibrated_db: Path) -> None:
    """The exported fragments repeat the planned patch, batch, precision and accumulation."""
    plan = make_plan("mednext", 24 * GIB, precision="fp16-mixed", patch=(96, 96, 96), db=calibrated_db)
    exports = plan.exports()
    assert exports["pytorch_connectomics"] == {
        "data.batch_size": plan.value("batch_size"),
        "data.patch_size": [96, 96, 96],
        "training.precision": "16-mixed",
        "training.accumulate_grad_batches": plan.value("accumulate_grad_batches"),
    }
    assert exports["nnunet_plans"] == {"batch_size": plan.value("batch_size"), "patch_size": [96, 96, 96]}
