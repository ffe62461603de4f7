"""Calibrate: measure an architecture across sizes, fit the formula, search the limits, store it all."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from memprobe.backends.recorder import MeasurementLog
from memprobe.core.archs.registry import ArchSpec, axis_divisors, resolve_arch, smallest_patch
from memprobe.core.bisection import Outcome, SearchResult, guided_search
from memprobe.core.config import StepConfig
from memprobe.core.enums import Strategy
from memprobe.core.errors import ModelError
from memprobe.core.measurement import Measurement
from memprobe.core.units import format_shape
from memprobe.formula.calibration import Calibration
from memprobe.formula.fit import fit_formula
from memprobe.planning.exports import DDP_DEFAULT_BUCKET_CAP_MB, DDP_DEFAULT_GRADIENT_AS_BUCKET_VIEW
from memprobe.planning.need import memory_need, need_from_peaks
from memprobe.planning.size_search import DEFAULT_SAFETY

MAX_MEASURED_BATCH = 512  # the limit search measures at most this batch: a bound on its cost, not on plans


@dataclass(frozen=True)
class DesignPoints:
    """Configurations measured to fit the formula, and others held out to test it."""

    fit: tuple[StepConfig, ...]
    heldout: tuple[StepConfig, ...]


MIN_DESIGN_POINTS = 6  # fewer fitted points than this after shape failures: the calibration stops


def patch_unit(spec: ArchSpec) -> int:
    """The step between calibration patch sizes: the divisor; 16 for a user model, whose divisor is unknown."""
    return max(spec.divisor, 16) if spec.custom else spec.divisor


def patch_units(spec: ArchSpec) -> tuple[int, int, int]:
    """The per-axis step between calibration patch sizes: the divisors, scaled so the largest is at least 16.

    A network that pools anisotropically gets anisotropic design patches in the same ratio.
    """
    divisors = axis_divisors(spec)
    scale = max(1, -(-16 // max(divisors))) if spec.custom else 1
    depth, height, width = (d * scale for d in divisors)
    return depth, height, width


def design_patch(spec: ArchSpec, multiples: tuple[int, int, int]) -> tuple[int, int, int]:
    """``multiples`` of the per-axis units, never below the smallest patch the network takes."""
    sizes = []
    for k, unit, least in zip(multiples, patch_units(spec), smallest_patch(spec), strict=True):
        sizes.append(max(k * unit, -(-least // unit) * unit))
    depth, height, width = sizes
    return depth, height, width


def design_points(base: StepConfig, spec: ArchSpec) -> DesignPoints:
    """Patches of 2, 4, 6 and 8 units per axis at batch 1 and 2, plus two channel variants
    to fit. Held out, sharing no patch with those and chosen before any result was seen: an
    anisotropic patch (2x10x10 units), a 5-unit patch at batch 3, a 3x5x7-unit patch with
    other channel counts, and a patch beyond the fitted range (12x8x8 units)."""
    cube = lambda k: design_patch(spec, (k, k, k))
    ci, co = base.in_channels, base.out_channels  # 1 and 2 unless calibrated for other channels
    fit = [
        replace(base, patch=cube(k), batch=b, in_channels=ci, out_channels=co)
        for k in (2, 4, 6, 8)
        for b in (1, 2)
    ]
    fit += [
        replace(base, patch=cube(4), batch=1, in_channels=ci + 3, out_channels=co),
        replace(base, patch=cube(4), batch=1, in_channels=ci, out_channels=co + 6),
    ]
    heldout = (
        replace(base, patch=design_patch(spec, (2, 10, 10)), batch=2, in_channels=ci, out_channels=co),
        replace(base, patch=cube(5), batch=3, in_channels=ci, out_channels=co),
        replace(base, patch=design_patch(spec, (3, 5, 7)), batch=2, in_channels=ci + 1, out_channels=co + 1),
        replace(base, patch=design_patch(spec, (12, 8, 8)), batch=1, in_channels=ci, out_channels=co),
    )
    return DesignPoints(tuple(fit), heldout)


def measure_or_record(log: MeasurementLog, config: StepConfig) -> Measurement:
    """Measure ``config``; a model that fails on it is recorded as a failed point, not fatal."""
    try:
        return log.measure(config)
    except ModelError as error:
        return Measurement(config, log.backend.environment(), None, error=str(error))


@dataclass(frozen=True)
class LimitSearch:
    """One search for a largest size: what was searched, the answer, and its cost in steps."""

    kind: str  # "batch" or "patch"
    fixed: str  # the patch (for a batch search) or batch (for a patch search) held fixed
    result: SearchResult
    answer: str


@dataclass(frozen=True)
class CalibrationReport:
    """What a calibration run measured, fitted and found; ``stored_in`` names its database."""

    calibration: Calibration
    fitted: tuple[Measurement, ...]
    heldout: tuple[Measurement, ...]
    searches: tuple[LimitSearch, ...] = field(default=())
    measured: int = 0
    reused: int = 0
    budget_bytes: int | None = None
    stored_in: str | None = None

    def __repr__(self) -> str:
        quality = self.calibration.quality
        return (
            f"CalibrationReport({self.calibration.arch} {self.calibration.precision} on "
            f"{self.calibration.device}: {len(self.fitted)} fitted, {len(self.heldout)} held out, "
            f"median error {100 * quality.median_relative_error:.2f}%, {len(self.searches)} searches, "
            f"{self.measured} measured, {self.reused} reused)"
        )


def fit_calibration(
    spec: ArchSpec,
    base: StepConfig,
    device: str,
    fitted: list[Measurement],
    heldout: list[Measurement],
    environment: dict[str, object],
) -> Calibration:
    """Fit coefficients to ``fitted`` and report their error on ``heldout`` too."""
    formula = fit_formula(spec, fitted, heldout)
    return Calibration(
        arch=spec.name,
        device=device,
        precision=base.precision.value,
        optimizer=base.optimizer.value,
        deep_supervision=base.deep_supervision,
        environment=environment,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        step=base.step,
        checkpointing=base.checkpointing,
        strategy=base.strategy.value,
        world_size=base.world_size,
        **formula.fields(),
    )


def search_largest_batch(
    log: MeasurementLog,
    base: StepConfig,
    budget_bytes: int,
    calibration: Calibration | None = None,
    spec: ArchSpec | None = None,
) -> SearchResult:
    """Largest batch for ``base.patch`` within the budget.

    With a calibration the search is guided by it and judges each measured step by its whole
    need, the rule ``suggest`` plans by (``largest_batch_rule``); without one, by the measured
    allocated peak alone.
    """
    probe = lambda b: log.outcome(replace(base, batch=b))
    predict = None
    if calibration is not None and spec is not None:
        judge = _judged_by_need(log, calibration, budget_bytes * DEFAULT_SAFETY)
        probe = lambda b: judge(replace(base, batch=b))
        predict = lambda b: (
            memory_need(calibration, spec, base.patch, b, base.in_channels, base.out_channels).total_bytes
        )
    return guided_search(probe, budget_bytes * DEFAULT_SAFETY, predict=predict, upper=MAX_MEASURED_BATCH)


def _judged_by_need(
    log: MeasurementLog, calibration: Calibration, budget: float
) -> Callable[[StepConfig], Outcome]:
    """Measure a step and judge its whole need (measured peaks, the calibration's overheads and margin)."""

    def judge(config: StepConfig) -> Outcome:
        measured = log.measure(config)
        if not measured.ok or measured.peak_allocated_bytes is None:
            return Outcome(False, None)
        need = need_from_peaks(calibration, measured.peak_allocated_bytes, measured.peak_reserved_bytes)
        return Outcome(need.total_bytes <= budget, round(need.total_bytes))

    return judge


def search_largest_patch(
    log: MeasurementLog,
    base: StepConfig,
    spec: ArchSpec,
    budget_bytes: int,
    calibration: Calibration | None = None,
    aspect: tuple[int, int, int] = (1, 1, 1),
    max_voxels: int = 1024**3,
) -> SearchResult:
    """Largest patch ``n * aspect * units`` for ``base.batch`` within the budget (n is returned).

    Judged as :func:`search_largest_batch` judges: by the whole need when calibrated.
    """
    units = patch_units(spec)
    smallest = max(
        -(-least // (unit * a)) for least, unit, a in zip(smallest_patch(spec), units, aspect, strict=True)
    )
    patch_of = lambda n: tuple(n * a * unit for a, unit in zip(aspect, units, strict=True))
    upper = max(smallest, int((max_voxels / math.prod(patch_of(1))) ** (1 / 3)))
    probe = lambda n: log.outcome(replace(base, patch=patch_of(n)))
    predict = None
    if calibration is not None:
        judge = _judged_by_need(log, calibration, budget_bytes * DEFAULT_SAFETY)
        probe = lambda n: judge(replace(base, patch=patch_of(n)))
        predict = lambda n: (
            memory_need(
                calibration, spec, patch_of(n), base.batch, base.in_channels, base.out_channels
            ).total_bytes
        )
    return guided_search(
        probe,
        budget_bytes * DEFAULT_SAFETY,
        size_of=lambda n: float(math.prod(patch_of(n))),
        predict=predict,
        start=smallest,
        upper=upper,
    )


def calibrate(
    log: MeasurementLog, base: StepConfig, budget_bytes: int, *, search: bool = True
) -> CalibrationReport:
    """Measure the design points, fit, then (with ``search``) the largest batch and patch with the fit.

    ``base`` fixes precision, optimizer, deep supervision, step and channels; its patch and
    batch are ignored. A design point the model fails on is recorded and skipped while at
    least ``MIN_DESIGN_POINTS`` remain.
    """
    spec = resolve_arch(base.arch)
    points = design_points(base, spec)
    environment = log.backend.environment()
    fitted = [measure_or_record(log, config) for config in points.fit]
    failed = [m for m in fitted if m.error is not None]
    if len(fitted) - len(failed) < MIN_DESIGN_POINTS and failed:
        raise ModelError(
            f"{len(failed)} of {len(fitted)} calibration patches failed on their shape, e.g. "
            f"{failed[0].error} (patch {'x'.join(map(str, failed[0].config.patch))}, divisors assumed "
            f"{'x'.join(map(str, axis_divisors(spec)))}): declare the network's rule with --divisor and --min-patch"
        )
    heldout = [measure_or_record(log, config) for config in points.heldout]
    recorded = environment.to_dict() | _bucket_settings(log.backend, base)
    calibration = fit_calibration(spec, base, environment.calibration_device, fitted, heldout, recorded)
    if log.db is not None:  # stored before the searches: a search that fails must not lose the fit
        log.db.add_calibration(calibration, environment)
    searches = _limit_searches(log, base, spec, budget_bytes, calibration) if search else []
    return CalibrationReport(
        calibration,
        tuple(fitted),
        tuple(heldout),
        tuple(searches),
        measured=len(log.taken),
        reused=log.reused,
        budget_bytes=budget_bytes,
    )


def _bucket_settings(backend: object, base: StepConfig) -> dict[str, object]:
    """DDP's bucket settings the ranks were measured with, kept beside the calibration: they are not in its key.

    A backend built without them (every one `memprobe calibrate` builds) uses DDP's defaults.
    """
    if base.strategy is not Strategy.DDP:
        return {}
    return {
        "ddp_buckets": {
            "bucket_cap_mb": getattr(backend, "bucket_cap_mb", DDP_DEFAULT_BUCKET_CAP_MB),
            "gradient_as_bucket_view": getattr(
                backend, "gradient_as_bucket_view", DDP_DEFAULT_GRADIENT_AS_BUCKET_VIEW
            ),
        }
    }


def _limit_searches(
    log: MeasurementLog, base: StepConfig, spec: ArchSpec, budget_bytes: int, calibration: Calibration
) -> list[LimitSearch]:
    """The largest batch at 4 and 8 units, and the largest patch at batch 2; a failed one is reported."""
    searches: list[LimitSearch] = []
    for k in (4, 8):
        patch = design_patch(spec, (k, k, k))
        fixed = format_shape(patch)
        try:
            result = search_largest_batch(
                log, replace(base, patch=patch, batch=1), budget_bytes, calibration, spec
            )
        except ModelError as error:
            searches.append(LimitSearch("batch", fixed, SearchResult(0), f"failed: {error}"))
            continue
        searches.append(LimitSearch("batch", fixed, result, str(result.largest)))
    try:
        result = search_largest_patch(log, replace(base, batch=2), spec, budget_bytes, calibration)
    except ModelError as error:
        searches.append(LimitSearch("patch", "batch 2", SearchResult(0), f"failed: {error}"))
        return searches
    units = patch_units(spec)
    answer = "x".join(str(result.largest * u) for u in units) if result.largest else "none"
    searches.append(LimitSearch("patch", "batch 2", result, answer))
    return searches
