"""PyTorch Connectomics' ``AutoConfigPlanner``, answered from calibrations instead of its analytic guess.

Names, arguments and result fields follow ``connectomics.config.auto_config``; the values come
from memprobe's ``make_plan``, manual overrides win, and the hooks the planner documents for
subclassing (``_plan_patch_size``, ``_get_architecture_defaults``) are honoured.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from memprobe.api import estimate, max_patch_size
from memprobe.core.archs.registry import ArchSpec, get_arch, resolve_arch
from memprobe.core.checks import (
    check_db,
    check_fraction,
    check_gigabytes,
    check_optional_count,
    check_text,
)
from memprobe.core.config import data_parallel
from memprobe.core.enums import Precision
from memprobe.core.errors import InvalidInputError
from memprobe.core.gpus import detect_gpus
from memprobe.core.input_files import shown
from memprobe.integrations.pytc.gpu import gpu_info_dict
from memprobe.integrations.pytc.result import AutoPlanResult, describe_calibration, format_plan
from memprobe.integrations.pytc.values import check_value, precision_from_lightning
from memprobe.planning.exports import data_parallel_note, ddp_buckets, ddp_buckets_note
from memprobe.training_plan import PlanValue, choose_precision, make_plan

_GB = 1024**3
DEFAULT_ARCHITECTURE = "mednext"  # the planner's default network
DEFAULT_SAFETY_MARGIN = 0.85  # the planner's "85% of GPU memory"
NO_GPU_BUDGET_GB = 24.0  # a common card, as `memprobe calibrate` assumes without a GPU

# PyTorch Connectomics architecture names and the registered memprobe network each one builds.
PYTC_ARCHITECTURES = {
    "monai_basic_unet3d": "basicunet",
    "monai_unet": "unet",
    "monai_unetr": "unetr",
    "monai_swin_unetr": "swinunetr",
    "monai_segresnet": "segresnet",
    "monai_dynunet": "dynunet",
}
MEDNEXT_SIZES = {"S": "mednext", "B": "mednext-b", "M": "mednext-m", "L": "mednext-l"}
# What memprobe adds to the planner's result: measured facts, never overridden.
_MEMPROBE_FIELDS = {
    "arch",
    "reasons",
    "calibration_source",
    "predicted_peak_bytes",
    "budget_bytes",
    "warnings",
    "strategy",
    "world_size",
    "ddp_buckets",
}
# The values planning decides; every other override names a result field and is copied to it.
_PLANNED = ("batch_size", "patch_size", "precision", "accumulate_grad_batches", "num_workers", "lr")
OVERRIDABLE = (
    *_PLANNED,
    *(f.name for f in fields(AutoPlanResult) if f.name not in {*_PLANNED, *_MEMPROBE_FIELDS}),
)


@dataclass(frozen=True)
class _StepContext:
    in_channels: int = 1
    out_channels: int = 2
    deep_supervision: bool = False
    precision: str = "bf16-mixed"


def _checked_overrides(overrides: object) -> dict[str, Any]:
    """The manual overrides, each checked; a key the planner has no value for is refused."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise InvalidInputError(
            f"manual_overrides must be a mapping of names to values (a dict), got {type(overrides).__name__}"
        )
    unknown = [key for key in overrides if key not in OVERRIDABLE]
    if unknown:
        raise InvalidInputError(
            f"manual override {shown(repr(unknown[0]))} is not a value the planner sets: use "
            f"{', '.join(OVERRIDABLE[:6])}, or another field of AutoPlanResult"
        )
    return {
        key: check_value(key, value, f"manual override {key}")
        for key, value in overrides.items()
        if value is not None
    }


def data_parallel_notes(result: AutoPlanResult) -> list[str]:
    """On several GPUs: the layout, the per-rank and global batch, and DDP's bucket settings."""
    if result.strategy == "single":
        return []
    notes = [data_parallel_note(result.batch_size, result.strategy, result.world_size)]
    return notes + ([ddp_buckets_note(result.ddp_buckets)] if result.ddp_buckets else [])


def _defaults_for(spec: ArchSpec) -> dict[str, Any]:
    return {
        "arch": spec.name,
        "base_features": spec.stage_features[0] if spec.stage_features else 0,
        "max_features": max(spec.stage_features, default=0),
        "lr": spec.default_lr,
        "use_scheduler": not spec.scheduler.startswith("constant"),
        "scheduler": spec.scheduler,
    }


class AutoConfigPlanner:
    """Plan patch, batch, precision, accumulation, workers and learning rate for one network.

    Args:
        architecture: a PyTorch Connectomics name (``mednext``, ``monai_basic_unet3d``,
            ``monai_unet``, ...) or a memprobe one (`memprobe archs`).
        target_spacing: voxel spacing in mm (z, y, x); anisotropic data gets fewer slices.
        median_shape: median image shape; the patch never exceeds it. None: memory alone limits it.
        manual_overrides: values that win over planning (``batch_size``, ``patch_size``,
            ``precision``, ``accumulate_grad_batches``, ``num_workers``, ``lr``); the rest is
            planned around them (a fixed batch gets a patch planned for it, and vice versa).
            Other fields of the result (``base_features``, ``max_features``...) are copied to it;
            any other key is refused.
        mednext_size: S, B, M or L, for ``mednext``.
        gpu_memory_gb: memory to plan for; default the first detected GPU's, else 24 GB with a warning.
        num_gpus: GPUs to train on (for workers); default the number detected, at least 1.
        safety_margin: share of the memory a plan may use.
        db, device: which calibrations answer (see ``memprobe.estimate``).
        strategy, world_size: plan one rank of ``world_size``-GPU data parallelism (``ddp``,
            the default for several GPUs, or ``fsdp``) from a calibration of that layout;
            ``batch_size`` is then per rank, as Lightning takes it per device.

    Raises:
        InvalidInputError: an architecture memprobe has no network for, an unknown override, an
            impossible layout, or an argument of the wrong type (it is named).
    """

    def __init__(
        self,
        architecture: str = DEFAULT_ARCHITECTURE,
        target_spacing: Sequence[float] | None = None,
        median_shape: Sequence[int] | None = None,
        manual_overrides: dict[str, Any] | None = None,
        *,
        mednext_size: str = "S",
        gpu_memory_gb: float | None = None,
        num_gpus: int | None = None,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
        db: str | Path | None = None,
        device: str | None = None,
        strategy: str | None = None,
        world_size: int = 1,
    ) -> None:
        check_text(architecture, "architecture", optional=False)
        layout = data_parallel(strategy, world_size)
        self.strategy: str = layout["strategy"].value  # type: ignore[attr-defined]
        self.world_size: int = layout["world_size"]  # type: ignore[assignment]
        self.architecture = architecture
        spacing = target_spacing if target_spacing is not None else [1.0, 1.0, 1.0]
        self.target_spacing: list[float] = check_value("target_spacing", spacing)
        self.median_shape: list[int] | None = (
            check_value("median_shape", median_shape) if median_shape is not None else None
        )
        self.manual_overrides = _checked_overrides(manual_overrides)
        check_text(mednext_size, "mednext_size", optional=False)
        self.mednext_size = mednext_size.upper()
        self.safety_margin = check_fraction(safety_margin, "safety_margin")
        self.db, self.device = check_db(db), check_text(device, "device")
        self.gpus = detect_gpus()
        self.gpu_info = gpu_info_dict(self.gpus)
        given_gpus = (
            None if num_gpus == 0 else check_optional_count(num_gpus, "num_gpus")
        )  # 0: detect, as before
        self.num_gpus = given_gpus or max(1, len(self.gpus))
        self.arch_defaults = self._architecture_entry()
        self.arch: str = self.arch_defaults["arch"]
        self.budget_bytes, self._budget_note, self._budget_warning = self._budget(gpu_memory_gb)
        self._context = _StepContext()
        self._patch_reasons: tuple[str, ...] = ()
        self._planned_patch: list[int] | None = None

    def _get_architecture_defaults(self) -> dict[str, dict[str, Any]]:
        """Defaults for each architecture name; a subclass may add or change entries.

        Each entry holds the planner's ``base_features``, ``max_features``, ``lr`` and
        ``use_scheduler``, plus ``arch``: the memprobe network whose calibration answers the
        memory questions (a name from `memprobe archs`, or ``package.module:factory``).
        """
        if self.mednext_size not in MEDNEXT_SIZES:
            raise InvalidInputError(
                f"mednext_size {shown(repr(self.mednext_size))} must be one of S, B, M, L"
            )
        names = {"mednext": MEDNEXT_SIZES[self.mednext_size], **PYTC_ARCHITECTURES}
        return {pytc: _defaults_for(get_arch(arch)) for pytc, arch in names.items()}

    def _architecture_entry(self) -> dict[str, Any]:
        """This architecture's defaults, completed from the memprobe network it names."""
        defaults = self._get_architecture_defaults()
        entry = defaults.get(self.architecture)
        if entry is None:
            try:
                return _defaults_for(resolve_arch(self.architecture))
            except InvalidInputError:
                raise InvalidInputError(
                    f"unknown architecture {shown(repr(self.architecture))}: memprobe plans for "
                    f"{', '.join(sorted(defaults))} and the networks `memprobe archs` lists"
                ) from None
        if not entry.get("arch"):
            raise InvalidInputError(
                f"architecture {shown(repr(self.architecture))} names no network memprobe can measure: give its "
                "defaults an 'arch' from `memprobe archs` (or package.module:factory)"
            )
        return {**_defaults_for(resolve_arch(entry["arch"])), **entry}

    def _budget(self, gpu_memory_gb: float | None) -> tuple[int, str, str | None]:
        if gpu_memory_gb is not None:
            gpu_memory_gb = check_gigabytes(gpu_memory_gb, "gpu_memory_gb")  # text, nan, inf refused
            return int(gpu_memory_gb * _GB), f"GPU memory: {gpu_memory_gb:.1f} GB (given)", None
        if self.gpus:
            gpu = self.gpus[0]
            return gpu.total_memory_bytes, f"GPU: {gpu.name} ({gpu.total_memory_bytes / _GB:.1f} GB)", None
        return (
            int(NO_GPU_BUDGET_GB * _GB),
            f"GPU memory: {NO_GPU_BUDGET_GB:.0f} GB (no GPU detected)",
            f"no GPU detected: planned for {NO_GPU_BUDGET_GB:.0f} GB; pass gpu_memory_gb= for the GPU "
            "you will train on",
        )

    def _plan_patch_size(self) -> list[int]:
        """The largest patch that fits at the planned (or fixed) batch, shaped by spacing and median shape."""
        context = self._context
        plan = max_patch_size(
            self.arch,
            int(self.manual_overrides.get("batch_size") or 2),
            self.budget_bytes,
            context.precision,
            safety=self.safety_margin,
            spacing=self.target_spacing,
            median_shape=self.median_shape,
            in_channels=context.in_channels,
            out_channels=context.out_channels,
            deep_supervision=context.deep_supervision,
            db=self.db,
            device=self.device,
            strategy=self.strategy,
            world_size=self.world_size,
        )
        self._patch_reasons, self._planned_patch = plan.reasons, list(plan.patch)
        return list(plan.patch)

    def _choose_precision(self, use_mixed_precision: bool) -> PlanValue:
        if self.manual_overrides.get("precision") is not None:
            return PlanValue(
                precision_from_lightning(self.manual_overrides["precision"]).value, "manual override"
            )
        if not use_mixed_precision:
            return PlanValue(Precision.FP32.value, "use_mixed_precision=False")
        return choose_precision(self.gpus[0] if self.gpus else None)

    def _patch(self) -> tuple[list[int], str]:
        if self.manual_overrides.get("patch_size") is not None:
            return [int(size) for size in self.manual_overrides["patch_size"]], "manual override"
        self._patch_reasons, self._planned_patch = (), None
        patch = [int(size) for size in self._plan_patch_size()]
        if patch == self._planned_patch:
            return patch, "; ".join(self._patch_reasons)
        return patch, f"{type(self).__name__}._plan_patch_size"

    def plan(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        deep_supervision: bool = False,
        use_mixed_precision: bool = True,
    ) -> AutoPlanResult:
        """Plan every value; memory-dependent ones from the calibration of this network.

        Mixed precision is bf16 where the GPU has bf16 tensor cores (or none is detected),
        else fp16, as ``memprobe plan`` chooses.
        """
        overrides = self.manual_overrides
        precision = self._choose_precision(use_mixed_precision)
        self._context = _StepContext(in_channels, out_channels, deep_supervision, precision.value)
        patch, patch_reason = self._patch()
        full = make_plan(
            self.arch,
            self.budget_bytes,
            gpu=self.gpus[0] if self.gpus else None,
            precision=precision.value,
            patch=patch,
            batch=overrides.get("batch_size"),
            safety=self.safety_margin,
            num_gpus=self.num_gpus,
            in_channels=in_channels,
            out_channels=out_channels,
            deep_supervision=deep_supervision,
            db=self.db,
            device=self.device,
            strategy=self.strategy,
            world_size=self.world_size,
        )
        values = {name: value.value for name, value in full.values.items()}
        reasons = {name: value.reason for name, value in full.values.items()}
        reasons["precision"], reasons["patch_size"] = precision.reason, patch_reason
        values["lr"], reasons["lr"] = self.arch_defaults["lr"], f"{self.architecture} default"
        values["precision"] = Precision(precision.value).lightning_name
        for name in ("precision", "accumulate_grad_batches", "num_workers", "lr"):
            if overrides.get(name) is not None:
                values[name], reasons[name] = overrides[name], "manual override"
        batch = max(1, values["batch_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # make_plan has already warned about a stand-in
            calibration = estimate(
                self.arch, patch, batch, precision.value, in_channels=in_channels,
                out_channels=out_channels, deep_supervision=deep_supervision, db=self.db, device=self.device,
                strategy=self.strategy, world_size=self.world_size,
            ).calibration  # fmt: skip
        estimated_gb = full.predicted_peak_bytes / _GB
        result = AutoPlanResult(
            patch_size=patch,
            batch_size=batch,
            num_workers=int(values["num_workers"]),
            base_features=int(self.arch_defaults["base_features"]),
            max_features=int(self.arch_defaults["max_features"]),
            precision=str(values["precision"]),
            accumulate_grad_batches=int(values["accumulate_grad_batches"]),
            lr=float(values["lr"]),
            gpu_memory_per_sample_gb=estimated_gb / batch,
            estimated_gpu_memory_gb=estimated_gb,
            available_gpu_memory_gb=self.budget_bytes / _GB,
            warnings=[w for w in (self._budget_warning, *full.warnings) if w],
            arch=self.arch,
            reasons=reasons,
            calibration_source=describe_calibration(calibration),
            predicted_peak_bytes=full.predicted_peak_bytes,
            budget_bytes=self.budget_bytes,
            strategy=self.strategy,
            world_size=self.world_size,
            ddp_buckets=ddp_buckets(calibration),
        )
        return self._apply_other_overrides(replace(result, planning_notes=self._notes(result)))

    def _apply_other_overrides(self, result: AutoPlanResult) -> AutoPlanResult:
        """Overrides of fields that are not planned (``base_features``...) are copied, as the planner does."""
        others = {k: v for k, v in self.manual_overrides.items() if k not in _PLANNED}
        return replace(result, **others)

    def _notes(self, result: AutoPlanResult) -> list[str]:
        usage = result.estimated_gpu_memory_gb / result.available_gpu_memory_gb
        notes = [
            f"Architecture: {self.architecture} (memprobe {self.arch})",
            f"Patch size: {result.patch_size}",
            self._budget_note,
            f"Estimated memory: {result.estimated_gpu_memory_gb:.2f} GB ({usage:.1%} of GPU)",
            f"Batch size: {result.batch_size}",
            *data_parallel_notes(result),
            f"Num workers: {result.num_workers}",
            f"Learning rate: {result.lr}",
            f"Calibration: {result.calibration_source}",
        ]
        overridden = [k for k, why in result.reasons.items() if why == "manual override"]
        return notes + [f"Manual override kept: {name}" for name in overridden]

    def print_plan(self, result: AutoPlanResult) -> None:
        """Print the plan as PyTorch Connectomics' planner does, with memprobe's reasons."""
        print(format_plan(result))
