"""Tests of memprobe.formula.terms and memprobe.formula.fit on synthetic measurements with a known truth."""

from __future__ import annotations

import math

import pytest

from memprobe.core.archs.registry import ArchSpec, get_arch, resolve_arch
from memprobe.core.config import StepConfig
from memprobe.core.measurement import Environment, Measurement
from memprobe.formula.fit import fit_parameter_model, fit_phase_coefficients, fit_quality, relative_errors
from memprobe.formula.terms import TERMS, evaluate, predict_parameter_count, stage_voxels, term_values

ENVIRONMENT = Environment("trace", "trace")
TRUE_COEFFICIENTS = {
    "forward": {
        "constant": 3e8,
        "parameters": 16.0,
        "feature_maps": 20.0,
        "input_voxels": 4.0,
        "output_voxels": 12.0,
    },
    "backward": {
        "constant": 2e8,
        "parameters": 24.0,
        "feature_maps": 14.0,
        "input_voxels": 0.0,
        "output_voxels": 30.0,
    },
    "optimizer": {
        "constant": 1e8,
        "parameters": 40.0,
        "feature_maps": 0.0,
        "input_voxels": 4.0,
        "output_voxels": 0.0,
    },
}
TRUE_PARAMETERS = {"constant": 5e6, "in_channels": 1000.0, "out_channels": 500.0, "tokens": 0.0}


def _synthetic(
    spec: ArchSpec,
    coefficients: dict[str, dict[str, float]],
    parameters: dict[str, float],
    *,
    unit: int = 16,
    deep_supervision: bool = False,
) -> list[Measurement]:
    """Measurements whose phase peaks are exactly the formula with the given coefficients."""
    measurements = []
    for k in (2, 4, 6, 8):
        for batch in (1, 2, 3):
            for cin, cout in ((1, 2), (4, 2), (1, 8), (3, 5)):
                patch = (unit * k, unit * k, unit * (k + 1))
                count = round(predict_parameter_count(parameters, spec, patch, cin, cout))
                terms = term_values(spec, patch, batch, cin, cout, count, deep_supervision)
                peaks = {
                    phase: round(sum(c.get(t, 0.0) * terms[t] for t in TERMS))
                    for phase, c in coefficients.items()
                }
                config = StepConfig(
                    arch=spec.name,
                    patch=patch,
                    batch=batch,
                    in_channels=cin,
                    out_channels=cout,
                    deep_supervision=deep_supervision,
                )
                measurements.append(
                    Measurement(
                        config,
                        ENVIRONMENT,
                        max(peaks.values()),
                        phase_peaks_bytes=peaks,
                        parameter_count=count,
                    )
                )
    return measurements


@pytest.mark.parametrize("arch", ["mednext", "basicunet", "segresnet", "unetr", "tests.tiny_models:tiny_net"])
def test_batch_dependent_terms_scale_linearly(arch: str) -> None:
    """Every per-sample term doubles with the batch; constant and parameters do not change."""
    spec = resolve_arch(arch)
    one = term_values(spec, (64, 64, 64), 1, 1, 2, 1e6)
    for batch in (2, 3, 7):
        many = term_values(spec, (64, 64, 64), batch, 1, 2, 1e6)
        for term in ("feature_maps", "input_voxels", "output_voxels", "attention"):
            assert many[term] == pytest.approx(batch * one[term])
        assert many["constant"] == one["constant"] == 1.0 and many["parameters"] == one["parameters"] == 1e6


def test_term_values_for_mednext() -> None:
    """feature_maps sums voxels times width over the halving stages; logits count every output voxel."""
    spec = get_arch("mednext")
    terms = term_values(spec, (64, 64, 64), 2, 3, 4, 123.0)
    stages = [64**3, 32**3, 16**3, 8**3, 4**3]
    assert stage_voxels((64, 64, 64), 5) == stages
    assert terms["feature_maps"] == 2 * sum(v * w for v, w in zip(stages, spec.stage_features, strict=True))
    assert terms["input_voxels"] == 2 * 64**3 * 3
    assert terms["output_voxels"] == 2 * 64**3 * 4
    assert terms["attention"] == 0.0 and terms["parameters"] == 123.0


def test_deep_supervision_adds_head_logits() -> None:
    """With deep supervision the output term also counts the lower-resolution heads."""
    spec = get_arch("mednext")
    plain = term_values(spec, (64, 64, 64), 1, 1, 2, 0.0)
    heads = term_values(spec, (64, 64, 64), 1, 1, 2, 0.0, deep_supervision=True)
    assert heads["output_voxels"] == 2 * sum(stage_voxels((64, 64, 64), 5))
    assert heads["output_voxels"] > plain["output_voxels"]


def test_attention_grows_with_tokens_squared() -> None:
    """UNETR's attention term is heads times tokens squared, per sample."""
    spec = get_arch("unetr")
    small = term_values(spec, (64, 64, 64), 1, 1, 2, 0.0)["attention"]
    large = term_values(spec, (128, 128, 128), 1, 1, 2, 0.0)["attention"]
    assert small == spec.attention_heads * (64**3 / 16**3) ** 2
    assert large == pytest.approx(64 * small)


def test_evaluate_takes_the_largest_phase() -> None:
    """The predicted peak is the largest of the phase sums."""
    terms = {"constant": 1.0, "parameters": 10.0}
    coefficients = {"forward": {"constant": 5.0, "parameters": 1.0}, "backward": {"parameters": 3.0}}
    assert evaluate(coefficients, terms) == 30.0


@pytest.mark.parametrize("arch", ["mednext", "basicunet", "dynunet"])
def test_fit_recovers_known_coefficients(arch: str) -> None:
    """Synthetic peaks from known non-negative coefficients are reproduced to 1e-6 relative."""
    spec = get_arch(arch)
    measurements = _synthetic(spec, TRUE_COEFFICIENTS, TRUE_PARAMETERS, unit=spec.divisor)
    fitted = fit_phase_coefficients(spec, measurements)
    assert set(fitted) == set(TRUE_COEFFICIENTS)
    assert all(value >= 0 for phase in fitted.values() for value in phase.values())
    for m in measurements:
        c = m.config
        terms = term_values(
            spec, c.patch, c.batch, c.in_channels, c.out_channels, float(m.parameter_count or 0)
        )
        for phase, peak in m.phase_peaks_bytes.items():
            predicted = sum(fitted[phase].get(t, 0.0) * v for t, v in terms.items())
            assert predicted == pytest.approx(peak, rel=1e-6)
        assert evaluate(fitted, terms) == pytest.approx(m.peak_allocated_bytes, rel=1e-6)


def test_fit_quality_of_an_exact_fit_is_near_zero() -> None:
    """An exact fit has near-zero error on its points and on held-out ones."""
    spec = get_arch("mednext")
    measurements = _synthetic(spec, TRUE_COEFFICIENTS, TRUE_PARAMETERS)
    coefficients = fit_phase_coefficients(spec, measurements[:30])
    parameters = fit_parameter_model(spec, measurements[:30])
    quality = fit_quality(spec, coefficients, parameters, measurements[:30], measurements[30:])
    assert quality.points == 30 and quality.heldout_points == len(measurements) - 30
    assert quality.max_relative_error < 1e-6 and (quality.heldout_max_relative_error or 0) < 1e-6
    assert max(relative_errors(spec, coefficients, parameters, measurements)) < 1e-6


def test_fit_ignores_failed_measurements() -> None:
    """Out-of-memory and failed steps carry no peak and do not disturb the fit."""
    spec = get_arch("mednext")
    good = _synthetic(spec, TRUE_COEFFICIENTS, TRUE_PARAMETERS)
    config = StepConfig(arch="mednext", patch=(256, 256, 256), batch=64)
    bad = [
        Measurement(config, ENVIRONMENT, None, oom=True),
        Measurement(config, ENVIRONMENT, None, error="crash"),
    ]
    assert fit_phase_coefficients(spec, good + bad) == fit_phase_coefficients(spec, good)
    with pytest.raises(ValueError):
        fit_phase_coefficients(spec, bad)


def test_fit_parameter_model_recovers_a_linear_count() -> None:
    """A parameter count linear in the channels is recovered exactly."""
    spec = get_arch("mednext")
    model = fit_parameter_model(spec, _synthetic(spec, TRUE_COEFFICIENTS, TRUE_PARAMETERS))
    for term, value in TRUE_PARAMETERS.items():
        assert model[term] == pytest.approx(value, rel=1e-6, abs=1e-6)
    assert predict_parameter_count(model, spec, (128, 128, 128), 7, 9) == pytest.approx(5e6 + 7000 + 4500)


def test_fit_parameter_model_with_tokens() -> None:
    """UNETR's count also grows with the token count (its position embedding): recovered exactly."""
    spec = get_arch("unetr")
    truth = {"constant": 9e7, "in_channels": 3000.0, "out_channels": 17.0, "tokens": 768.0}
    model = fit_parameter_model(spec, _synthetic(spec, TRUE_COEFFICIENTS, truth))
    for term, value in truth.items():
        assert model[term] == pytest.approx(value, rel=1e-6)


def test_fit_parameter_model_with_constant_channels() -> None:
    """Terms that never vary are left at zero and the count is carried by the constant."""
    spec = get_arch("mednext")
    measurements = [
        m
        for m in _synthetic(spec, TRUE_COEFFICIENTS, TRUE_PARAMETERS)
        if (m.config.in_channels, m.config.out_channels) == (1, 2)
    ]
    model = fit_parameter_model(spec, measurements)
    assert model["in_channels"] == model["out_channels"] == 0.0
    assert model["constant"] == pytest.approx(5e6 + 1000 + 1000)
    with pytest.raises(ValueError):
        fit_parameter_model(
            spec, [Measurement(StepConfig(arch="mednext", patch=(64, 64, 64), batch=1), ENVIRONMENT, 1)]
        )


def test_stage_voxels_never_below_one() -> None:
    """Deep stages of a small patch count at least one voxel per dimension."""
    assert stage_voxels((16, 16, 16), 6)[-1] == 1
    assert stage_voxels((16, 32, 64), 3) == [math.prod((16, 32, 64)), 8 * 16 * 32, 4 * 8 * 16]


def test_a_reserve_above_allocated_is_never_below_it() -> None:
    """A direct reserve fit is floored at the allocated peak; a gap fit adds to it."""
    from memprobe.formula.terms import ABOVE_ALLOCATED, evaluate_reserved

    terms = {"constant": 1.0, "feature_maps": 100.0}
    allocated = {"forward": {"constant": 10.0, "feature_maps": 1.0}}
    assert evaluate_reserved({"forward": {"constant": 5.0}}, allocated, terms) == 110.0
    assert evaluate_reserved({ABOVE_ALLOCATED: {"constant": 7.0}}, allocated, terms) == 117.0


def test_a_constant_gap_is_fitted_exactly() -> None:
    """A reserve that is the allocated peak plus a fixed 20 MiB is reproduced on every point."""
    from dataclasses import replace

    from memprobe.formula.fit import RESERVED, fit_reserved_coefficients

    spec = get_arch("mednext")
    measurements = [
        replace(m, peak_reserved_bytes=(m.peak_allocated_bytes or 0) + 20 * 2**20)
        for m in _synthetic(spec, TRUE_COEFFICIENTS, TRUE_PARAMETERS)
    ]
    allocated = fit_phase_coefficients(spec, measurements)
    parameters = fit_parameter_model(spec, measurements)
    reserved = fit_reserved_coefficients(spec, measurements, allocated, parameters)
    errors = relative_errors(spec, reserved, parameters, measurements, RESERVED, allocated)
    assert max(errors) < 1e-6
