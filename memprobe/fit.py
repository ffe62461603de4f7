"""Fit the formula's coefficients to measurements by non-negative least squares.

Rows are weighted by 1/peak so the fit minimises relative error: a 2 GiB miss matters as
much at 40 GiB as 50 MiB does at 1 GiB. Coefficients are non-negative because every term
is memory that is held, never memory that is returned.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from memprobe.archs.registry import ArchSpec
from memprobe.calibration import FitQuality
from memprobe.formula import PARAMETER_TERMS, TERMS, attention_tokens, evaluate, predict_parameter_count, term_values
from memprobe.measurement import Measurement


def _terms(spec: ArchSpec, measurement: Measurement) -> dict[str, float]:
    config = measurement.config
    return term_values(spec, config.patch, config.batch, config.in_channels, config.out_channels,
                       float(measurement.parameter_count or 0), config.deep_supervision)


def fit_parameter_model(spec: ArchSpec, measurements: Sequence[Measurement]) -> dict[str, float]:
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
    for index, value in zip(used, solution):
        model[PARAMETER_TERMS[index]] = float(value)
    return model


def fit_phase_coefficients(spec: ArchSpec, measurements: Sequence[Measurement]) -> dict[str, dict[str, float]]:
    """One set of non-negative coefficients per phase, each fitted to that phase's peaks."""
    usable = [m for m in measurements if m.ok and m.phase_peaks_bytes]
    if not usable:
        raise ValueError("no successful measurement to fit")
    terms = [t for t in TERMS if t != "attention" or spec.attention_token_volume]
    matrix = np.array([[_terms(spec, m)[t] for t in terms] for m in usable])
    coefficients: dict[str, dict[str, float]] = {}
    for phase in fitted_segments({p for m in usable for p in m.phase_peaks_bytes}):
        peaks = np.array([float(m.phase_peaks_bytes.get(phase, 0)) for m in usable])
        keep = peaks > 0
        weights = 1.0 / peaks[keep]
        scale = matrix[keep].max(axis=0)
        scale[scale == 0] = 1.0
        solution, _ = nnls((matrix[keep] / scale) * weights[:, None], np.ones(keep.sum()), maxiter=5000)
        coefficients[phase] = {t: float(v) for t, v in zip(terms, solution / scale)}
    return coefficients


def fitted_segments(names: set[str]) -> list[str]:
    """The segments the formula models: a phase's windows where recorded, else the phase.

    A whole phase's peak is the largest of its windows' and bends where the argmax moves;
    each window's peak is linear in the terms, so modelling windows keeps the fit exact.
    """
    return sorted(n for n in names if not any(other.startswith(n + ".") for other in names))


def relative_errors(spec: ArchSpec, coefficients: dict[str, dict[str, float]],
                    parameter_model: dict[str, float], measurements: Sequence[Measurement]) -> list[float]:
    """|predicted - measured| / measured for each successful measurement."""
    errors = []
    for m in measurements:
        if not m.ok or not m.peak_allocated_bytes:
            continue
        c = m.config
        parameters = predict_parameter_count(parameter_model, spec, c.patch, c.in_channels, c.out_channels)
        terms = term_values(spec, c.patch, c.batch, c.in_channels, c.out_channels, parameters, c.deep_supervision)
        errors.append(abs(evaluate(coefficients, terms) - m.peak_allocated_bytes) / m.peak_allocated_bytes)
    return errors


def fit_quality(spec: ArchSpec, coefficients: dict[str, dict[str, float]], parameter_model: dict[str, float],
                fitted: Sequence[Measurement], heldout: Sequence[Measurement]) -> FitQuality:
    own = relative_errors(spec, coefficients, parameter_model, fitted)
    held = relative_errors(spec, coefficients, parameter_model, heldout)
    return FitQuality(
        points=len(own),
        median_relative_error=statistics.median(own) if own else 0.0,
        max_relative_error=max(own, default=0.0),
        heldout_points=len(held),
        heldout_median_relative_error=statistics.median(held) if held else None,
        heldout_max_relative_error=max(held) if held else None,
    )
