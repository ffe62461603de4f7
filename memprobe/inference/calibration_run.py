"""Calibrate inference: measure sliding windows over small images, fit the formula, check held-out points.

Images stay small (2 to 4 windows an axis), because trace loops over windows in Python; the
image terms carry the fit to whole CT volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from memprobe.backends.recorder import MeasurementLog
from memprobe.calibration_run import patch_unit, patch_units
from memprobe.core.archs.registry import ArchSpec, axis_divisors, resolve_arch
from memprobe.core.inference_config import BlendMode, InferenceConfig, StitchDevice
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.formula.fit import fit_formula
from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration
from memprobe.formula.inference_terms import inference_terms

GPU, CPU = StitchDevice.GPU, StitchDevice.CPU


@dataclass(frozen=True)
class InferenceDesign:
    """Configurations measured to fit the inference formula, and others held out to test it."""

    fit: tuple[InferenceConfig, ...]
    heldout: tuple[InferenceConfig, ...]


def inference_design_points(base: InferenceConfig, spec: ArchSpec) -> InferenceDesign:
    """Windows of 2 and 3 units (twice the network's divisor, at least 32), images of 2 to 4
    windows an axis, window batches 1 to 8, up to 16 classes (so the output buffer's bytes per voxel are
    well determined), and both stitch devices; every image has more windows than a batch holds
    (a plan's images always do). Held out, chosen before any result was seen: an anisotropic
    window on an odd image, a longer image with more classes, a 3-unit window stitching on the
    CPU with other channels, and 12 classes at batch 4.
    """
    # Fake tensors cost the same at any size; only the number of windows costs time. So windows
    # are as large as plans use (64 and 96 for a divisor of 16) and images few windows wide.
    u = _design_units(spec)
    cube = lambda k: _scaled(u, (k, k, k))

    def point(
        roi: int, image: tuple[int, int, int], sw: int, stitch: StitchDevice, c_in: int = 1, c_out: int = 2
    ) -> InferenceConfig:
        shape = _scaled(u, image)
        return replace(
            base,
            roi=cube(roi),
            image_shape=shape,
            sw_batch_size=sw,
            stitch=stitch,
            in_channels=c_in,
            out_channels=c_out,
            overlap=0.0,
        )  # type: ignore[arg-type]

    fit = (
        point(2, (4, 4, 4), 1, GPU),
        point(2, (4, 4, 4), 2, GPU),
        point(2, (4, 6, 8), 1, GPU, c_out=3),
        point(3, (6, 6, 6), 1, GPU),
        point(3, (6, 6, 6), 2, GPU, c_out=6),
        point(2, (4, 4, 4), 1, GPU, c_out=16),
        point(2, (4, 4, 4), 1, GPU, c_in=3),
        point(2, (6, 6, 6), 3, GPU, c_out=12),
        point(2, (4, 4, 4), 2, CPU),
        point(3, (6, 6, 6), 1, CPU, c_out=16),
        point(2, (8, 4, 4), 1, CPU, c_out=5),
        point(2, (4, 4, 6), 3, CPU, c_in=2),
        point(2, (6, 6, 6), 8, GPU, c_out=3),
    )
    heldout = (
        replace(
            base,
            roi=_scaled(u, (2, 3, 3)),
            image_shape=_scaled(u, (5, 7, 9)),
            sw_batch_size=3,
            out_channels=3,
            stitch=GPU,
            overlap=0.25,
        ),
        replace(
            base,
            roi=cube(2),
            image_shape=_scaled(u, (10, 6, 6)),
            sw_batch_size=2,
            out_channels=8,
            stitch=GPU,
            overlap=0.0,
        ),
        replace(
            base,
            roi=cube(3),
            image_shape=cube(7),
            sw_batch_size=2,
            in_channels=2,
            out_channels=4,
            stitch=CPU,
            overlap=0.25,
        ),
        replace(
            base, roi=cube(2), image_shape=cube(5), sw_batch_size=4, out_channels=12, stitch=GPU, overlap=0.0
        ),
    )
    return InferenceDesign(fit, heldout)


def _design_units(spec: ArchSpec) -> tuple[int, int, int]:
    """Twice the step between window sizes, per axis: nnU-Net's anisotropic topologies pool less along one axis."""
    divisors = axis_divisors(spec)
    units = (patch_unit(spec),) * 3 if len(set(divisors)) == 1 else patch_units(spec)
    depth, height, width = (2 * unit for unit in units)
    return depth, height, width


def _scaled(units: tuple[int, int, int], multiples: tuple[int, int, int]) -> tuple[int, int, int]:
    depth, height, width = (unit * k for unit, k in zip(units, multiples, strict=True))
    return depth, height, width


def nnunet_design_points(base: InferenceConfig, spec: ArchSpec) -> InferenceDesign:
    """nnU-Net's predictor: one window at a time over images of 8 to 16 windows (more than its
    queue of windows holds), with and without mirroring and gaussian weighting, up to 16 classes,
    results on the GPU and on the CPU. A mirrored pass costs the same whatever the axis, so
    the fit mirrors along one or two axes (fewer passes to trace); held out, chosen before any
    result was seen: all three axes on an anisotropic window at tile step 0.75, a long image with 8 classes,
    a 3-unit window on the CPU at tile step 0.5 with 2 input channels, and 12 classes mirrored
    on all axes.
    """
    u = _design_units(spec)
    cube = lambda k: _scaled(u, (k, k, k))

    def point(
        roi: int,
        image: tuple[int, int, int],
        stitch: StitchDevice,
        c_in: int = 1,
        c_out: int = 2,
        mirror: tuple[int, ...] = (),
        blend: BlendMode = BlendMode.GAUSSIAN,
        overlap: float = 0.0,
        roi_shape: tuple[int, int, int] | None = None,
    ) -> InferenceConfig:
        return replace(
            base,
            roi=roi_shape or cube(roi),
            image_shape=_scaled(u, image),
            sw_batch_size=1,
            stitch=stitch,
            in_channels=c_in,
            out_channels=c_out,
            mirror_axes=mirror,
            blend=blend,
            overlap=overlap,
        )

    fit = (
        point(2, (4, 4, 4), GPU),
        point(2, (4, 4, 6), GPU, c_out=3, mirror=(2,)),
        point(3, (6, 6, 6), GPU),
        point(2, (4, 4, 4), GPU, c_out=16, mirror=(2,)),
        point(2, (4, 4, 4), GPU, c_in=3),
        point(2, (6, 4, 4), GPU, c_in=2, c_out=6, mirror=(2,), blend=BlendMode.CONSTANT),
        point(3, (6, 9, 6), GPU, c_out=5, mirror=(1, 2)),
        point(2, (8, 6, 6), GPU, c_out=16),
        point(2, (4, 4, 4), CPU),
        point(3, (6, 6, 6), CPU, c_out=8, mirror=(2,)),
        point(2, (4, 6, 4), CPU, c_in=3, c_out=4),
        point(2, (4, 4, 8), CPU, c_out=12, mirror=(2,), blend=BlendMode.CONSTANT),
    )
    heldout = (
        point(0, (5, 7, 9), GPU, c_out=3, mirror=(0, 1, 2), overlap=0.25, roi_shape=_scaled(u, (2, 3, 3))),
        point(2, (10, 6, 6), GPU, c_out=8),
        point(3, (7, 7, 7), CPU, c_in=2, c_out=4, mirror=(0,), overlap=0.5),
        point(2, (5, 5, 5), GPU, c_out=12, mirror=(0, 1, 2)),
    )
    return InferenceDesign(fit, heldout)


@dataclass(frozen=True)
class InferenceCalibrationReport:
    """What an inference calibration measured and fitted: the points fitted and held out, how many
    were measured now and reused from the database, and the database it was stored in."""

    calibration: InferenceCalibration
    fitted: tuple[InferenceMeasurement, ...]
    heldout: tuple[InferenceMeasurement, ...]
    measured: int = 0
    reused: int = 0
    stored_in: str | None = None  # the database it was stored in


def fit_inference_calibration(
    spec: ArchSpec,
    base: InferenceConfig,
    device: str,
    fitted: list[InferenceMeasurement],
    heldout: list[InferenceMeasurement],
    environment: dict[str, object],
) -> InferenceCalibration:
    """Fit the inference coefficients to ``fitted`` (allocated and reserved) and test them on ``heldout``."""
    formula = fit_formula(
        spec,
        fitted,
        heldout,
        inference_terms(spec, base.predictor),
        points="inference points",
        advice="calibrate on a larger GPU, or see the failed points' errors",
    )
    return InferenceCalibration(
        arch=spec.name,
        device=device,
        precision=base.precision.value,
        optimizer=INFERENCE,
        deep_supervision=False,
        environment=environment,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        predictor=base.predictor,
        **formula.fields(),
    )


def calibrate_inference(
    log: MeasurementLog[InferenceConfig, InferenceMeasurement], base: InferenceConfig
) -> InferenceCalibrationReport:
    """Measure the design points through ``log`` (reusing stored ones), fit, and store the calibration in its database.

    ``base`` fixes the architecture, precision and predictor; its sizes are ignored. The same
    log as training's measures, commits and reuses each point.
    """
    spec = resolve_arch(base.arch)
    environment = log.backend.environment()
    design = (nnunet_design_points if base.nnunet else inference_design_points)(base, spec)
    fitted = [log.measure(config) for config in design.fit]
    heldout = [log.measure(config) for config in design.heldout]
    calibration = fit_inference_calibration(
        spec, base, environment.calibration_device, fitted, heldout, environment.to_dict()
    )
    if log.db is not None:
        log.db.add_calibration(calibration, environment)
    return InferenceCalibrationReport(
        calibration, tuple(fitted), tuple(heldout), measured=len(log.taken), reused=log.reused
    )
