"""Hand-made objects several test modules share."""

from __future__ import annotations

from memprobe.formula.calibration import Calibration, FitQuality


def make_calibration(
    arch: str = "mednext",
    precision: str = "fp32",
    *,
    device: str = "trace",
    per_voxel: float = 40.0,
) -> Calibration:
    """A calibration with simple coefficients: about 3.6 GiB per sample at 128^3 for MedNeXt at 40 B/voxel."""
    return Calibration(
        arch=arch,
        device=device,
        precision=precision,
        optimizer="adamw",
        deep_supervision=False,
        phase_coefficients={
            "forward": {
                "constant": 1e8,
                "parameters": 16.0,
                "feature_maps": per_voxel,
                "input_voxels": 4.0,
                "output_voxels": 8.0,
            },
            "backward": {"constant": 1e8, "parameters": 20.0, "feature_maps": 0.75 * per_voxel},
        },
        parameter_model={"constant": 5.6e6, "in_channels": 100.0, "out_channels": 100.0, "tokens": 0.0},
        quality=FitQuality(10, 0.01, 0.02, 4, 0.015, 0.03),
        created_at="2026-01-01T00:00:00+00:00",
        fit_range={
            "batch": [1, 64],
            "voxels": [32**3, 512**3],
            "in_channels": [1, 8],
            "out_channels": [1, 16],
        },
    )
