"""Plan batch and patch sizes from a calibration: pure arithmetic, answered in microseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from memprobe.archs.registry import ArchSpec, smallest_patch_size
from memprobe.calibration import Calibration
from memprobe.errors import InvalidInputError
from memprobe.search import largest_at_most

MAX_BATCH = 4096
ANISOTROPY_THRESHOLD = 3.0  # spacing ratio beyond which data counts as anisotropic (the seed's rule)


@dataclass(frozen=True)
class BatchPlan:
    """The largest batch whose predicted peak stays within ``usable_bytes`` (budget x safety)."""

    arch: str
    patch: tuple[int, int, int]
    batch: int
    predicted_peak_bytes: float
    next_batch_peak_bytes: float
    budget_bytes: int
    safety: float
    accumulate_grad_batches: int
    effective_batch: int
    calibration: Calibration
    warnings: tuple[str, ...] = field(default=())

    @property
    def usable_bytes(self) -> float:
        return self.budget_bytes * self.safety

    @property
    def utilisation(self) -> float:
        """Predicted peak as a share of the whole budget."""
        return self.predicted_peak_bytes / self.budget_bytes


@dataclass(frozen=True)
class PatchPlan:
    """The largest patch (for a batch) whose predicted peak fits, with the reasoning."""

    arch: str
    patch: tuple[int, int, int]
    batch: int
    predicted_peak_bytes: float
    budget_bytes: int
    safety: float
    calibration: Calibration
    reasons: tuple[str, ...] = field(default=())

    @property
    def utilisation(self) -> float:
        return self.predicted_peak_bytes / self.budget_bytes


def _check_budget(budget_bytes: int, safety: float) -> None:
    if budget_bytes <= 0:
        raise InvalidInputError("the memory budget must be greater than zero, e.g. --gpu-mem 24GiB")
    if not 0 < safety <= 1:
        raise InvalidInputError(f"--safety must be in (0, 1], got {safety}")


def plan_batch(
    calibration: Calibration,
    spec: ArchSpec,
    patch: Sequence[int],
    budget_bytes: int,
    *,
    safety: float = 0.9,
    in_channels: int = 1,
    out_channels: int = 2,
    effective_batch: int | None = None,
) -> BatchPlan:
    """The largest batch that fits ``budget_bytes * safety``; 0 when even batch 1 does not."""
    _check_budget(budget_bytes, safety)
    usable = budget_bytes * safety
    peak = lambda b: calibration.predict_peak_bytes(spec, patch, b, in_channels, out_channels)
    batch = largest_at_most(peak, usable, 1, MAX_BATCH) if peak(1) <= usable else 0
    warnings = []
    if batch == 0:
        warnings.append(
            f"even batch 1 needs {peak(1) / 2**30:.2f} GiB, more than {usable / 2**30:.2f} GiB "
            "usable: choose a smaller patch or a lower precision"
        )
    target = effective_batch or batch
    accumulation = max(1, math.ceil(target / batch)) if batch else 0
    return BatchPlan(
        calibration.arch,
        _three(patch),
        batch,
        peak(max(batch, 1)),
        peak(batch + 1),
        budget_bytes,
        safety,
        accumulation,
        batch * accumulation,
        calibration,
        tuple(warnings),
    )


def initial_patch(
    spec: ArchSpec, spacing: Sequence[float] | None, median_shape: Sequence[int] | None
) -> list[float]:
    """nnU-Net's starting point: a patch of 256^3 voxels' volume, isotropic in millimetres."""
    inverse = [1 / s for s in spacing] if spacing else [1.0, 1.0, 1.0]
    scale = (256**3 / math.prod(inverse)) ** (1 / 3)
    sizes = [i * scale for i in inverse]
    if median_shape:
        sizes = [min(size, shape) for size, shape in zip(sizes, median_shape, strict=True)]
    return sizes


def plan_patch(
    calibration: Calibration,
    spec: ArchSpec,
    batch: int,
    budget_bytes: int,
    *,
    safety: float = 0.9,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    in_channels: int = 1,
    out_channels: int = 2,
) -> PatchPlan:
    """The largest patch for ``batch``: nnU-Net's shrinking, checked by the calibrated formula.

    Start isotropic in millimetres (so thick-slice data gets fewer through-plane voxels),
    capped by the median shape; round down to the network's divisor; then, while the
    prediction exceeds the budget, shrink the axis that is largest relative to the median
    shape, one divisor at a time. Finally grow the patch back while it still fits and stays
    within the median shape (nnU-Net stops short of the budget).
    """
    _check_budget(budget_bytes, safety)
    _check_geometry(spacing, median_shape)
    usable = budget_bytes * safety
    unit, smallest = spec.divisor, smallest_patch_size(spec)
    limit = [max(smallest, (s // unit) * unit) for s in median_shape] if median_shape else [1024] * 3
    patch = [
        min(lim, max(smallest, int(size // unit) * unit))
        for size, lim in zip(initial_patch(spec, spacing, median_shape), limit, strict=True)
    ]
    peak = lambda p: calibration.predict_peak_bytes(spec, p, batch, in_channels, out_channels)
    reasons = [
        f"start: {'x'.join(map(str, patch))} (isotropic in mm"
        f"{', capped by the median shape' if median_shape else ''}, multiples of {unit})"
    ]
    reference = list(median_shape) if median_shape else [1024] * 3
    while peak(patch) > usable:
        shrinkable = [axis for axis in range(3) if patch[axis] - unit >= smallest]
        if not shrinkable:
            reasons.append(
                f"even {'x'.join(map(str, patch))} needs {peak(patch) / 2**30:.2f} GiB at batch {batch}"
            )
            break
        axis = max(shrinkable, key=lambda a: patch[a] / reference[a])
        patch[axis] -= unit
    else:  # the patch fits: grow it back while it still does
        grown = True
        while grown:
            grown = False
            for axis in sorted(range(3), key=lambda a: patch[a] / reference[a]):
                candidate = list(patch)
                candidate[axis] += unit
                if candidate[axis] <= limit[axis] and peak(candidate) <= usable:
                    patch, grown = candidate, True
                    break
        reasons.append(
            f"largest within {usable / 2**30:.2f} GiB at batch {batch}: {'x'.join(map(str, patch))}"
        )
    return PatchPlan(
        calibration.arch, _three(patch), batch, peak(patch), budget_bytes, safety, calibration, tuple(reasons)
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
