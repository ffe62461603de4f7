"""The whole training plan the PyTorch Connectomics auto-planner gives, each value with its reason.

Memory-dependent values (patch, batch) come from calibrations; the rest follows the rules of
the planner we replace (workers, accumulation, learning rate), and manual overrides always win.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memprobe.api import estimate, max_batch_size, max_patch_size
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.config import Setup, default_precision
from memprobe.core.enums import Precision
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
    """The default precision for ``gpu``, with its reason (``default_precision``'s rule)."""
    precision, reason = default_precision(gpu)
    return PlanValue(precision.value, reason)


def make_plan(
    setup: str | Setup,
    gpu_mem: int,
    *,
    gpu: GpuInfo | None = None,
    patch: Sequence[int] | None = None,
    batch: int | None = None,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    effective_batch: int | None = None,
    safety: float = DEFAULT_SAFETY,
    num_gpus: int = 1,
    cpu_count: int | None = None,
    lr: float | None = None,
    db: str | Path | None = None,
    device: str | None = None,
    **overrides: Any,
) -> FullPlan:
    """Plan patch, batch, precision, accumulation, workers and learning rate; given values win.

    ``setup`` is an architecture name or a Setup; ``overrides`` are Setup's fields
    (``precision``, ``optimizer``, channels, ...). Without a precision, the default for ``gpu``
    (``default_precision``). With ``world_size`` above 1 (``strategy`` ddp or fsdp) the batch
    is one rank's, planned from a calibration of that layout; ``num_gpus`` (for workers)
    defaults to it.
    """
    from memprobe.integrations.nnunet.patch_plan import is_preset

    name = setup.arch if isinstance(setup, Setup) else setup
    given = overrides.get("precision") is not None or isinstance(setup, Setup)
    chosen = Setup.of(setup, gpu=gpu, **overrides)
    if isinstance(name, str) and is_preset(name):
        chosen = replace(chosen, arch=name)  # nnU-Net's presets plan over their topologies
    num_gpus = max(num_gpus, chosen.world_size)
    spec = resolve_arch(chosen.arch)
    values: dict[str, PlanValue] = {}
    values["precision"] = (
        PlanValue(chosen.precision.value, "manual override") if given else choose_precision(gpu)
    )
    sources: dict[str, Any] = dict(db=db, device=device)
    warnings: list[str] = []
    if patch is not None:
        values["patch_size"] = PlanValue(list(patch), "manual override")
    else:
        patch_plan = max_patch_size(
            chosen,
            batch or 2,
            gpu_mem,
            spacing=spacing,
            median_shape=median_shape,
            safety=safety,
            **sources,
        )
        values["patch_size"] = PlanValue(list(patch_plan.patch), "; ".join(patch_plan.reasons))
        warnings += patch_plan.warnings
    if batch is not None:
        values["batch_size"] = PlanValue(batch, "manual override")
        given_batch = estimate(chosen, values["patch_size"].value, batch, **sources)
        need, calibration = given_batch.need, given_batch.calibration
        warnings += [given_batch.warning] if given_batch.warning else []
        if need.total_bytes > gpu_mem * safety:
            warnings.append(
                f"batch {batch} is predicted to need {describe_need(need)}, over the usable "
                f"{format_bytes(gpu_mem * safety)}"
            )
    else:
        batch_plan = max_batch_size(
            chosen,
            values["patch_size"].value,
            gpu_mem,
            effective_batch=effective_batch,
            safety=safety,
            **sources,
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
