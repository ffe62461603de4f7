"""What one training configuration needs of a GPU, term by term, and how sure that is.

    total = allocated + reserve overhead + CUDA context + workspaces + margin

``allocated`` is the calibrated peak of the step's tensors (``max_memory_allocated``);
the reserve overhead is what the caching allocator holds beyond it at its peak
(``max_memory_reserved`` - allocated); the margin is the share of the reserve the
calibration's own error (and, for trace, its unchecked gap to a GPU) calls for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.gpus import GpuInfo
from memprobe.formula.calibration import Calibration
from memprobe.planning.overheads import (
    UNCALIBRATED_RESERVE_ALLOWANCE,
    Overhead,
    context_overhead,
    margin_fraction,
    workspace_overheads,
)

EXTRAPOLATION_FACTOR = 2.0  # a plan beyond twice the measured range says it extrapolates


@dataclass(frozen=True)
class MemoryNeed:
    """The memory one configuration needs, each term with its source."""

    allocated_bytes: float
    reserve_overhead_bytes: float
    reserve_source: str  # "measured", "simulated" or the allowance used instead
    overheads: tuple[Overhead, ...]
    margin_bytes: float
    margin_source: str

    @property
    def reserved_bytes(self) -> float:
        return self.allocated_bytes + self.reserve_overhead_bytes

    @property
    def fixed_bytes(self) -> int:
        """What the process needs whatever the batch and patch: context and workspaces."""
        return sum(overhead.bytes for overhead in self.overheads)

    @property
    def total_bytes(self) -> float:
        return self.reserved_bytes + self.fixed_bytes + self.margin_bytes

    def __repr__(self) -> str:
        return (
            f"MemoryNeed(total {self.total_bytes / 2**30:.2f} GiB: allocated {self.allocated_bytes / 2**30:.2f}, "
            f"reserve {self.reserve_overhead_bytes / 2**30:.2f}, fixed {self.fixed_bytes / 2**30:.2f}, "
            f"margin {self.margin_bytes / 2**30:.2f} GiB)"
        )

    def terms(self) -> list[tuple[str, float, str]]:
        """(name, bytes, source) of every term, in the order they add up to the total."""
        return [
            ("allocated (tensors)", self.allocated_bytes, "calibrated peak"),
            ("allocator reserve", self.reserve_overhead_bytes, self.reserve_source),
            *((o.name, float(o.bytes), o.source) for o in self.overheads),
            ("margin", self.margin_bytes, self.margin_source),
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "allocated_bytes": round(self.allocated_bytes),
            "reserve_overhead_bytes": round(self.reserve_overhead_bytes),
            "reserved_bytes": round(self.reserved_bytes),
            "context_bytes": sum(o.bytes for o in self.overheads if o.name == "CUDA context"),
            "workspace_bytes": sum(o.bytes for o in self.overheads if "workspace" in o.name),
            "margin_bytes": round(self.margin_bytes),
            "total_bytes": round(self.total_bytes),
            "terms": [
                {"name": name, "bytes": round(size), "source": source} for name, size, source in self.terms()
            ],
        }


def reserve_source(calibration: Calibration) -> str:
    """Where the calibration's reserve comes from, in words."""
    if calibration.reserved_coefficients is None:
        return (
            f"not calibrated: {100 * UNCALIBRATED_RESERVE_ALLOWANCE:.0f}% allowance; re-run `memprobe calibrate "
            f"--arch {calibration.arch} --precision {calibration.precision}` to fit it"
        )
    if calibration.measured_on_gpu:
        return f"fit to max_memory_reserved measured on {calibration.device}"
    return "fit to the caching allocator replayed over traced allocations (simulated)"


def memory_need(
    calibration: Calibration,
    spec: ArchSpec,
    patch: Sequence[int],
    batch: int,
    in_channels: int = 1,
    out_channels: int = 2,
    gpu: GpuInfo | None = None,
) -> MemoryNeed:
    """Every term of the memory ``batch`` x ``patch`` needs, as ``calibration`` predicts it on ``gpu``."""
    allocated = calibration.predict_peak_bytes(spec, patch, batch, in_channels, out_channels)
    reserved = calibration.predict_reserved_bytes(spec, patch, batch, in_channels, out_channels)
    return need_from_peaks(calibration, allocated, reserved, gpu)


def need_from_peaks(
    calibration: Calibration, allocated: float, reserved: float | None, gpu: GpuInfo | None = None
) -> MemoryNeed:
    """The whole need around predicted peaks: reserve (or its named allowance), overheads, margin."""
    if reserved is None:
        reserved = allocated * (1 + UNCALIBRATED_RESERVE_ALLOWANCE)
    fraction, margin_source = margin_fraction(calibration)
    return MemoryNeed(
        allocated_bytes=allocated,
        reserve_overhead_bytes=max(0.0, reserved - allocated),
        reserve_source=reserve_source(calibration),
        overheads=(context_overhead(calibration, gpu), *workspace_overheads(calibration, gpu)),
        margin_bytes=reserved * fraction,
        margin_source=margin_source,
    )


def extrapolation_warnings(
    calibration: Calibration, patch: Sequence[int], batch: int, in_channels: int = 1, out_channels: int = 2
) -> list[str]:
    """A warning for each quantity beyond twice the range the calibration measured."""
    if not calibration.fit_range:
        return [
            f"the calibration of {calibration.arch} does not record the range it measured: "
            "re-run `memprobe calibrate` to know where its fit holds"
        ]
    import math

    asked = {
        "batch": batch,
        "voxels": math.prod(patch),
        "in_channels": in_channels,
        "out_channels": out_channels,
    }
    warnings = []
    for name, value in asked.items():
        low, high = calibration.fit_range.get(name, [value, value])
        if value > EXTRAPOLATION_FACTOR * high or value < low / EXTRAPOLATION_FACTOR:
            warnings.append(
                f"{name} {value} is beyond twice the calibrated range {low}-{high}: "
                "the prediction extrapolates; probe it or calibrate closer to it"
            )
    return warnings


@dataclass(frozen=True)
class MemoryPlan:
    """What every plan shares (a training batch or patch plan, an inference plan): the need at the
    planned size, the budget and share of it planned for, the calibration that answered, and why."""

    need: MemoryNeed
    budget_bytes: int
    safety: float
    calibration: Calibration
    reasons: tuple[str, ...] = field(default=(), kw_only=True)
    warnings: tuple[str, ...] = field(default=(), kw_only=True)

    @property
    def predicted_peak_bytes(self) -> float:
        """Predicted peak allocated bytes (tensors only) at the planned size."""
        return self.need.allocated_bytes

    @property
    def usable_bytes(self) -> float:
        """The share of the budget a plan may fill."""
        return self.budget_bytes * self.safety

    @property
    def utilisation(self) -> float:
        """The whole need as a share of the budget."""
        return self.need.total_bytes / self.budget_bytes
