"""The benchmark baselines: the seed's formula reproduced exactly, nnU-Net's proxy and its fitted form."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.baselines import (
    feature_map_volume,
    fit_feature_map_model,
    nnunet_proxy_bytes,
    seed_estimate_bytes,
    seed_estimate_gb,
)
from memprobe.core.archs.registry import get_arch

# Feature-map elements per sample and per "x3" of the seed at 128^3: stages 128^3 x 32,
# 64^3 x 64, 32^3 x 128, 16^3 x 256, 8^3 x 320 (widths capped at 320).
ELEMENTS_128 = 2097152 * 32 + 262144 * 64 + 32768 * 128 + 4096 * 256 + 512 * 320


def test_seed_fp32_128_cubed_batch_4_by_hand() -> None:
    activations_gb = ELEMENTS_128 * 3 * 4 * 4 / 1024**3  # x3, batch 4, 4 bytes
    expected = activations_gb * 2 * 1.2 + 0.1 + 0.2
    estimated = seed_estimate_gb((128, 128, 128), 4, 1, 2, mixed_precision=False)
    assert estimated == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(9.880078125)


def test_seed_mixed_precision_halves_the_activations() -> None:
    assert seed_estimate_gb((128, 128, 128), 4, 1, 2) == pytest.approx(5.0900390625)
    # The seed's own test: mixed precision needs between 0.4 and 0.7 of fp32.
    ratio = seed_estimate_gb((128, 128, 128), 2, 1, 2) / seed_estimate_gb(
        (128, 128, 128), 2, 1, 2, mixed_precision=False
    )
    assert 0.4 < ratio < 0.7


def test_seed_matches_the_documented_finding() -> None:
    # FINDINGS.md: the seed says 5.09 GB for MedNeXt-S 128^3 batch 2 in fp32.
    assert seed_estimate_gb((128, 128, 128), 2, 1, 2, mixed_precision=False) == pytest.approx(5.09, abs=0.005)


def test_seed_deep_supervision_adds_head_logits_below_full_resolution() -> None:
    heads = (262144 + 32768 + 4096 + 512) * 6 * 4  # stages 1-4, 6 classes, batch 4
    expected = (ELEMENTS_128 * 3 * 4 + heads) * 2 / 1024**3 * 2.4 + 0.3
    estimated = seed_estimate_gb((128, 128, 128), 4, 1, 6, deep_supervision=True)
    assert estimated == pytest.approx(expected, rel=1e-12)


def test_seed_ignores_input_channels_and_reports_bytes() -> None:
    one = seed_estimate_bytes((64, 96, 96), 2, 1, 2, mixed_precision=False)
    assert one == seed_estimate_bytes((64, 96, 96), 2, 4, 2, mixed_precision=False)
    assert one == pytest.approx(seed_estimate_gb((64, 96, 96), 2, 1, 2, mixed_precision=False) * 1024**3)


def test_seed_halves_odd_sizes_fractionally() -> None:
    # numpy's `current_size / 2` keeps fractions: 40 -> 20 -> 10 -> 5 -> 2.5
    elements = sum(40**3 / 8**s * w for s, w in enumerate((32, 64, 128, 256, 320))) * 3
    assert seed_estimate_gb((40, 40, 40), 1, 1, 2, mixed_precision=False) == pytest.approx(
        elements * 4 * 2.4 / 1024**3 + 0.3
    )


def test_feature_map_volume_sums_stages() -> None:
    spec = get_arch("mednext")
    expected = 2 * (64**3 * 32 + 32**3 * 64 + 16**3 * 128 + 8**3 * 256 + 4**3 * 512)
    assert feature_map_volume(spec, (64, 64, 64), 2) == expected


def test_nnunet_proxy_is_exact_at_its_reference_and_linear_in_volume() -> None:
    spec = get_arch("basicunet")
    reference = dict(reference_patch=(64, 64, 64), reference_batch=2, reference_bytes=3e9)
    assert nnunet_proxy_bytes(spec, (64, 64, 64), 2, **reference) == pytest.approx(3e9)
    assert nnunet_proxy_bytes(spec, (64, 64, 64), 4, **reference) == pytest.approx(6e9)
    assert nnunet_proxy_bytes(spec, (128, 128, 128), 2, **reference) == pytest.approx(24e9)


def test_fitted_feature_map_model_recovers_an_exact_line() -> None:
    spec = get_arch("mednext")
    points = [
        (patch, batch, 5e8 + 12.0 * feature_map_volume(spec, patch, batch))
        for patch, batch in (((32, 32, 32), 1), ((64, 64, 64), 2), ((128, 128, 128), 1))
    ]
    model = fit_feature_map_model(spec, points)
    assert model.scale_bytes == pytest.approx(12.0, rel=1e-9)
    assert model.intercept_bytes == pytest.approx(5e8, rel=1e-9)
    assert model.predict_bytes(spec, (96, 96, 96), 3) == pytest.approx(
        5e8 + 12.0 * feature_map_volume(spec, (96, 96, 96), 3), rel=1e-9
    )


def test_fitted_feature_map_model_minimises_relative_error() -> None:
    # A line cannot pass through all three; weighting by 1/peak keeps the small point's
    # relative error as small as the large points'.
    spec = get_arch("basicunet")
    points = [((32, 32, 32), 1, 1e8), ((64, 64, 64), 1, 1e9), ((128, 128, 128), 1, 9e9)]
    model = fit_feature_map_model(spec, points)
    errors = [abs(model.predict_bytes(spec, p, b) - peak) / peak for p, b, peak in points]
    assert max(errors) < 0.5
    unweighted = np.polyfit(
        [feature_map_volume(spec, p, b) for p, b, _ in points], [x for *_, x in points], 1
    )
    small = np.polyval(unweighted, feature_map_volume(spec, (32, 32, 32), 1))
    assert abs(small - 1e8) / 1e8 > errors[0]


def test_fitted_feature_map_model_needs_two_volumes() -> None:
    with pytest.raises(ValueError, match="two different"):
        fit_feature_map_model(get_arch("unet"), [((64, 64, 64), 1, 1e9), ((64, 64, 64), 1, 1.1e9)])
