"""``--mode inference`` of probe, calibrate and suggest: a thin view over ``memprobe.inference``.

Each of those commands takes ``@inference_mode(view)``: with ``--mode inference`` the command's
arguments go to the view here. Each option declares its modes (``memprobe.cli.setup_options``):
one given on the command line that the chosen mode does not take is refused, exit 2, naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from memprobe.cli.options import BATCH, INFERENCE, SHAPE_SIZE, given, inference_option, refuse_other_modes
from memprobe.cli.render import Report
from memprobe.core.gpus import measuring_gpu
from memprobe.core.inference_config import inference_precision
from memprobe.core.units import format_bytes, format_shape

F = Callable[..., Any]


class MirrorAxes(click.ParamType):
    """nnU-Net's mirroring axes: ``012``, ``0,1,2``, ``12``, or ``none``."""

    name = "axes"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower().replace(",", "").replace(" ", "")
        if text in ("none", "off"):
            return ()
        if not text or any(axis not in "012" for axis in text) or len(set(text)) != len(text):
            self.fail(f"{value!r}: give distinct axes 0, 1, 2 (e.g. 012 or 1,2), or none", param, ctx)
        return tuple(sorted(int(axis) for axis in text))


def _inference_options(refused: str | None) -> tuple[Callable[[F], F], ...]:
    """``--mode`` and the inference options; ``refused``: why the command refuses the window, image
    and batch options it declares (``calibrate`` chooses its own)."""
    return (
        click.option(
            "--mode",
            type=click.Choice(["training", "inference"]),
            default="training",
            show_default=True,
            help="training: one training step; inference: a sliding-window prediction over a whole image.",
        ),
        inference_option(
            "--predictor",
            type=click.Choice(["monai", "nnunet"]),
            default="monai",
            show_default=True,
            help="Inference: MONAI's sliding_window_inference, or nnU-Net v2's nnUNetPredictor "
            "(one window at a time, fp16 autocast, --overlap is 1 - tile_step_size; needs nnunetv2).",
        ),
        inference_option(
            "--mirror-axes",
            refused=refused,
            type=MirrorAxes(),
            default=None,
            help="Inference, nnU-Net: mirroring axes of its test-time augmentation (default 012; none: off).",
        ),
        inference_option(
            "--buffer-steps",
            refused=refused,
            type=click.IntRange(min=1),
            default=None,
            help="Inference, MONAI: sliding_window_inference's buffer_steps (buffer_dim -1); suggest plans its buffer.",
        ),
        inference_option(
            "--image-shape",
            refused=refused,
            nargs=3,
            type=SHAPE_SIZE,
            default=None,
            metavar="D H W",
            help="Inference: the whole image in voxels (--patch is the window, roi_size).",
        ),
        inference_option(
            "--sw-batch-size",
            refused=refused,
            default=1,
            show_default=True,
            type=BATCH,
            help="Inference: windows the network sees at once.",
        ),
        inference_option(
            "--overlap",
            refused=refused,
            default=0.25,
            show_default=True,
            type=click.FloatRange(0, 1, max_open=True),
            help="Inference: overlap of windows, in [0, 1).",
        ),
        inference_option(
            "--blend",
            refused=refused,
            type=click.Choice(["constant", "gaussian"]),
            default="constant",
            show_default=True,
            help="Inference: how overlapping windows are blended (MONAI's mode).",
        ),
        inference_option(
            "--stitch",
            refused=refused,
            type=click.Choice(["gpu", "cpu"]),
            default=None,
            help="Inference: where the output is stitched (MONAI's device); suggest chooses when not given.",
        ),
    )


_SUGGEST_OPTIONS = (
    inference_option(
        "--max-image-shape",
        nargs=3,
        type=SHAPE_SIZE,
        default=None,
        metavar="D H W",
        help="Inference: the dataset's largest image (same as --image-shape).",
    ),
    click.option(
        "--fingerprint",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="FILE",
        help="nnU-Net's dataset_fingerprint.json: in training the spacing and median shape as its planner "
        "derives them; in inference its largest image.",
    ),
)
_NAMES = (
    "mode",
    "predictor",
    "mirror_axes",
    "buffer_steps",
    "image_shape",
    "sw_batch_size",
    "overlap",
    "blend",
    "stitch",
)
_SUGGEST_NAMES = ("max_image_shape", "fingerprint")
_SHARED_NAMES = ("fingerprint",)  # taken in both modes


def inference_mode(view: F, suggest: bool = False, refused: str | None = None) -> Callable[[F], F]:
    """Add ``--mode`` and the inference options to a command, branching early into ``view``.

    Each option says which mode it belongs to (``ModeOption``): one given on the command line
    that the chosen mode does not take is refused by name, exit 2; so is a window, image or
    batch option of a command that chooses its own (``refused`` says why).
    """
    extra = _inference_options(refused) + (_SUGGEST_OPTIONS if suggest else ())
    names = _NAMES + (_SUGGEST_NAMES if suggest else ())

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def branch(**kwargs: Any) -> Any:
            mode = kwargs.pop("mode")
            refuse_other_modes(click.get_current_context(), mode)
            if mode == INFERENCE:
                inference = {name: kwargs.pop(name) for name in names if name != "mode"}
                return view(**kwargs, **inference)
            for name in names:
                if name != "mode" and name not in _SHARED_NAMES:
                    kwargs.pop(name)
            return command(**kwargs)

        declared: F = branch
        for option in reversed(extra):
            declared = option(declared)
        return declared

    return decorate


def _shape(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


def _base(arch: str, patch: Any, image_shape: Any, sw_batch_size: Any, options: dict[str, Any]) -> Any:
    from memprobe.core.errors import InvalidInputError
    from memprobe.core.inference_config import make_inference_config

    if patch is None:
        raise InvalidInputError("give the window as --patch D H W (MONAI's roi_size) with --mode inference")
    if image_shape is None:
        raise InvalidInputError("give the whole image as --image-shape D H W with --mode inference")
    return make_inference_config(
        arch,
        patch,
        image_shape,
        sw_batch_size,
        in_channels=options["in_channels"],
        out_channels=options["out_channels"],
        stitch=options.get("stitch") or "gpu",
        buffer_steps=options.get("buffer_steps"),
        **predictor_options(options, options["gpu"]),
    )


def predictor_options(options: dict[str, Any], gpu: Any) -> dict[str, Any]:
    """The predictor's settings, with nnU-Net's defaults where its options were left out.

    nnU-Net's predictor: tile_step_size 0.5 (--overlap 0.5), gaussian weighting, mirroring on
    all axes, fp16 autocast; MONAI's: the options as given. nnunetv2 must be installed. The
    precision not given is the one ``inference_precision`` chooses for ``gpu``.
    """
    predictor = options.get("predictor") or "monai"
    chosen = {
        "predictor": predictor,
        "overlap": options["overlap"],
        "blend": options["blend"],
        "precision": options["precision"],
        "mirror_axes": options.get("mirror_axes"),
    }
    if predictor == "nnunet":
        from memprobe.core.inference_config import require_nnunet

        require_nnunet()
        context = click.get_current_context()
        nnunet_defaults = {"overlap": "0.5", "blend": "gaussian"}
        chosen |= {name: value for name, value in nnunet_defaults.items() if not given(context, name)}
    chosen["precision"] = inference_precision(chosen["precision"], predictor, gpu)
    return chosen


COUNTED = {
    "gpu": "the network, importance map, window batches and activations, the input image, the whole-image "
    "output and the count map (nnU-Net: predicted_logits and n_predictions, in half precision)",
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
    isolate: bool,
    divisors: tuple[int, int, int] | None,
    min_patch: tuple[int, int, int] | None,
    as_json: bool,
    **options: Any,
) -> None:
    """``memprobe probe --mode inference``."""
    from memprobe.cli.options import custom_arch_with_rule
    from memprobe.inference.api import probe_inference

    arch = custom_arch_with_rule(
        arch, divisors, min_patch, options["in_channels"], options["out_channels"], find=False
    )
    config = _base(arch, patch, _shape(image_shape), sw_batch_size, {**options, "gpu": measuring_gpu(device)})
    click.echo(
        f"measuring {config.label()} ({config.windows()} windows) on {device or 'the default device'} ...",
        err=True,
    )
    m = probe_inference(config, device, isolate=isolate)
    if m.error is not None:  # an isolated inference's process crashed or exited
        from memprobe.core.errors import ModelError

        raise ModelError(f"the model exited abnormally: {m.error}")
    notes = [f"on the GPU: {COUNTED[config.stitch.value]}; peak reserved {m.reserved_source or '-'}"]
    notes += [config.padding_note()] if config.padded else []
    if not config.nnunet and config.sw_batch_size > config.window_batch:
        notes.append(
            f"sw_batch_size {config.sw_batch_size} is more than the {config.window_batch} windows "
            f"{'a buffer holds' if config.buffer_steps else 'the image has'}: MONAI runs batches of "
            f"{config.window_batch}, which is what was measured"
        )
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
    from memprobe.cli.options import emit

    emit(Report(m.to_dict(), (("", [row]),), tuple(n for n in notes if n)), as_json)


def calibrate_view(
    *,
    arch: str,
    device: str | None,
    precision: str,
    predictor: str,
    isolate: bool,
    divisors: tuple[int, int, int] | None,
    min_patch: tuple[int, int, int] | None,
    in_channels: int,
    out_channels: int,
    db_path: str | None,
    as_json: bool,
    **_: Any,
) -> None:
    """``memprobe calibrate --mode inference``."""
    from memprobe.cli.options import custom_arch_with_rule, emit
    from memprobe.cli.progress import Progress
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.inference.api import calibrate_inference

    arch = custom_arch_with_rule(arch, divisors, min_patch, in_channels, out_channels, find=not isolate)
    spec = resolve_arch(arch)
    label = f"calibrating inference of {spec.name} on {device or 'the default device'}"
    with Progress(label, 17) as progress:
        report = calibrate_inference(
            arch,
            precision,
            device=device,
            db=db_path,
            predictor=predictor,
            isolate=isolate,
            on_measurement=lambda m, reused: progress.advance(
                m.config.label() + (" (stored)" if reused else "")
            ),
        )
    emit(_calibration_report(report, spec, report.stored_in), as_json)


def _calibration_report(report: Any, spec: Any, db_path: object) -> Report:
    calibration = report.calibration
    quality = calibration.quality
    rows = []
    measured = (*report.fitted, *report.heldout)
    for m, role in [(m, "fit") for m in report.fitted] + [(m, "held out") for m in report.heldout]:
        predicted = calibration.inference_peak_bytes(spec, m.config)
        rows.append(
            {
                "configuration": m.config.label(),
                "role": role,
                "allocated": format_bytes(m.peak_allocated_bytes) if m.ok else ("OOM" if m.oom else "failed"),
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
        *(f"failed, left out of the fit: {m.config.label()}: {m.error}" for m in measured if m.error),
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
    calibrated_on: str | None,
    db_path: str | None,
    as_json: bool,
    as_yaml: bool,
    image_shape: Any,
    max_image_shape: Any,
    fingerprint: str | None,
    **options: Any,
) -> None:
    """``memprobe suggest --mode inference``."""
    device = calibrated_on
    from memprobe.cli.budget import budget_note, resolve_budget
    from memprobe.cli.options import emit
    from memprobe.core.errors import InvalidInputError
    from memprobe.inference.api import largest_image_shape, max_sw_batch_size

    if given(click.get_current_context(), "sw_batch_size"):
        raise InvalidInputError("--sw-batch-size is what suggest plans: drop it")
    budget_bytes, gpu = resolve_budget(gpu_mem)
    chosen = predictor_options(
        {name: options[name] for name in ("predictor", "overlap", "blend", "precision", "mirror_axes")}, gpu
    )
    shapes = [s for s in (_shape(image_shape), _shape(max_image_shape)) if s]
    if fingerprint:
        shapes.append(tuple(map(str, largest_image_shape(fingerprint))))
    if len(shapes) != 1:
        raise InvalidInputError(
            "give the largest image once: --max-image-shape D H W, --image-shape or --fingerprint"
        )
    if patch is None:
        raise InvalidInputError("give the window as --patch D H W (MONAI's roi_size) with --mode inference")
    plan = max_sw_batch_size(
        arch,
        patch,
        shapes[0],
        budget_bytes,
        chosen.pop("precision"),
        in_channels=options["in_channels"],
        out_channels=options["out_channels"],
        stitch=options["stitch"],
        safety=options["safety"],
        db=db_path,
        device=device,
        buffer_steps=options["buffer_steps"],
        **chosen,
    )
    emit(_plan_report(plan, budget_note(budget_bytes, gpu, gpu_mem)), as_json, "yaml" if as_yaml else None)


def _plan_report(plan: Any, budget_text: str) -> Report:
    from memprobe.cli.render.plans import calibration_data, calibration_text, need_rows
    from memprobe.core.inference_config import StitchDevice

    c = plan.config
    row = {
        "arch": c.arch,
        "roi": format_shape(c.roi),
        "image": format_shape(c.image_shape),
        "sw_batch_size": c.sw_batch_size,
        "stitch": c.stitch.value,
        **({"buffer_steps": c.buffer_steps} if c.buffer_steps else {}),
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
        "predictor": c.predictor.value,
        "sliding_window_inference": None if c.nnunet else plan.sliding_window_kwargs(),
        "nnunet_predictor": plan.nnunet_predictor_kwargs(),
    }
    if c.nnunet:
        data["nnunet_allowed_mirroring_axes"] = list(c.mirror_axes)
    if c.buffer_steps:
        data["buffer_steps"] = c.buffer_steps
    notes = [*plan.reasons, *(f"warning: {w}" for w in plan.warnings), budget_text]
    title = (
        f"What sw_batch_size {c.sw_batch_size} of {c.arch}, stitching on the {c.stitch.value.upper()}, needs"
        if not c.nnunet
        else f"What nnU-Net's predictor with {c.arch}, perform_everything_on_device="
        f"{c.stitch is StitchDevice.GPU}, needs"
    )
    return Report(data, (("", [row]), (title, need_rows(plan.need, plan.usable_bytes))), tuple(notes))
