"""Plan batch and patch sizes from a calibration: pure arithmetic, answered in microseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

from memprobe.core.archs.registry import ArchSpec, axis_divisors, smallest_patch
from memprobe.core.bisection import largest_at_most
from memprobe.core.checks import MAX_BATCH_SIZE
from memprobe.core.errors import InvalidInputError, NothingFitsError
from memprobe.core.gpus import GpuInfo
from memprobe.core.units import format_bytes, format_shape
from memprobe.formula.calibration import Calibration
from memprobe.planning.need import MemoryNeed, MemoryPlan, extrapolation_warnings, memory_need

# The one rule for "the largest batch" in suggest, plan, report and calibrate's searches: the
# whole need (allocated, allocator reserve, CUDA context, workspaces, margin) within budget x safety.
DEFAULT_SAFETY = 1.0
ANISOTROPY_THRESHOLD = 3.0  # spacing ratio beyond which data counts as anisotropic (the seed's rule)


@dataclass(frozen=True)
class BatchPlan(MemoryPlan):
    """The largest batch whose whole need (see ``MemoryNeed``) fits ``budget_bytes * safety``."""

    _: KW_ONLY
    arch: str
    patch: tuple[int, int, int]
    batch: int
    next_need: MemoryNeed
    accumulate_grad_batches: int
    effective_batch: int

    @property
    def next_batch_peak_bytes(self) -> float:
        return self.next_need.allocated_bytes

    def __repr__(self) -> str:
        accumulate = (
            f" x{self.accumulate_grad_batches} accumulated" if self.accumulate_grad_batches > 1 else ""
        )
        return (
            f"BatchPlan({self.arch} {_size(self.patch)}: batch {self.batch}{accumulate}, "
            f"need {format_bytes(self.need.total_bytes)} of {format_bytes(self.budget_bytes)}, "
            f"{self.calibration.precision} calibration {self.calibration.device})"
        )


@dataclass(frozen=True)
class PatchPlan(MemoryPlan):
    """The largest patch (for a batch) whose whole need fits, with the reasoning."""

    _: KW_ONLY
    arch: str
    patch: tuple[int, int, int]
    batch: int

    def __repr__(self) -> str:
        return (
            f"PatchPlan({self.arch} batch {self.batch}: patch {_size(self.patch)}, "
            f"need {format_bytes(self.need.total_bytes)} of {format_bytes(self.budget_bytes)}, "
            f"{self.calibration.precision} calibration {self.calibration.device})"
        )


def _size(patch: Sequence[int]) -> str:
    return format_shape(patch)


def largest_batch_rule(budget_bytes: float, safety: float = DEFAULT_SAFETY) -> str:
    """The rule every command's largest batch follows, in words, e.g. for a table's title."""
    within = format_bytes(budget_bytes) if safety == 1 else f"{safety:.0%} of {format_bytes(budget_bytes)}"
    return f"largest batch whose whole need fits {within} (allocated, allocator reserve, CUDA context, workspaces and margin)"


def _check_budget(budget_bytes: int, safety: float) -> None:
    if budget_bytes <= 0:
        raise InvalidInputError("the memory budget must be greater than zero, e.g. --gpu-mem 24GiB")
    if not 0 < safety <= 1:
        raise InvalidInputError(f"--safety must be in (0, 1], got {safety}")


def _check_fixed_overheads(need: MemoryNeed, usable: float) -> None:
    """Refuse a budget that the context and workspaces alone use up."""
    if need.fixed_bytes >= usable:
        parts = ", ".join(f"{o.name} {format_bytes(o.bytes)}" for o in need.overheads if o.bytes)
        raise InvalidInputError(
            f"{format_bytes(usable)} is less than the fixed overheads ({parts}): "
            "give the memory of the whole card, e.g. --gpu-mem 24GiB"
        )


def describe_need(need: MemoryNeed) -> str:
    """One line: the total and its largest terms."""
    terms = ", ".join(f"{name} {format_bytes(size)}" for name, size, _ in need.terms() if size)
    return f"{format_bytes(need.total_bytes)} ({terms})"


def plan_batch(
    calibration: Calibration,
    spec: ArchSpec,
    patch: Sequence[int],
    budget_bytes: int,
    *,
    safety: float = DEFAULT_SAFETY,
    in_channels: int = 1,
    out_channels: int = 2,
    effective_batch: int | None = None,
    gpu: GpuInfo | None = None,
) -> BatchPlan:
    """The largest batch whose whole need fits ``budget_bytes * safety``.

    With ``effective_batch``, the smallest accumulation that reaches it with a batch that fits,
    and the smallest batch for that accumulation: never a batch larger than asked for.

    Raises:
        InvalidInputError: the budget is below the fixed overheads.
        NothingFitsError: even batch 1 does not fit; the message gives its need.
    """
    _check_budget(budget_bytes, safety)
    usable = budget_bytes * safety
    need = lambda b: memory_need(calibration, spec, patch, b, in_channels, out_channels, gpu)
    first = need(1)
    _check_fixed_overheads(first, usable)
    size = format_shape(patch)
    if first.total_bytes > usable:
        raise NothingFitsError(
            f"nothing fits: batch 1 of {calibration.arch} at {size} needs {describe_need(first)}, "
            f"more than the {format_bytes(usable)} usable: choose a smaller patch, bf16-mixed, or a larger GPU"
        )
    batch = largest_at_most(lambda b: need(b).total_bytes, usable, 1, MAX_BATCH_SIZE)
    warnings = []
    if batch == MAX_BATCH_SIZE:
        warnings.append(f"batch capped at {MAX_BATCH_SIZE}: more would fit")
    accumulation = 1
    if effective_batch:
        accumulation = math.ceil(effective_batch / batch)
        batch = math.ceil(effective_batch / accumulation)
    warnings += extrapolation_warnings(calibration, patch, batch, in_channels, out_channels)
    return BatchPlan(
        need(batch),
        budget_bytes,
        safety,
        calibration,
        warnings=tuple(warnings),
        arch=calibration.arch,
        patch=_three(patch),
        batch=batch,
        next_need=need(batch + 1),
        accumulate_grad_batches=accumulation,
        effective_batch=batch * accumulation,
    )


def initial_patch(
    spec: ArchSpec, spacing: Sequence[float] | None, median_shape: Sequence[int] | None
) -> list[float]:
    """nnU-Net's starting point: a patch of 256^3 voxels' volume, isotropic in millimetres."""
    inverse = [1 / s for s in spacing] if spacing else [1.0, 1.0, 1.0]
    scale = (256**3 / math.prod(inverse)) ** (1 / 3)
    sizes = [round(i * scale, 6) for i in inverse]  # 255.99999 is 256: it must not round down to 240
    if median_shape:
        sizes = [min(size, shape) for size, shape in zip(sizes, median_shape, strict=True)]
    return sizes


def plan_patch(
    calibration: Calibration,
    spec: ArchSpec,
    batch: int,
    budget_bytes: int,
    *,
    safety: float = DEFAULT_SAFETY,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    in_channels: int = 1,
    out_channels: int = 2,
    gpu: GpuInfo | None = None,
) -> PatchPlan:
    """The largest patch for ``batch``: nnU-Net's shrinking, checked by the calibrated formula.

    Start isotropic in millimetres with 256^3 voxels' volume (so thick-slice data gets fewer
    through-plane voxels), capped by the median shape; round down to the network's divisor;
    then, while the need exceeds the budget, shrink the axis that is largest relative to the
    median shape, one divisor at a time. Finally grow the patch back while it still fits and
    stays within the median shape, or within the starting patch when no median shape is given.

    Raises:
        InvalidInputError: the budget is below the fixed overheads.
        NothingFitsError: even the smallest patch the network takes does not fit.
    """
    _check_budget(budget_bytes, safety)
    _check_geometry(spacing, median_shape)
    usable = budget_bytes * safety
    units, smallest = axis_divisors(spec), smallest_patch(spec)
    start = [
        max(least, int(size // unit) * unit)
        for size, unit, least in zip(initial_patch(spec, spacing, median_shape), units, smallest, strict=True)
    ]
    limit = (
        [max(least, (s // unit) * unit) for s, unit, least in zip(median_shape, units, smallest, strict=True)]
        if median_shape
        else list(start)
    )
    patch = [min(lim, size) for size, lim in zip(start, limit, strict=True)]
    need = lambda p: memory_need(calibration, spec, p, batch, in_channels, out_channels, gpu)
    _check_fixed_overheads(need(patch), usable)
    cap = "capped by the median shape" if median_shape else "no median shape: never beyond this start"
    multiples = str(units[0]) if len(set(units)) == 1 else format_shape(units)
    reasons = [f"start: {'x'.join(map(str, patch))} (isotropic in mm, {cap}, multiples of {multiples})"]
    reference = list(median_shape) if median_shape else list(limit)
    while need(patch).total_bytes > usable:
        shrinkable = [axis for axis in range(3) if patch[axis] - units[axis] >= smallest[axis]]
        if not shrinkable:
            raise NothingFitsError(
                f"nothing fits: even {'x'.join(map(str, patch))} at batch {batch} needs "
                f"{describe_need(need(patch))}, more than the {format_bytes(usable)} usable: "
                "choose a smaller batch, bf16-mixed, or a larger GPU"
            )
        axis = max(shrinkable, key=lambda a: patch[a] / reference[a])
        patch[axis] -= units[axis]
    grown = True
    while grown:
        grown = False
        for axis in sorted(range(3), key=lambda a: patch[a] / reference[a]):
            candidate = list(patch)
            candidate[axis] += units[axis]
            if candidate[axis] <= limit[axis] and need(candidate).total_bytes <= usable:
                patch, grown = candidate, True
                break
    reasons.append(f"largest within {format_bytes(usable)} at batch {batch}: {'x'.join(map(str, patch))}")
    return PatchPlan(
        need(patch),
        budget_bytes,
        safety,
        calibration,
        reasons=tuple(reasons),
        warnings=tuple(extrapolation_warnings(calibration, patch, batch, in_channels, out_channels)),
        arch=calibration.arch,
        patch=_three(patch),
        batch=batch,
    )


def _three(patch: Sequence[int]) -> tuple[int, int, int]:
    depth, height, width = patch
    return int(depth), int(height), int(width)


def _check_geometry(spacing: Sequence[float] | None, median_shape: Sequence[int] | None) -> None:
    if spacing is not None and (len(spacing) != 3 or any(s <= 0 for s in spacing)):
        raise InvalidInputError("--spacing takes 3 positive numbers in mm, e.g. --spacing 5 0.8 0.8")
    if median_shape is not None and (len(median_shape) != 3 or any(s <= 0 for s in median_shape)):
        raise InvalidInputError(
            "--median-shape takes 3 positive sizes in voxels, e.g. --median-shape 64 256 256"
        )


def is_anisotropic(spacing: Sequence[float] | None) -> bool:
    return bool(spacing) and max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD  # type: ignore[arg-type,type-var]
