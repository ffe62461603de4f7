"""Fit the formula's coefficients to measurements by non-negative least squares.

Rows are weighted by 1/peak so the fit minimises relative error: a 2 GiB miss matters as
much at 40 GiB as 50 MiB does at 1 GiB. Coefficients are non-negative because every term
is memory that is held, never memory that is returned.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.optimize import nnls

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.errors import InvalidInputError
from memprobe.formula.calibration import FitQuality
from memprobe.formula.terms import (
    ABOVE_ALLOCATED,
    PARAMETER_TERMS,
    active_terms,
    attention_tokens,
    evaluate,
    evaluate_reserved,
    predict_parameter_count,
    term_values,
)


class Fittable(Protocol):
    """What a fit reads of a measurement: a training step's, or another kind's (inference)."""

    @property
    def config(self) -> Any: ...
    @property
    def ok(self) -> bool: ...
    @property
    def peak_allocated_bytes(self) -> int | None: ...
    @property
    def peak_reserved_bytes(self) -> int | None: ...
    @property
    def phase_peaks_bytes(self) -> dict[str, int]: ...
    @property
    def reserved_phase_peaks_bytes(self) -> dict[str, int]: ...
    @property
    def parameter_count(self) -> int | None: ...
    @property
    def context_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class TermModel:
    """The terms a fit uses: their names, their values with the measured parameter count (to fit),
    and with the parameter model's (to predict, as a plan would)."""

    names: tuple[str, ...]
    measured: Callable[[Any], dict[str, float]]
    predicted: Callable[[Any, Mapping[str, float]], dict[str, float]]


def training_terms(spec: ArchSpec) -> TermModel:
    """The training step's terms (``formula.term_values``) for ``spec``."""

    def values(m: Any, parameters: float) -> dict[str, float]:
        c = m.config
        return term_values(
            spec, c.patch, c.batch, c.in_channels, c.out_channels, parameters, c.deep_supervision
        )

    def predicted(m: Any, model: Mapping[str, float]) -> dict[str, float]:
        c = m.config
        return values(m, predict_parameter_count(model, spec, c.patch, c.in_channels, c.out_channels))

    return TermModel(tuple(active_terms(spec)), lambda m: values(m, float(m.parameter_count or 0)), predicted)


def fit_parameter_model(spec: ArchSpec, measurements: Sequence[Fittable]) -> dict[str, float]:
    """Parameter count as a linear function of channels (and tokens): exact for these networks."""
    rows, counts = [], []
    for m in measurements:
        if m.parameter_count is None:
            continue
        c = m.config
        rows.append([1.0, c.in_channels, c.out_channels, attention_tokens(spec, c.patch)])
        counts.append(float(m.parameter_count))
    if not rows:
        raise ValueError("no measurement carries a parameter count")
    matrix = np.array(rows)
    used = [i for i in range(matrix.shape[1]) if i == 0 or np.ptp(matrix[:, i]) > 0]
    solution, *_ = np.linalg.lstsq(matrix[:, used], np.array(counts), rcond=None)
    model = dict.fromkeys(PARAMETER_TERMS, 0.0)
    for index, value in zip(used, solution, strict=True):
        model[PARAMETER_TERMS[index]] = float(value)
    return model


STEP_SEGMENT = "step"  # the whole step's peak, as one segment
ALLOCATED, RESERVED = "allocated", "reserved"  # the two peaks a calibration fits


def _segment_peaks(measurement: Fittable, quantity: str = ALLOCATED) -> dict[str, int]:
    if quantity == RESERVED:
        return {**measurement.reserved_phase_peaks_bytes, STEP_SEGMENT: measurement.peak_reserved_bytes or 0}
    return {**measurement.phase_peaks_bytes, STEP_SEGMENT: measurement.peak_allocated_bytes or 0}


def _peak(measurement: Fittable, quantity: str) -> int:
    return _segment_peaks(measurement, quantity)[STEP_SEGMENT]


def has_reserved(measurements: Sequence[Fittable]) -> bool:
    """Whether every successful measurement carries a reserve (measured or simulated) to fit."""
    usable = [m for m in measurements if m.ok]
    return bool(usable) and all(m.peak_reserved_bytes for m in usable)


def candidate_segmentations(names: set[str]) -> list[list[str]]:
    """Ways to cut the step into segments, finest first: windows, phases, the whole step.

    A whole phase's peak is the largest of its windows' and bends where the argmax moves
    between ops; each window's peak is linear in the terms where the op sequence is the same
    at every size. Where it is not (a network that branches on shapes), coarser segments fit
    better, so every cut is fitted and the one with the smallest error on the points is kept.
    """
    names = names - {STEP_SEGMENT}
    phases = sorted(n for n in names if "." not in n)
    windows = sorted(n for n in names if not any(other.startswith(n + ".") for other in names))
    candidates = [windows] if windows != phases else []
    candidates += [phases] if phases else []
    return [*candidates, [STEP_SEGMENT]]


def _fit_segments(
    matrix: np.ndarray, terms: Sequence[str], usable: Sequence[Fittable], segments: list[str], quantity: str
) -> dict[str, dict[str, float]] | None:
    """One coefficient set per segment; None when a segment has fewer points than coefficients."""
    coefficients: dict[str, dict[str, float]] = {}
    for segment in segments:
        peaks = np.array([float(_segment_peaks(m, quantity).get(segment, 0)) for m in usable])
        keep = peaks > 0
        if keep.sum() < len(terms):
            return None
        weights = 1.0 / peaks[keep]
        scale = matrix[keep].max(axis=0)
        scale[scale == 0] = 1.0
        solution, _ = nnls((matrix[keep] / scale) * weights[:, None], np.ones(keep.sum()), maxiter=5000)
        coefficients[segment] = {t: float(v) for t, v in zip(terms, solution / scale, strict=True)}
    return coefficients


def fit_phase_coefficients(
    spec: ArchSpec,
    measurements: Sequence[Fittable],
    quantity: str = ALLOCATED,
    model: TermModel | None = None,
) -> dict[str, dict[str, float]]:
    """Non-negative coefficients per segment of the step, for the segmentation that fits best.

    ``quantity`` is the peak to fit: ``allocated`` or ``reserved``; ``model`` the terms
    (default: the training step's).

    Raises:
        InvalidInputError: fewer usable points than coefficients in every segmentation.
    """
    usable = [m for m in measurements if m.ok and _peak(m, quantity) > 0]
    model = model or training_terms(spec)
    terms = model.names
    if len(usable) < len(terms):
        raise InvalidInputError(
            f"only {len(usable)} usable measurements of {spec.name} to fit {len(terms)} coefficients "
            f"of its {quantity} peak: raise --gpu-mem or calibrate on a larger GPU"
        )
    rows = [model.measured(m) for m in usable]
    matrix = np.array([[row[t] for t in terms] for row in rows])
    peaks = [float(_peak(m, quantity)) for m in usable]
    names = {p for m in usable for p in _segment_peaks(m, quantity)}
    best: tuple[float, dict[str, dict[str, float]]] | None = None
    for segments in candidate_segmentations(names):
        coefficients = _fit_segments(matrix, terms, usable, segments, quantity)
        if coefficients is None:
            continue
        worst = max(
            abs(evaluate(coefficients, row) - peak) / peak for row, peak in zip(rows, peaks, strict=True)
        )
        if best is None or worst < best[0] - 1e-9:
            best = (worst, coefficients)
    assert best is not None  # the whole step always has as many points as the check above
    return best[1]


def relative_errors(
    spec: ArchSpec,
    coefficients: dict[str, dict[str, float]],
    parameter_model: dict[str, float],
    measurements: Sequence[Fittable],
    quantity: str = ALLOCATED,
    allocated: dict[str, dict[str, float]] | None = None,
    model: TermModel | None = None,
) -> list[float]:
    """|predicted - measured| / measured for each successful measurement.

    For the reserved peak, ``allocated`` are the allocated coefficients the reserve builds on.
    """
    model = model or training_terms(spec)
    errors = []
    for m in measurements:
        measured = _peak(m, quantity) if m.ok else 0
        if not measured:
            continue
        terms = model.predicted(m, parameter_model)
        predicted = (
            evaluate_reserved(coefficients, allocated, terms)
            if quantity == RESERVED and allocated is not None
            else evaluate(coefficients, terms)
        )
        errors.append(abs(predicted - measured) / measured)
    return errors


def fit_reserved_coefficients(
    spec: ArchSpec,
    measurements: Sequence[Fittable],
    allocated: dict[str, dict[str, float]],
    parameter_model: dict[str, float],
    model: TermModel | None = None,
) -> dict[str, dict[str, float]]:
    """The reserve, fitted directly per segment or as the gap above the allocated peak.

    Where a network's peaks are a few hundred MiB, the allocator's 2 and 20 MiB segments make
    the reserve a staircase that a direct fit follows poorly; its gap above the (well-fitted)
    allocated peak is a small quantity whose error matters little. Where peaks are large, the
    direct fit is closer. Both are fitted; the one with the smaller worst error on the fitted
    points is kept, as segmentations are.
    """
    usable = [m for m in measurements if m.ok and m.peak_reserved_bytes]
    model = model or training_terms(spec)
    direct = fit_phase_coefficients(spec, usable, RESERVED, model)
    terms = model.names
    matrix = np.array([[model.measured(m)[t] for t in terms] for m in usable])
    reserved = np.array([float(m.peak_reserved_bytes or 0) for m in usable])
    gap = reserved - np.array([float(m.peak_allocated_bytes or 0) for m in usable])
    scale = matrix.max(axis=0)
    scale[scale == 0] = 1.0
    weights = 1.0 / reserved
    solution, _ = nnls((matrix / scale) * weights[:, None], np.maximum(gap, 0.0) * weights, maxiter=5000)
    above = {ABOVE_ALLOCATED: {t: float(v) for t, v in zip(terms, solution / scale, strict=True)}}
    worst = lambda c: max(
        relative_errors(spec, c, parameter_model, usable, RESERVED, allocated, model), default=0.0
    )
    return direct if worst(direct) <= worst(above) else above


def fit_quality(
    spec: ArchSpec,
    coefficients: dict[str, dict[str, float]],
    parameter_model: dict[str, float],
    fitted: Sequence[Fittable],
    heldout: Sequence[Fittable],
    quantity: str = ALLOCATED,
    allocated: dict[str, dict[str, float]] | None = None,
    model: TermModel | None = None,
) -> FitQuality:
    own = relative_errors(spec, coefficients, parameter_model, fitted, quantity, allocated, model)
    held = relative_errors(spec, coefficients, parameter_model, heldout, quantity, allocated, model)
    return FitQuality(
        points=len(own),
        median_relative_error=statistics.median(own) if own else 0.0,
        max_relative_error=max(own, default=0.0),
        heldout_points=len(held),
        heldout_median_relative_error=statistics.median(held) if held else None,
        heldout_max_relative_error=max(held) if held else None,
    )


def measured_range(measurements: Sequence[Fittable]) -> dict[str, list[int]]:
    """The smallest and largest of each size the configurations span (their ``range_values``):
    batch, voxels and channels of a training step; window batch, window and image voxels and
    channels of an inference."""
    seen: dict[str, list[int]] = {}
    for m in measurements:
        for name, value in m.config.range_values().items():
            seen.setdefault(name, []).append(value)
    return {name: [min(values), max(values)] for name, values in seen.items()}


@dataclass(frozen=True)
class FittedFormula:
    """What one fit finds, for a training step or an inference: the fields of a Calibration it fills."""

    phase_coefficients: dict[str, dict[str, float]]
    parameter_model: dict[str, float]
    quality: FitQuality
    reserved_coefficients: dict[str, dict[str, float]] | None
    reserved_quality: FitQuality | None
    fit_range: dict[str, list[int]]
    context_bytes: int | None

    def fields(self) -> dict[str, Any]:
        """As keyword arguments of a Calibration."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def fit_formula(
    spec: ArchSpec,
    fitted: Sequence[Fittable],
    heldout: Sequence[Fittable],
    model: TermModel | None = None,
    *,
    points: str = "calibration steps",
    advice: str = "raise --gpu-mem, calibrate on a larger GPU, or see the failed points' errors",
) -> FittedFormula:
    """Fit allocated (and, where every point has one, reserved) coefficients to ``fitted``; test on ``heldout``.

    ``model`` gives the terms (default: the training step's); ``points`` and ``advice`` word the
    error when too few points ran.

    Raises:
        InvalidInputError: fewer than 3 points ran, or fewer than the coefficients to fit.
    """
    usable = [m for m in fitted if m.ok]
    if len(usable) < 3:
        raise InvalidInputError(
            f"only {len(usable)} of {len(fitted)} {points} of {spec.name} ran (the others ran out of memory "
            f"or failed): {advice}"
        )
    parameters = fit_parameter_model(spec, usable)
    coefficients = fit_phase_coefficients(spec, usable, model=model)
    reserved = reserved_quality = None
    if has_reserved(usable):
        reserved = fit_reserved_coefficients(spec, usable, coefficients, parameters, model)
        reserved_quality = fit_quality(
            spec, reserved, parameters, usable, heldout, RESERVED, coefficients, model
        )
    contexts = sorted(m.context_bytes for m in usable if m.context_bytes is not None)
    return FittedFormula(
        phase_coefficients=coefficients,
        parameter_model=parameters,
        quality=fit_quality(spec, coefficients, parameters, usable, heldout, model=model),
        reserved_coefficients=reserved,
        reserved_quality=reserved_quality,
        fit_range=measured_range(usable),
        context_bytes=contexts[len(contexts) // 2] if contexts else None,
    )
