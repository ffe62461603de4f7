"""``memprobe calibrate``: measure, fit and store an architecture's memory formula."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from memprobe.cli.inference import calibrate_view, inference_mode
from memprobe.cli.options import (
    BYTES,
    custom_arch_with_rule,
    db_option,
    emit,
    json_option,
    shape_rule_options,
    training_option,
)
from memprobe.cli.progress import Progress
from memprobe.cli.render import Report
from memprobe.cli.setup_options import SetupChoice, command, setup_options
from memprobe.core.measurement import Measurement
from memprobe.planning.exports import ddp_buckets, ddp_buckets_note

if TYPE_CHECKING:
    from memprobe.calibration_run import CalibrationReport
from memprobe.core.units import format_bytes
from memprobe.planning.size_search import largest_batch_rule

# Design points plus held-out points plus a few search steps: the progress's first length.
_EXPECTED_STEPS = 10 + 4 + 6


@command(renamed={"--budget": "--gpu-mem"})
@inference_mode(
    calibrate_view, refused="is not for calibrate: it measures its own windows, images, batches and mirroring"
)
@setup_options()
@click.option("--device", default=None, help="cuda, trace or cpu; default cuda if present, else trace.")
@shape_rule_options
@training_option("--no-search", is_flag=True, help="Fit and store the formula; skip the limit searches.")
@training_option(
    "--gpu-mem",
    default=None,
    type=BYTES,
    help="Memory the limit searches plan for (default: the GPU's memory; 24GiB on trace); "
    "--budget is its old name.",
)
@click.option(
    "--isolate",
    is_flag=True,
    help="Run every probe (training step or inference) in a child process; a crash is recorded and skipped.",
)
@db_option
@json_option
def calibrate(
    setup: SetupChoice,
    device: str | None,
    divisors: tuple[int, int, int] | None,
    min_patch: tuple[int, int, int] | None,
    no_search: bool,
    gpu_mem: int | None,
    isolate: bool,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Measure an architecture across sizes, fit its memory formula, store both.

    Measures isotropic patches at batch 1 and 2 and two channel variants, fits the formula,
    checks it on held-out configurations (an anisotropic patch, batch 3, other channels), and
    searches the largest batch and patch within the budget. Each measurement is committed as
    it is taken: an interrupted run resumes where it stopped.

    \b
    memprobe calibrate --arch mednext
    memprobe calibrate --arch basicunet --device trace --precision bf16-mixed
    memprobe calibrate --arch mednext --device cuda --gpu-mem 24GiB --isolate
    memprobe calibrate --arch mynet:build --device trace --divisor 4 32 32 --min-patch 8 64 64
    memprobe calibrate --arch basicunet --device trace --gpus 4 --strategy ddp

    A custom model's patches follow its shape rule: --divisor/--min-patch, else its factory's
    memprobe_divisors/memprobe_min_patch, else the rule found by trying patches on fake tensors.
    Design patches are multiples of the per-axis divisors (anisotropic where the network pools
    anisotropically); a design patch the model fails on is recorded and skipped.

    With --gpus N --strategy ddp|fsdp each point is one rank's step (its batch per rank): on
    trace and cpu on a fake process group, on cuda with N ranks launched; the calibration is
    stored under its own key, which plans for that layout use. DDP ranks are measured with DDP's
    default buckets (bucket_cap_mb 25, gradient_as_bucket_view False), and plans say so; `memprobe
    probe --bucket-cap-mb/--gradient-as-bucket-view` measures other settings.
    """
    from memprobe.api import calibrate as run_calibration
    from memprobe.backends import default_device_kind
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.core.config import precision_with_reason
    from memprobe.core.gpus import measuring_gpu

    arch = custom_arch_with_rule(
        setup.arch, divisors, min_patch, setup.in_channels, setup.out_channels, find=not isolate
    )
    kind = device or default_device_kind().value
    precision, _ = precision_with_reason(setup.precision, measuring_gpu(kind))
    label = f"calibrating {resolve_arch(arch).name} ({precision}) on {kind}"
    with Progress(label, _EXPECTED_STEPS) as progress:

        def advance(measurement: Measurement, reused: bool) -> None:
            progress.advance(f"{measurement.config.label()}{' (stored)' if reused else ''}")

        report = run_calibration(
            arch,
            precision,
            device=device,
            gpu_mem=gpu_mem,
            db=db_path,
            isolate=isolate,
            search=not no_search,
            on_measurement=advance,
            **setup.overrides(),
        )
    emit(_report(report), as_json)


def _report(report: CalibrationReport) -> Report:
    calibration = report.calibration
    budget_bytes = report.budget_bytes or 0
    quality = calibration.quality
    measured = [(m, "fit") for m in report.fitted] + [(m, "held out") for m in report.heldout]
    predict = lambda m: calibration.predict_peak_bytes(
        _spec(calibration.arch), m.config.patch, m.config.batch, m.config.in_channels, m.config.out_channels
    )
    predict_reserved = lambda m: calibration.predict_reserved_bytes(
        _spec(calibration.arch), m.config.patch, m.config.batch, m.config.in_channels, m.config.out_channels
    )
    points = [
        {
            "configuration": m.config.label(),
            "role": role,
            "allocated": format_bytes(m.peak_allocated_bytes) if m.ok else ("OOM" if m.oom else "failed"),
            "formula": format_bytes(predict(m)),
            "error %": _error(predict(m), m.peak_allocated_bytes) if m.ok else "-",
            f"reserved ({m.reserved_source or '-'})": format_bytes(m.peak_reserved_bytes),
            "reserved formula": format_bytes(predict_reserved(m)),
            "reserved error %": _error(predict_reserved(m), m.peak_reserved_bytes) if m.ok else "-",
        }
        for m, role in measured
    ]
    # Every segment's coefficients are in --json; the table shows the one holding the peak of
    # the largest measured step, the segment that decides the plans.
    largest = max((m for m, _ in measured if m.ok), key=lambda m: m.peak_allocated_bytes or 0)
    c = largest.config
    segment = calibration.peak_segment(
        _spec(calibration.arch), c.patch, c.batch, c.in_channels, c.out_channels
    )
    coefficients = [
        {
            "segment": segment,
            **{term: f"{value:.4g}" for term, value in calibration.phase_coefficients[segment].items()},
        }
    ]
    searches = [
        {"largest": s.kind, "for": s.fixed, "answer": s.answer, "training steps": s.result.steps}
        for s in report.searches
    ]
    against = "measured on this GPU" if calibration.measured_on_gpu else "trace (not a GPU)"
    notes = (
        f"calibrated {calibration.arch} at {calibration.precision} with {calibration.optimizer} on {calibration.device}",
        f"formula vs {against}, allocated peak: fit on {quality.points} points, median error "
        f"{100 * quality.median_relative_error:.2f}%, worst {100 * quality.max_relative_error:.2f}%; "
        f"held out {quality.heldout_points} points, median {100 * (quality.heldout_median_relative_error or 0):.2f}%, "
        f"worst {100 * (quality.heldout_max_relative_error or 0):.2f}%",
        _reserved_note(calibration),
        f"searches within {format_bytes(budget_bytes)}; {report.measured} steps measured, {report.reused} reused "
        f"from {report.stored_in or 'memory'}",
        *((ddp_buckets_note(buckets),) if (buckets := ddp_buckets(calibration)) else ()),
    )
    data = {
        "calibration": calibration.to_dict(),
        "budget_bytes": budget_bytes,
        "largest_batch_rule": largest_batch_rule(budget_bytes),
        "measurements": [dict(m.to_dict(), role=role) for m, role in measured],
        "searches": [
            {
                "kind": s.kind,
                "fixed": s.fixed,
                "answer": s.answer,
                "steps": s.result.steps,
                "probes": [n for n, _ in s.result.probes],
            }
            for s in report.searches
        ],
        "measured": report.measured,
        "reused": report.reused,
    }
    return Report(
        data,
        (
            ("Measured points", points),
            (
                f"Coefficients (bytes per unit of each term) of the segment holding the peak of {c.label()}; "
                f"{len(calibration.phase_coefficients)} segments fitted, all in --json",
                coefficients,
            ),
            (
                f"Limits found (model-guided search, measured): the {largest_batch_rule(budget_bytes)}",
                searches,
            ),
        ),
        notes,
    )


def _error(predicted: float | None, measured: int | None) -> float | str:
    if predicted is None or not measured:
        return "-"
    return round(100 * (predicted - measured) / measured, 2)


def _reserved_note(calibration: Any) -> str:
    reserved = calibration.reserved_quality
    if reserved is None:
        return "reserved peak: not fitted (no measurement carried one)"
    source = "measured" if calibration.measured_on_gpu else "simulated by replaying the caching allocator"
    return (
        f"reserved peak ({source}): fit worst {100 * reserved.max_relative_error:.2f}%, held out worst "
        f"{100 * (reserved.heldout_max_relative_error or 0):.2f}%"
    )


def _spec(arch: str) -> Any:
    from memprobe.core.archs.registry import resolve_arch

    return resolve_arch(arch)
