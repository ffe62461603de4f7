"""``--mode inference`` of probe, calibrate and suggest: a thin view over ``memprobe.inference``.

Each of those commands takes ``@inference_mode(view, training_only)``: with ``--mode inference``
the command's arguments go to the view here, and a training-only option given on the command
line is refused (exit 2, naming it); with ``--mode training`` an inference-only option is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from memprobe.commands.options import BATCH
from memprobe.reporters import Report
from memprobe.units import format_bytes

F = Callable[..., Any]

_INFERENCE_OPTIONS = (
    click.option(
        "--mode",
        type=click.Choice(["training", "inference"]),
        default="training",
        show_default=True,
        help="training: one training step; inference: MONAI sliding_window_inference over a whole image.",
    ),
    click.option(
        "--image-shape",
        nargs=3,
        default=None,
        metavar="D H W",
        help="Inference: the whole image in voxels (--patch is the window, roi_size).",
    ),
    click.option(
        "--sw-batch-size",
        default=1,
        show_default=True,
        type=BATCH,
        help="Inference: windows the network sees at once.",
    ),
    click.option(
        "--overlap",
        default=0.25,
        show_default=True,
        type=click.FloatRange(0, 1, max_open=True),
        help="Inference: overlap of windows, in [0, 1).",
    ),
    click.option(
        "--blend",
        type=click.Choice(["constant", "gaussian"]),
        default="constant",
        show_default=True,
        help="Inference: how overlapping windows are blended (MONAI's mode).",
    ),
    click.option(
        "--stitch",
        type=click.Choice(["gpu", "cpu"]),
        default=None,
        help="Inference: where the output is stitched (MONAI's device); suggest chooses when not given.",
    ),
)
_SUGGEST_OPTIONS = (
    click.option(
        "--max-image-shape",
        nargs=3,
        default=None,
        metavar="D H W",
        help="Inference: the dataset's largest image (same as --image-shape).",
    ),
    click.option(
        "--fingerprint",
        default=None,
        metavar="FILE",
        help="Inference: nnU-Net dataset_fingerprint.json; its largest image is planned for.",
    ),
)
_NAMES = ("mode", "image_shape", "sw_batch_size", "overlap", "blend", "stitch")
_SUGGEST_NAMES = ("max_image_shape", "fingerprint")


def _given(context: click.Context, name: str) -> bool:
    return context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def _refuse(context: click.Context, names: tuple[str, ...], why: str) -> None:
    from memprobe.errors import InvalidInputError

    for name in names:
        if _given(context, name):
            raise InvalidInputError(f"--{name.replace('_', '-')} {why}")


def inference_mode(view: F, training_only: tuple[str, ...], suggest: bool = False) -> Callable[[F], F]:
    """Add ``--mode`` and the inference options to a command, branching early into ``view``."""
    extra = _INFERENCE_OPTIONS + (_SUGGEST_OPTIONS if suggest else ())
    names = _NAMES + (_SUGGEST_NAMES if suggest else ())

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def branch(**kwargs: Any) -> Any:
            context = click.get_current_context()
            mode = kwargs.pop("mode")
            inference = {name: kwargs.pop(name) for name in names if name != "mode"}
            if mode == "inference":
                _refuse(context, training_only, "is a training option: drop it with --mode inference")
                return view(**kwargs, **inference)
            _refuse(context, tuple(n for n in names if n != "mode"), "needs --mode inference")
            return command(**kwargs)

        for option in reversed(extra):
            branch = option(branch)
        return branch

    return decorate


def _shape(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


def _base(arch: str, patch: Any, image_shape: Any, sw_batch_size: Any, options: dict[str, Any]) -> Any:
    from memprobe.errors import InvalidInputError
    from memprobe.inference.config import make_inference_config

    if patch is None:
        raise InvalidInputError("give the window as --patch D H W (MONAI's roi_size) with --mode inference")
    if image_shape is None:
        raise InvalidInputError("give the whole image as --image-shape D H W with --mode inference")
    return make_inference_config(
        arch,
        patch,
        image_shape,
        sw_batch_size,
        overlap=options["overlap"],
        blend=options["blend"],
        precision=options["precision"],
        in_channels=options["in_channels"],
        out_channels=options["out_channels"],
        stitch=options.get("stitch") or "gpu",
    )


COUNTED = {
    "gpu": "the network, importance map, window batches and activations, the input image, the whole-image "
    "output and the count map",
    "cpu": "the network, importance map, window batches and activations (the input image, output and count map "
    "are on the CPU)",
}


def probe_view(
    *,
    arch: str,
    patch: Any,
    image_shape: Any,
    sw_batch_size: int,
    device: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """``memprobe probe --mode inference``."""
    from memprobe.inference.run import InferenceRunner

    config = _base(arch, patch, _shape(image_shape), sw_batch_size, options)
    runner = InferenceRunner(device)
    click.echo(
        f"measuring {config.label()} ({config.windows()} windows) on {runner.kind.value} ...", err=True
    )
    m = runner.measure(config)
    notes = [f"on the GPU: {COUNTED[config.stitch.value]}; peak reserved {m.reserved_source or '-'}"]
    notes += [config.padding_note()] if config.padded else []
    if m.environment.device_kind != "cuda":
        notes.append("the CUDA context and cuDNN workspaces are not in either figure (plans charge them)")
    row = {
        "configuration": config.label(),
        "windows": config.windows(),
        "peak allocated": "OOM" if m.oom else format_bytes(m.peak_allocated_bytes),
        f"peak reserved ({m.reserved_source or '-'})": format_bytes(m.peak_reserved_bytes),
        "forward": format_bytes(m.phase_peaks_bytes.get("forward")),
        "stitch": format_bytes(m.phase_peaks_bytes.get("stitch")),
        "s": round(m.seconds or 0, 2),
    }
    from memprobe.commands.options import emit

    emit(Report(m.to_dict(), (("", [row]),), tuple(n for n in notes if n)), as_json)


def calibrate_view(
    *, arch: str, device: str | None, precision: str, db_path: str | None, as_json: bool, **_: Any
) -> None:
    """``memprobe calibrate --mode inference``."""
    from memprobe.archs.registry import resolve_arch
    from memprobe.commands.options import emit
    from memprobe.commands.progress import Progress
    from memprobe.db import Database
    from memprobe.inference.calibration_run import calibrate_inference
    from memprobe.inference.config import make_inference_config
    from memprobe.inference.run import InferenceRunner

    _refuse(
        click.get_current_context(),
        ("image_shape", "sw_batch_size", "overlap", "blend", "stitch"),
        "is not for calibrate: it measures its own windows, images and batches",
    )
    spec = resolve_arch(arch)
    base = make_inference_config(arch, (2 * spec.divisor,) * 3, (4 * spec.divisor,) * 3, precision=precision)
    runner = InferenceRunner(device)
    with Database.open(db_path) as database:
        label = f"calibrating inference of {spec.name} on {runner.kind.value}"
        with Progress(label, 17) as progress:
            report = calibrate_inference(
                runner,
                base,
                database,
                lambda m, reused: progress.advance(m.config.label() + (" (stored)" if reused else "")),
            )
        emit(_calibration_report(report, spec, database.path or database.location), as_json)


def _calibration_report(report: Any, spec: Any, db_path: object) -> Report:
    calibration = report.calibration
    quality = calibration.quality
    rows = []
    for m, role in [(m, "fit") for m in report.fitted] + [(m, "held out") for m in report.heldout]:
        predicted = calibration.inference_peak_bytes(spec, m.config)
        rows.append(
            {
                "configuration": m.config.label(),
                "role": role,
                "allocated": format_bytes(m.peak_allocated_bytes) if m.ok else "OOM",
                "formula": format_bytes(predicted),
                "error %": round(100 * (predicted - m.peak_allocated_bytes) / m.peak_allocated_bytes, 2)
                if m.ok
                else "-",
            }
        )
    reserved = calibration.reserved_quality
    notes = (
        f"inference formula vs {calibration.device}, allocated peak: fit on {quality.points} points, median "
        f"{100 * quality.median_relative_error:.2f}%, worst {100 * quality.max_relative_error:.2f}%; held out "
        f"{quality.heldout_points}, median {100 * (quality.heldout_median_relative_error or 0):.2f}%, worst "
        f"{100 * (quality.heldout_max_relative_error or 0):.2f}%",
        "reserved peak: "
        + (
            f"held out worst {100 * (reserved.heldout_max_relative_error or 0):.2f}%"
            if reserved
            else "not fitted"
        ),
        f"{report.measured} inferences measured, {report.reused} reused from {db_path or 'memory'}; stored apart "
        "from training calibrations",
    )
    data = {
        "mode": "inference",
        "calibration": calibration.to_dict(),
        "measurements": [
            dict(m.to_dict(), role=r)
            for m, r in [(m, "fit") for m in report.fitted] + [(m, "held out") for m in report.heldout]
        ],
        "measured": report.measured,
        "reused": report.reused,
    }
    return Report(data, (("Measured inferences", rows),), notes)


def suggest_view(
    *,
    arch: str,
    patch: Any,
    gpu_mem: int | None,
    precision: str | None,
    in_channels: int,
    out_channels: int,
    safety: float,
    device: str | None,
    db_path: str | None,
    as_json: bool,
    as_yaml: bool,
    image_shape: Any,
    max_image_shape: Any,
    fingerprint: str | None,
    overlap: float,
    blend: str,
    stitch: str | None,
    sw_batch_size: int,
    **_: Any,
) -> None:
    """``memprobe suggest --mode inference``."""
    from memprobe.commands.budget import budget_note, resolve_budget
    from memprobe.commands.options import emit
    from memprobe.errors import InvalidInputError
    from memprobe.inference.api import largest_image_shape, max_sw_batch_size

    if click.get_current_context().get_parameter_source("sw_batch_size") is not ParameterSource.DEFAULT:
        raise InvalidInputError("--sw-batch-size is what suggest plans: drop it")
    shapes = [s for s in (_shape(image_shape), _shape(max_image_shape)) if s]
    if fingerprint:
        shapes.append(tuple(map(str, largest_image_shape(fingerprint))))
    if len(shapes) != 1:
        raise InvalidInputError(
            "give the largest image once: --max-image-shape D H W, --image-shape or --fingerprint"
        )
    if patch is None:
        raise InvalidInputError("give the window as --patch D H W (MONAI's roi_size) with --mode inference")
    budget_bytes, gpu = resolve_budget(gpu_mem)
    plan = max_sw_batch_size(
        arch,
        patch,
        shapes[0],
        budget_bytes,
        precision or "fp32",  # inference is calibrated at fp32 unless asked: training's default is not its
        in_channels=in_channels,
        out_channels=out_channels,
        overlap=overlap,
        blend=blend,
        stitch=stitch,
        safety=safety,
        db=db_path,
        device=device,
    )
    emit(_plan_report(plan, budget_note(budget_bytes, gpu, gpu_mem)), as_json, "yaml" if as_yaml else None)


def _plan_report(plan: Any, budget_text: str) -> Report:
    from memprobe.commands.plan_output import calibration_data, calibration_text, need_rows

    c = plan.config
    row = {
        "arch": c.arch,
        "roi": "x".join(map(str, c.roi)),
        "image": "x".join(map(str, c.image_shape)),
        "sw_batch_size": c.sw_batch_size,
        "stitch": c.stitch.value,
        "windows": c.windows(),
        "total need": format_bytes(plan.need.total_bytes),
        "of budget": f"{plan.utilisation:.0%}",
        "calibration": calibration_text(plan.calibration),
    }
    data = {
        "mode": "inference",
        "arch": c.arch,
        "roi_size": list(c.roi),
        "image_shape": list(c.image_shape),
        "sw_batch_size": c.sw_batch_size,
        "stitch": c.stitch.value,
        "windows": c.windows(),
        "need": plan.need.to_dict(),
        "next_batch_total_bytes": round(plan.next_need.total_bytes) if plan.next_need else None,
        "gpu_stitch_total_bytes": round(plan.gpu_stitch_need.total_bytes),
        "budget_bytes": plan.budget_bytes,
        "safety": plan.safety,
        "utilisation": round(plan.utilisation, 4),
        "precision": c.precision.value,
        "reasons": list(plan.reasons),
        "warnings": list(plan.warnings),
        "calibration": calibration_data(plan.calibration),
        "sliding_window_inference": plan.sliding_window_kwargs(),
        "nnunet_predictor": plan.nnunet_predictor_kwargs(),
    }
    notes = [*plan.reasons, *(f"warning: {w}" for w in plan.warnings), budget_text]
    title = (
        f"What sw_batch_size {c.sw_batch_size} of {c.arch}, stitching on the {c.stitch.value.upper()}, needs"
    )
    return Report(data, (("", [row]), (title, need_rows(plan.need, plan.usable_bytes))), tuple(notes))
