"""Inference as a library: plan from calibrations (no torch), measure and calibrate on demand."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memprobe.core.archs.registry import resolve_arch
from memprobe.core.checks import check_bool, check_db, check_fraction, check_text
from memprobe.core.errors import InvalidInputError
from memprobe.core.inference_config import (
    InferenceConfig,
    Predictor,
    StitchDevice,
    inference_precision,
    make_inference_config,
)
from memprobe.core.input_files import read_input_text, shown
from memprobe.core.units import parse_bytes
from memprobe.formula.inference_calibration import InferenceCalibration
from memprobe.planning.inference_plan import InferencePlan, plan_inference

if TYPE_CHECKING:
    from memprobe.core.inference_measurement import InferenceMeasurement
    from memprobe.inference.calibration_run import InferenceCalibrationReport


def choose_inference_calibration(
    arch: str,
    precision: str,
    db: str | Path | None = None,
    device: str | None = None,
    predictor: Predictor = Predictor.MONAI,
) -> InferenceCalibration:
    """The inference calibration of ``arch``'s ``predictor`` at ``precision`` for ``device`` (default: the detected GPU, else trace).

    A GPU without its own calibration is answered by the trace one, with a warning (the rule
    training's calibrations follow: ``memprobe.api.choose_on_device``).

    Raises:
        NoCalibrationError: none exists; the message names the command to run.
    """
    from memprobe.store.calibration_sources import all_inference_calibrations

    return _choose(all_inference_calibrations(db), arch, precision, device, predictor)


def _choose(
    calibrations: list[InferenceCalibration],
    arch: str,
    precision: str,
    device: str | None,
    predictor: Predictor,
) -> InferenceCalibration:
    from memprobe.api import choose_on_device
    from memprobe.store.calibration_sources import choose_inference_calibration as choose

    pick = lambda wanted, fallback: choose(calibrations, arch, precision, predictor, wanted, fallback)
    choice = choose_on_device(pick, device, depth=2)
    assert isinstance(choice.calibration, InferenceCalibration)
    return choice.calibration


def largest_image_shape(fingerprint: str | Path) -> tuple[int, int, int]:
    """The largest image (most voxels) of an nnU-Net ``dataset_fingerprint.json`` (``shapes_after_crop``).

    Raises:
        InvalidInputError: not a regular file, over the size cap, not JSON, or a shape that is
            not three or more whole numbers above 0 (nan, Infinity and 1e400 are refused).
    """
    text = read_input_text(fingerprint, "--fingerprint")
    try:
        shapes = json.loads(text)["shapes_after_crop"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise InvalidInputError(
            f"cannot read shapes_after_crop of nnU-Net fingerprint {shown(fingerprint)} "
            f"({type(error).__name__}: {shown(error)}): give dataset_fingerprint.json or --max-image-shape D H W"
        ) from None
    if not isinstance(shapes, list) or not shapes:
        raise InvalidInputError(
            f"shapes_after_crop of nnU-Net fingerprint {shown(fingerprint)} must be a list of image shapes, "
            f"got {shown(repr(shapes), 40)}"
        )
    return max(
        (_image_shape(shape, number, fingerprint) for number, shape in enumerate(shapes)), key=math.prod
    )


def _image_shape(shape: object, number: int, fingerprint: str | Path) -> tuple[int, int, int]:
    """The spatial sizes of one image of a fingerprint: its last three, whole numbers above 0."""
    sizes = shape[-3:] if isinstance(shape, list) and len(shape) >= 3 else None
    if sizes is None or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise InvalidInputError(
            f"shapes_after_crop[{number}] of nnU-Net fingerprint {shown(fingerprint)} must be whole numbers "
            f"above 0 (channels, depth, height, width), got {shown(repr(shape), 60)}"
        )
    depth, height, width = sizes
    return depth, height, width


INFERENCE_SETTINGS = (
    "in_channels",
    "out_channels",
    "overlap",
    "blend",
    "predictor",
    "mirror_axes",
    "buffer_steps",
)


def max_sw_batch_size(
    arch: str,
    roi: Sequence[Any],
    image_shape: Sequence[Any],
    gpu_mem: str | int | float,
    precision: str | None = None,
    *,
    stitch: str | None = None,
    safety: float = 1.0,
    db: str | Path | None = None,
    device: str | None = None,
    **settings: Any,
) -> InferencePlan:
    """The largest ``sw_batch_size`` (and whether stitching fits on the GPU) for the largest image.

    With ``predictor="nnunet"`` (nnU-Net's defaults: ``overlap=0.5``, ``blend="gaussian"``,
    ``precision="fp16-mixed"``, ``mirror_axes`` 0, 1, 2 when None) one window at a time, and
    whether ``perform_everything_on_device`` fits; ``plan.nnunet_predictor_kwargs()`` are the
    arguments of ``nnUNetPredictor``.

    Args:
        roi: the window (``roi_size``), three sizes the network's divisor divides.
        image_shape: the largest image of the dataset, in voxels.
        precision: default bf16-mixed, or fp16-mixed on a GPU without bf16 (the rule every
            command uses); nnU-Net's predictor: its fp16 autocast.
        stitch: ``gpu`` or ``cpu`` to force where the output is stitched; default: the GPU if
            one window at a time fits with it, else the CPU.
        **settings: ``in_channels``, ``out_channels``, ``overlap``, ``blend``, ``predictor``
            (``monai`` or ``nnunet``), ``mirror_axes`` and MONAI's ``buffer_steps``
            (``buffer_dim`` -1, planned with the buffer it keeps on the GPU as a term of its own).

    Raises:
        NothingFitsError: even one window at a time does not fit stitching on the CPU.
    """
    from memprobe.core.gpus import target_gpu

    safety, db, device = check_fraction(safety, "safety"), check_db(db), check_text(device, "device")
    unknown = sorted(set(settings) - set(INFERENCE_SETTINGS))
    if unknown:
        raise InvalidInputError(
            f"unknown setting {unknown[0]!r}: choose among {', '.join(INFERENCE_SETTINGS)}"
        )
    from memprobe.store.calibration_sources import all_inference_calibrations, with_stored_shape_rule

    calibrations = all_inference_calibrations(db)  # read once: a custom model's stored name, then the choice
    arch = with_stored_shape_rule(arch, calibrations) if isinstance(arch, str) else arch
    predictor = settings.get("predictor", "monai")
    overlap, blend = settings.get("overlap"), settings.get("blend")
    nnunet = predictor == Predictor.NNUNET.value
    precision = inference_precision(precision, predictor, target_gpu(device))
    base = make_inference_config(
        arch,
        roi,
        image_shape,
        1,
        overlap=(0.5 if nnunet else 0.25) if overlap is None else overlap,
        blend=blend or ("gaussian" if nnunet else "constant"),
        precision=precision,
        in_channels=settings.get("in_channels", 1),
        out_channels=settings.get("out_channels", 2),
        predictor=predictor,
        mirror_axes=settings.get("mirror_axes"),
        buffer_steps=settings.get("buffer_steps"),
    )
    if base.nnunet:
        from memprobe.core.inference_config import require_nnunet

        require_nnunet()
    calibration = _choose(calibrations, base.arch, base.precision.value, device, base.predictor)
    return plan_inference(
        calibration,
        resolve_arch(base.arch),
        base,
        parse_bytes(gpu_mem),
        safety=safety,
        gpu=target_gpu(device),
        stitch=StitchDevice(stitch) if stitch else None,
    )


def probe_inference(
    config: InferenceConfig, device: str | None = None, *, isolate: bool = False
) -> InferenceMeasurement:
    """Run and measure one sliding-window inference (imports torch).

    ``isolate`` runs it in a child process: a crash becomes a measurement with an ``error``.
    """
    from memprobe.backends import get_inference_backend

    return get_inference_backend(device, isolate=isolate).measure(config)


def calibrate_inference(
    arch: str,
    precision: str | None = None,
    *,
    device: str | None = None,
    db: str | Path | None = None,
    predictor: str = "monai",
    isolate: bool = False,
    on_measurement: Callable[[InferenceMeasurement, bool], None] | None = None,
) -> InferenceCalibrationReport:
    """Measure ``arch``'s inference across windows, batches, images and classes; fit and store it in ``db``.

    Each measurement is committed as it is taken: an interrupted run resumes where it stopped.

    Args:
        precision: default bf16-mixed, or fp16-mixed on a GPU without bf16 (the rule every
            command uses); nnU-Net's predictor: its fp16 autocast.
        device: ``cuda``, ``trace`` or ``cpu`` (default: cuda if available, else trace).
        predictor: ``monai`` (sliding_window_inference) or ``nnunet`` (nnUNetPredictor).
        isolate: run each inference in a child process: a crash is recorded and its point left out of the fit.
        on_measurement: called with each measurement and whether it was reused from ``db``.
    """
    from dataclasses import replace

    from memprobe.api import with_found_shape_rule
    from memprobe.backends import get_inference_backend
    from memprobe.backends.recorder import MeasurementLog
    from memprobe.calibration_run import design_patch
    from memprobe.core.gpus import measuring_gpu
    from memprobe.inference.calibration_run import calibrate_inference as run_calibration
    from memprobe.store.database import Database

    isolate = check_bool(isolate, "isolate")
    arch = with_found_shape_rule(str(check_text(arch, "arch", optional=False)), 1, 2, find=not isolate)
    spec = resolve_arch(arch)
    nnunet = predictor == Predictor.NNUNET.value
    if nnunet:
        from memprobe.core.inference_config import require_nnunet

        require_nnunet()
    precision = inference_precision(precision, predictor, measuring_gpu(device))
    base = make_inference_config(  # its sizes only need to be valid: the design points choose their own
        arch,
        design_patch(spec, (2, 2, 2)),
        design_patch(spec, (4, 4, 4)),
        precision=precision,
        predictor=predictor,
        overlap=0.5 if nnunet else 0.0,  # as nnU-Net predicts; MONAI's calibration needs no overlap
        blend="gaussian" if nnunet else "constant",
    )
    backend = get_inference_backend(device, isolate=isolate)
    with Database.open(db) as database:
        log = MeasurementLog(backend, database)
        if on_measurement is not None:
            log.on_measurement = on_measurement
        report = run_calibration(log, base)
        return replace(report, stored_in=str(database.path or database.location))
