"""What PyTorch Connectomics' planner returns (``AutoPlanResult``), with memprobe's reasons, and its printout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memprobe.formula.calibration import Calibration


@dataclass(frozen=True)
class AutoPlanResult:
    """The planner's result fields, plus memprobe's reasons and the calibration that answered."""

    patch_size: list[int]
    batch_size: int
    num_workers: int
    base_features: int
    max_features: int
    precision: str  # Lightning's name: "32", "16-mixed" or "bf16-mixed"
    accumulate_grad_batches: int
    lr: float
    gpu_memory_per_sample_gb: float
    estimated_gpu_memory_gb: float
    available_gpu_memory_gb: float
    auto_planned: bool = True
    planning_notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    arch: str = ""  # the memprobe network planned for
    reasons: dict[str, str] = field(default_factory=dict)  # why each value is what it is
    calibration_source: str = ""
    predicted_peak_bytes: float = 0.0
    budget_bytes: int = 0
    # The data-parallel layout planned for: batch_size is one rank's (per device, as Lightning takes it).
    strategy: str = "single"
    world_size: int = 1
    ddp_buckets: dict[str, Any] | None = None  # DDP's bucket settings the calibration rests on

    @property
    def global_batch_size(self) -> int:
        """The batch of one optimizer step over every rank (before accumulation)."""
        return self.batch_size * self.world_size

    def __repr__(self) -> str:
        return (
            f"AutoPlanResult(arch={self.arch!r}, patch_size={self.patch_size}, batch_size={self.batch_size}, "
            f"precision={self.precision!r}, accumulate_grad_batches={self.accumulate_grad_batches}, "
            f"lr={self.lr:g}, estimated_gpu_memory_gb={self.estimated_gpu_memory_gb:.2f})"
        )


def describe_calibration(calibration: Calibration) -> str:
    """Which calibration answered, and where it is kept."""
    where = "shipped with memprobe" if calibration.source == "shipped" else f"from {calibration.source}"
    modes = f"{calibration.precision}, {calibration.optimizer}"
    modes += ", deep supervision" if calibration.deep_supervision else ""
    return f"{calibration.arch} on {calibration.device} ({modes}), {where}"


def _batch_text(result: AutoPlanResult) -> str:
    if result.strategy == "single":
        return str(result.batch_size)
    layout = f"{result.strategy} x{result.world_size}"
    return f"{result.batch_size} per GPU ({layout}: global batch {result.global_batch_size})"


def format_plan(result: AutoPlanResult) -> str:
    """The text ``print_plan`` prints."""
    rule = "=" * 70
    lines = [rule, "Automatic Configuration Planning Results (memprobe)", rule, "", "Data Configuration:"]
    lines += [f"  Patch Size: {result.patch_size}", f"  Batch Size: {_batch_text(result)}"]
    if result.accumulate_grad_batches > 1:
        effective = result.global_batch_size * result.accumulate_grad_batches
        lines.append(
            f"  Gradient Accumulation: {result.accumulate_grad_batches} (effective batch_size={effective})"
        )
    lines += [f"  Num Workers: {result.num_workers}", "", "Model Configuration:"]
    lines += [f"  Base Features: {result.base_features}", f"  Max Features: {result.max_features}", ""]
    lines += [
        "Training Configuration:",
        f"  Precision: {result.precision}",
        f"  Learning Rate: {result.lr}",
        "",
    ]
    usage = result.estimated_gpu_memory_gb / result.available_gpu_memory_gb
    lines += [
        "GPU Memory:",
        f"  Available: {result.available_gpu_memory_gb:.2f} GB",
        f"  Estimated Usage: {result.estimated_gpu_memory_gb:.2f} GB ({usage:.1%})",
        f"  Per Sample: {result.gpu_memory_per_sample_gb:.2f} GB",
        "",
    ]
    if result.warnings:
        lines += ["Warnings:", *(f"  - {warning}" for warning in result.warnings), ""]
    lines += ["Reasons:", *(f"  {name}: {why}" for name, why in result.reasons.items()), ""]
    lines += ["Planning Notes:", *(f"  - {note}" for note in result.planning_notes), "", rule]
    return "\n".join(lines)
