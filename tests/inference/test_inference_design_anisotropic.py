"""Inference design points for networks that pool anisotropically (nnU-Net's topologies)."""

from __future__ import annotations

import pytest

from memprobe.core.archs.registry import axis_divisors, resolve_arch
from memprobe.core.inference_config import make_inference_config
from memprobe.inference.calibration_run import inference_design_points, nnunet_design_points


@pytest.mark.parametrize(
    "arch", ["nnunet-resenc[122.122.222.222.222.122]", "nnunet[122.222.222.222]", "unet"]
)
@pytest.mark.parametrize("design", [inference_design_points, nnunet_design_points])
def test_every_window_is_one_the_network_takes(arch: str, design: object) -> None:
    """Windows follow each axis's divisor (an isotropic unit made 32x32x32 windows a 1x2x2 pooling cannot take)."""
    spec = resolve_arch(arch)
    divisors = axis_divisors(spec)
    base = make_inference_config(arch, tuple(2 * d for d in divisors), tuple(4 * d for d in divisors))
    points = design(base, spec)  # type: ignore[operator]
    for config in (*points.fit, *points.heldout):
        assert all(r % d == 0 for r, d in zip(config.roi, divisors, strict=True)), config.label()
        assert all(i >= r for i, r in zip(config.image_shape, config.roi, strict=True)), config.label()
