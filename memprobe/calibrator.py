"""Calibrate: measure an architecture across sizes, fit the formula, search the limits, store it all."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from memprobe.archs.registry import ArchSpec, resolve_arch, smallest_patch_size
from memprobe.calibration import Calibration
from memprobe.config import StepConfig
from memprobe.errors import InvalidInputError
from memprobe.fit import (
    RESERVED,
    fit_parameter_model,
    fit_phase_coefficients,
    fit_quality,
    fit_reserved_coefficients,
    has_reserved,
)
from memprobe.measurement import Measurement
from memprobe.measuring import MeasurementLog
from memprobe.search import SearchResult, guided_search

MAX_BATCH = 512


@dataclass(frozen=True)
class DesignPoints:
    """Configurations measured to fit the formula, and others held out to test it."""

    fit: tuple[StepConfig, ...]
    heldout: tuple[StepConfig, ...]


def patch_unit(spec: ArchSpec) -> int:
    """The step between calibration patch sizes: the divisor; 16 for a user model, whose divisor is unknown."""
    return max(spec.divisor, 16) if spec.custom else spec.divisor


def design_points(base: StepConfig, spec: ArchSpec) -> DesignPoints:
    """Isotropic patches of 2, 4, 6 and 8 divisors at batch 1 and 2, plus two channel variants
    to fit. Held out, sharing no patch with those and chosen before any result was seen: an
    anisotropic patch (32x160x160 for a divisor of 16), a 5-divisor cube at batch 3, a
    3x5x7-divisor patch with other channel counts, and a patch beyond the fitted range."""
    unit = patch_unit(spec)
    cube = lambda k: (unit * k,) * 3
    fit = [
        replace(base, patch=cube(k), batch=b, in_channels=1, out_channels=2)
        for k in (2, 4, 6, 8)
        for b in (1, 2)
    ]
    fit += [
        replace(base, patch=cube(4), batch=1, in_channels=4, out_channels=2),
        replace(base, patch=cube(4), batch=1, in_channels=1, out_channels=8),
    ]
    heldout = (
        replace(base, patch=(unit * 2, unit * 10, unit * 10), batch=2, in_channels=1, out_channels=2),
        replace(base, patch=cube(5), batch=3, in_channels=1, out_channels=2),
        replace(base, patch=(unit * 3, unit * 5, unit * 7), batch=2, in_channels=2, out_channels=3),
        replace(base, patch=(unit * 12, unit * 8, unit * 8), batch=1, in_channels=1, out_channels=2),
    )
    return DesignPoints(tuple(fit), heldout)


@dataclass(frozen=True)
class LimitSearch:
    """One search for a largest size: what was searched, the answer, and its cost in steps."""

    kind: str  # "batch" or "patch"
    fixed: str  # the patch (for a batch search) or batch (for a patch search) held fixed
    result: SearchResult
    answer: str


@dataclass(frozen=True)
class CalibrationReport:
    calibration: Calibration
    fitted: tuple[Measurement, ...]
    heldout: tuple[Measurement, ...]
    searches: tuple[LimitSearch, ...] = field(default=())
    measured: int = 0
    reused: int = 0


def fit_calibration(
    spec: ArchSpec,
    base: StepConfig,
    device: str,
    fitted: list[Measurement],
    heldout: list[Measurement],
    environment: dict[str, object],
) -> Calibration:
    """Fit coefficients to ``fitted`` and report their error on ``heldout`` too."""
    usable = [m for m in fitted if m.ok]
    if len(usable) < 3:
        raise InvalidInputError(
            f"only {len(usable)} of {len(fitted)} calibration steps of {spec.name} ran within the budget: "
            "raise --budget or calibrate on a larger GPU"
        )
    parameters = fit_parameter_model(spec, usable)
    coefficients = fit_phase_coefficients(spec, usable)
    reserved = reserved_quality = None
    if has_reserved(usable):
        reserved = fit_reserved_coefficients(spec, usable, coefficients, parameters)
        reserved_quality = fit_quality(spec, reserved, parameters, usable, heldout, RESERVED, coefficients)
    contexts = sorted(m.context_bytes for m in usable if m.context_bytes is not None)
    return Calibration(
        arch=spec.name,
        device=device,
        precision=base.precision.value,
        optimizer=base.optimizer.value,
        deep_supervision=base.deep_supervision,
        phase_coefficients=coefficients,
        parameter_model=parameters,
        quality=fit_quality(spec, coefficients, parameters, usable, heldout),
        environment=environment,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        reserved_coefficients=reserved,
        reserved_quality=reserved_quality,
        fit_range=measured_range(usable),
        context_bytes=contexts[len(contexts) // 2] if contexts else None,
        step=base.step,
        checkpointing=base.checkpointing,
    )


def measured_range(measurements: list[Measurement]) -> dict[str, list[int]]:
    """The smallest and largest batch, voxels and channel counts among ``measurements``."""
    values = {
        "batch": [m.config.batch for m in measurements],
        "voxels": [m.config.voxels for m in measurements],
        "in_channels": [m.config.in_channels for m in measurements],
        "out_channels": [m.config.out_channels for m in measurements],
    }
    return {name: [min(seen), max(seen)] for name, seen in values.items()}


def search_largest_batch(
    log: MeasurementLog,
    base: StepConfig,
    budget_bytes: int,
    calibration: Calibration | None = None,
    spec: ArchSpec | None = None,
) -> SearchResult:
    """Largest batch for ``base.patch`` within the budget, guided by the calibration when given."""
    predict = None
    if calibration is not None and spec is not None:
        predict = lambda b: calibration.predict_peak_bytes(
            spec,
            base.patch,
            b,
            base.in_channels,
            base.out_channels,
        )
    return guided_search(
        lambda b: log.outcome(replace(base, batch=b)), budget_bytes, predict=predict, upper=MAX_BATCH
    )


def search_largest_patch(
    log: MeasurementLog,
    base: StepConfig,
    spec: ArchSpec,
    budget_bytes: int,
    calibration: Calibration | None = None,
    aspect: tuple[int, int, int] = (1, 1, 1),
    max_voxels: int = 1024**3,
) -> SearchResult:
    """Largest patch ``n * aspect * divisor`` for ``base.batch`` within the budget (n is returned)."""
    unit = patch_unit(spec)
    smallest = -(-smallest_patch_size(spec) // (unit * min(aspect)))
    patch_of = lambda n: tuple(n * a * unit for a in aspect)
    upper = int((max_voxels / math.prod(aspect)) ** (1 / 3) / unit)
    predict = None
    if calibration is not None:
        predict = lambda n: calibration.predict_peak_bytes(
            spec,
            patch_of(n),
            base.batch,
            base.in_channels,
            base.out_channels,
        )
    return guided_search(
        lambda n: log.outcome(replace(base, patch=patch_of(n))),
        budget_bytes,
        size_of=lambda n: float(math.prod(patch_of(n))),
        predict=predict,
        start=smallest,
        upper=upper,
    )


def calibrate(
    log: MeasurementLog, base: StepConfig, budget_bytes: int, *, search: bool = True
) -> CalibrationReport:
    """Measure the design points, fit, then search the largest batch and patch with the fit.

    ``base`` fixes precision, optimizer and deep supervision; its patch and batch are ignored.
    """
    spec = resolve_arch(base.arch)
    points = design_points(base, spec)
    environment = log.backend.environment()
    fitted = [log.measure(config) for config in points.fit]
    heldout = [log.measure(config) for config in points.heldout]
    calibration = fit_calibration(
        spec, base, environment.calibration_device, fitted, heldout, environment.to_dict()
    )
    if log.db is not None:  # stored before the searches: a search that fails must not lose the fit
        log.db.add_calibration(calibration, environment)
    searches: list[LimitSearch] = []
    if search:
        unit = patch_unit(spec)
        for size in (unit * 4, unit * 8):
            config = replace(base, patch=(size,) * 3, batch=1)
            result = search_largest_batch(log, config, budget_bytes, calibration, spec)
            searches.append(LimitSearch("batch", "x".join([str(size)] * 3), result, str(result.largest)))
        result = search_largest_patch(log, replace(base, batch=2), spec, budget_bytes, calibration)
        answer = "x".join([str(result.largest * patch_unit(spec))] * 3) if result.largest else "none"
        searches.append(LimitSearch("patch", "batch 2", result, answer))
    return CalibrationReport(
        calibration,
        tuple(fitted),
        tuple(heldout),
        tuple(searches),
        measured=len(log.taken),
        reused=log.reused,
    )
