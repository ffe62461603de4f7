"""``memprobe report``: a figure of peak memory against batch size, and where the memory goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from memprobe.commands.options import BYTES, PATCH_SIZE, arch_option, db_option, emit, json_option
from memprobe.reporters import Report
from memprobe.size_planner import DEFAULT_SAFETY, largest_batch_rule
from memprobe.units import format_bytes


@click.command()
@arch_option
@click.option(
    "--out",
    "out_path",
    default="report.png",
    show_default=True,
    help="Image to write (.png, .pdf, .svg, ...).",
)
@click.option(
    "--budget", default="24GiB", show_default=True, type=BYTES, help="Memory budget drawn and planned for."
)
@click.option(
    "--safety",
    default=DEFAULT_SAFETY,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of the budget the whole need may use, as in suggest.",
)
@click.option(
    "--precision",
    default=None,
    help="fp32, fp16-mixed (fp16) or bf16-mixed (bf16); default as `calibrate` and `suggest`: bf16-mixed, "
    "fp16-mixed on a GPU without bf16.",
)
@click.option(
    "--patch",
    "patches",
    multiple=True,
    nargs=3,
    type=PATCH_SIZE,
    metavar="D H W",
    help="A patch to plot (repeatable); default cubes of 4, 6 and 8 times half the smallest patch.",
)
@click.option("--device", default="trace", show_default=True, help="Measure on trace, cpu or cuda.")
@db_option
@json_option
def report(
    arch: str,
    out_path: str,
    budget: int,
    safety: float,
    precision: str | None,
    patches: tuple[Any, ...],
    device: str,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Plot peak memory against batch size for a few patches, and break one peak down.

    Measures batch 1, 2 and the largest batch the calibrated formula allows for each patch
    (reusing steps stored in the database), draws the measured points, the formula's lines,
    the budget and where each patch's largest batch falls, and splits the peak of one step
    into parameters, gradients, optimizer state, inputs, activations and temporaries.
    Without a calibration for the architecture, it calibrates first.

    \b
    memprobe report --arch mednext
    memprobe report --arch basicunet --out basicunet.png --budget 80GiB
    memprobe report --arch mednext --patch 64 64 64 --patch 32 160 160 --json
    """
    from memprobe.archs.registry import resolve_arch, smallest_patch_size
    from memprobe.backends import get_backend
    from memprobe.backends.trace_backend import TraceBackend
    from memprobe.commands.progress import Progress
    from memprobe.config import make_step_config, validate_patch
    from memprobe.db import Database
    from memprobe.gpu_info import detect_gpu
    from memprobe.measurement import Measurement
    from memprobe.measurement_log import MeasurementLog
    from memprobe.memory_figure import default_patches, draw_report, find_or_calibrate, memory_report
    from memprobe.output_paths import IMAGE_SUFFIXES, check_output_path, database_files
    from memprobe.training_plan import precision_with_reason

    out = check_output_path(out_path, reading=database_files(db_path), suffixes=IMAGE_SUFFIXES)
    spec = resolve_arch(arch)
    precision, _ = precision_with_reason(precision, detect_gpu() if device == "cuda" else None)
    base = make_step_config(arch, (smallest_patch_size(spec),) * 3, 1, precision=precision)
    chosen = [validate_patch(p, spec) for p in patches] or default_patches(spec)
    budget_bytes = budget
    backend = get_backend(device, budget_bytes=budget_bytes)
    breakdown = TraceBackend(breakdown=True)
    progress = Progress(f"measuring {spec.name}", 3 * len(chosen) + 1)
    with Database.open(db_path) as database, progress:

        def advance(measurement: Measurement, reused: bool) -> None:
            progress.advance(f"{measurement.config.label()}{' (stored)' if reused else ''}")

        def measure_breakdown(config: Any) -> Measurement:
            progress.advance(f"{config.label()} (breakdown)", 0)
            measured = breakdown.measure(config)
            progress.advance(f"{config.label()} (breakdown)")
            return measured

        log = MeasurementLog(backend, database, budget_bytes, on_measurement=advance)
        calibration = find_or_calibrate(log, base, budget_bytes)
        result = memory_report(log, calibration, spec, base, chosen, budget_bytes, safety, measure_breakdown)
    figure = draw_report(result, out)
    emit(_report(result, figure, log.taken, log.reused), as_json)


def _report(result: Any, figure: Path, taken: list[Any], reused: int) -> Report:
    calibration = result.calibration
    predict = lambda m: calibration.predict_peak_bytes(
        result.spec, m.config.patch, m.config.batch, m.config.in_channels, m.config.out_channels
    )
    points = [m for curve in result.curves for m in curve.measured]
    rows = [
        {
            "configuration": m.config.label(),
            "measured": format_bytes(m.peak_allocated_bytes) if m.ok else "OOM",
            "formula": format_bytes(predict(m)),
            "error %": round(100 * (predict(m) / m.peak_allocated_bytes - 1), 2) if m.ok else "-",
        }
        for m in points
    ]
    largest = [
        {
            "patch": "x".join(map(str, c.patch)),
            "largest batch": c.largest_batch,
            "predicted peak": format_bytes(c.largest_peak_bytes),
        }
        for c in result.curves
    ]
    tables: list[tuple[str, list[dict[str, Any]]]] = [
        ("Measured points", rows),
        (_capitalised(largest_batch_rule(result.budget_bytes, result.safety)), largest),
    ]
    data: dict[str, Any] = {
        "arch": result.spec.name,
        "figure": str(figure),
        "budget_bytes": result.budget_bytes,
        "safety": result.safety,
        "largest_batch_rule": largest_batch_rule(result.budget_bytes, result.safety),
        "calibration": {
            "device": calibration.device,
            "source": calibration.source,
            "precision": calibration.precision,
            "created_at": calibration.created_at,
        },
        "points": [dict(_point(m), predicted_bytes=round(predict(m))) for m in points],
        "largest": [
            {
                "patch": list(c.patch),
                "batch": c.largest_batch,
                "predicted_peak_bytes": round(c.largest_peak_bytes),
            }
            for c in result.curves
        ],
        "measured": len(taken),
        "reused": reused,
    }
    if result.breakdown is not None:
        parts = result.breakdown.breakdown_bytes
        parts_rows = [
            {"part": name.replace("_", " "), "bytes": format_bytes(size)} for name, size in parts.items()
        ]
        tables.append((f"Where the peak of {result.breakdown.config.label()} goes", parts_rows))
        data["breakdown"] = {
            "configuration": result.breakdown.config.to_dict(),
            "bytes": dict(parts),
            "peak_allocated_bytes": result.breakdown.peak_allocated_bytes,
        }
    notes = (
        f"wrote {figure}",
        f"{len(taken)} steps measured, {reused} reused from the database"
        f"{', 1 traced for the breakdown' if result.breakdown is not None else ''}",
    )
    return Report(data, tuple(tables), notes)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _point(m: Any) -> dict[str, Any]:
    return {
        "patch": list(m.config.patch),
        "batch": m.config.batch,
        "peak_allocated_bytes": m.peak_allocated_bytes,
        "oom": m.oom,
    }
