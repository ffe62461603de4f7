"""The whole training plan the PyTorch Connectomics auto-planner gives, each value with its reason.

Memory-dependent values (patch, batch) come from calibrations; the rest follows the rules of
the planner we replace (workers, accumulation, learning rate), and manual overrides always win.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprobe.api import estimate, max_batch_size, max_patch_size
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.enums import Precision, parse_enum
from memprobe.core.gpus import GpuInfo
from memprobe.core.units import format_bytes
from memprobe.formula.calibration import Calibration
from memprobe.planning.exports import (
    batch_exports,
    data_parallel_note,
    ddp_buckets,
    ddp_buckets_note,
    pytc_config,
)
from memprobe.planning.need import MemoryNeed
from memprobe.planning.size_search import DEFAULT_SAFETY, describe_need, largest_batch_rule


@dataclass(frozen=True)
class PlanValue:
    value: Any
    reason: str


@dataclass(frozen=True)
class FullPlan:
    arch: str
    values: dict[str, PlanValue]
    need: MemoryNeed
    calibration: Calibration
    budget_bytes: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def predicted_peak_bytes(self) -> float:
        """Predicted peak allocated bytes (tensors only) of the planned step."""
        return self.need.allocated_bytes

    def value(self, name: str) -> Any:
        return self.values[name].value

    def data_parallel_notes(self) -> tuple[str, ...]:
        """On several GPUs: the per-rank and global batch, in nnU-Net's and Lightning's terms;
        under DDP also the bucket settings the calibration rests on."""
        c = self.calibration
        if c.strategy == "single":
            return ()
        buckets = ddp_buckets(c)
        return (
            data_parallel_note(self.value("batch_size"), c.strategy, c.world_size),
            *((ddp_buckets_note(buckets),) if buckets else ()),
        )

    def exports(self) -> dict[str, Any]:
        patch, batch = self.value("patch_size"), self.value("batch_size")
        buckets = ddp_buckets(self.calibration)
        return {
            "pytorch_connectomics": pytc_config(
                patch,
                batch,
                Precision(self.value("precision")).lightning_name,
                self.value("accumulate_grad_batches"),
            ),
            **batch_exports(patch, batch, self.calibration.strategy, self.calibration.world_size),
            **({"ddp_buckets": buckets} if buckets else {}),
        }


def choose_precision(gpu: GpuInfo | None) -> PlanValue:
    """bf16 where the GPU has bf16 tensor cores (compute capability 8.0+), else fp16 autocast."""
    if gpu is None:
        return PlanValue("bf16-mixed", "no GPU detected: bf16-mixed, supported by every GPU since Ampere")
    if gpu.supports_bf16:
        return PlanValue(
            "bf16-mixed", f"{gpu.name} supports bf16 (compute capability {gpu.compute_capability})"
        )
    return PlanValue("fp16-mixed", f"{gpu.name} lacks bf16 tensor cores: fp16 autocast with loss scaling")


def precision_with_reason(given: str | None, gpu: GpuInfo | None) -> tuple[str, str]:
    """The precision to use and where it came from: given, else :func:`choose_precision`.

    ``calibrate``, ``suggest``, ``plan`` and ``report`` share this rule, so that a calibration
    made with the defaults is the one the plans read.
    """
    from memprobe.core.enums import Precision, parse_enum

    if given is not None:
        value = parse_enum(Precision, given, "precision").value
        return value, f"precision {value} (given)"
    chosen = choose_precision(gpu)
    return chosen.value, f"precision {chosen.value} (the default; {chosen.reason})"


def make_plan(
    arch: str,
    gpu_mem: int,
    *,
    gpu: GpuInfo | None = None,
    precision: str | None = None,
    patch: Sequence[int] | None = None,
    batch: int | None = None,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    effective_batch: int | None = None,
    safety: float = DEFAULT_SAFETY,
    num_gpus: int = 1,
    cpu_count: int | None = None,
    lr: float | None = None,
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    db: str | Path | None = None,
    device: str | None = None,
    step: str = "memprobe",
    checkpointing: bool = False,
    optimizer: str = "adamw",
    strategy: str | None = None,
    world_size: int = 1,
) -> FullPlan:
    """Plan patch, batch, precision, accumulation, workers and learning rate; given values win.

    With ``world_size`` above 1 (``strategy`` ddp or fsdp) the batch is one rank's, planned from
    a calibration of that layout; ``num_gpus`` (for workers) defaults to it.
    """
    num_gpus = max(num_gpus, world_size)
    spec = resolve_arch(arch)
    values: dict[str, PlanValue] = {}
    # Normalised here, as every other entry point does: "BF16-Mixed" must not fail later in exports().
    values["precision"] = (
        PlanValue(parse_enum(Precision, precision, "precision").value, "manual override")
        if precision
        else choose_precision(gpu)
    )
    common: dict[str, Any] = dict(
        optimizer=optimizer,
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        db=db,
        device=device,
        step=step,
        checkpointing=checkpointing,
        strategy=strategy,
        world_size=world_size,
    )
    warnings: list[str] = []
    if patch is not None:
        values["patch_size"] = PlanValue(list(patch), "manual override")
    else:
        patch_plan = max_patch_size(
            arch,
            batch or 2,
            gpu_mem,
            values["precision"].value,
            spacing=spacing,
            median_shape=median_shape,
            safety=safety,
            **common,
        )
        values["patch_size"] = PlanValue(list(patch_plan.patch), "; ".join(patch_plan.reasons))
        warnings += patch_plan.warnings
    if batch is not None:
        values["batch_size"] = PlanValue(batch, "manual override")
        given = estimate(arch, values["patch_size"].value, batch, values["precision"].value, **common)
        need, calibration = given.need, given.calibration
        warnings += [given.warning] if given.warning else []
        if need.total_bytes > gpu_mem * safety:
            warnings.append(
                f"batch {batch} is predicted to need {describe_need(need)}, over the usable "
                f"{format_bytes(gpu_mem * safety)}"
            )
    else:
        batch_plan = max_batch_size(
            arch,
            values["patch_size"].value,
            gpu_mem,
            values["precision"].value,
            effective_batch=effective_batch,
            safety=safety,
            **common,
        )
        warnings += batch_plan.warnings
        need, calibration = batch_plan.need, batch_plan.calibration
        values["batch_size"] = PlanValue(
            batch_plan.batch,
            f"the {largest_batch_rule(gpu_mem, safety)}: {describe_need(need)}",
        )
    chosen_batch = max(1, values["batch_size"].value)
    if effective_batch:
        accumulation = PlanValue(
            -(-effective_batch // chosen_batch), f"reach effective batch {effective_batch}"
        )
    elif chosen_batch == 1:
        accumulation = PlanValue(4, "batch 1: accumulate 4 steps for steadier gradients (the planner's rule)")
    else:
        accumulation = PlanValue(1, "batch above 1: no accumulation needed")
    values["accumulate_grad_batches"] = accumulation
    cpus = cpu_count or os.cpu_count() or 1
    values["num_workers"] = PlanValue(
        min(4 * num_gpus, cpus),
        f"4 workers per GPU, capped at the training machine's {cpus} CPUs"
        if cpu_count
        else f"placeholder: 4 workers per GPU, capped at this machine's {cpus} CPUs (the training machine's are unknown)",
    )
    values["lr"] = (
        PlanValue(lr, "manual override")
        if lr is not None
        else PlanValue(spec.default_lr, f"{spec.name} default")
    )
    values["scheduler"] = PlanValue(spec.scheduler, f"{spec.name} default")
    return FullPlan(spec.name, values, need, calibration, gpu_mem, tuple(dict.fromkeys(warnings)))
