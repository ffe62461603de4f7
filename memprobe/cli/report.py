"""``memprobe report``: a figure of peak memory against batch size, and where the memory goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from memprobe.cli.options import BYTES, PATCH_SIZE, db_option, emit, json_option
from memprobe.cli.render import Report
from memprobe.cli.setup_options import SetupChoice, command, setup_options
from memprobe.core.errors import InvalidInputError
from memprobe.core.units import DEFAULT_GPU_MEM_BYTES, format_bytes, format_shape
from memprobe.planning.size_search import DEFAULT_SAFETY, largest_batch_rule


@command(renamed={"--budget": "--gpu-mem"})
@setup_options(many_archs=True)
@click.option("--all-archs", is_flag=True, help="Set every registered architecture side by side.")
@click.option(
    "--out",
    "out_path",
    default=None,
    help="Image to write (.png, .pdf, .svg, ...); default report.png when --html is not given.",
)
@click.option("--html", "html_path", default=None, metavar="FILE",
              help="Write an interactive HTML report (one file, opens offline): the step's timeline, the "
              "calibration, the plan and the architectures side by side.")  # fmt: skip
@click.option(
    "--gpu-mem",
    default=DEFAULT_GPU_MEM_BYTES,
    show_default="24GiB",
    type=BYTES,
    help="Memory drawn and planned for.",
)
@click.option(
    "--safety",
    default=DEFAULT_SAFETY,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of the budget the whole need may use, as in suggest.",
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
@click.option(
    "--options", is_flag=True, help="With --html: also plan what would make it fit (as suggest --options)."
)
@click.option("--device", default="trace", show_default=True, help="Measure on trace, cpu or cuda.")
@db_option
@json_option
def report(
    setup: SetupChoice,
    all_archs: bool,
    out_path: str | None,
    html_path: str | None,
    gpu_mem: int,
    safety: float,
    patches: tuple[Any, ...],
    options: bool,
    device: str,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Plot peak memory against batch size for a few patches, and show where the memory goes.

    Measures batch 1, 2 and the largest batch the calibrated formula allows for each patch
    (reusing steps stored in the database), draws the measured points, the formula's lines,
    the budget and where each patch's largest batch falls, and traces one step event by event
    (the PNG splits its peak into parameters, gradients, optimizer state, inputs, activations
    and temporaries; the HTML page shows the whole timeline, by module and by kind, the
    calibration and the plan). Without a calibration for the architecture, it calibrates first.

    \b
    memprobe report --arch mednext
    memprobe report --arch basicunet --out basicunet.png --gpu-mem 80GiB
    memprobe report --arch mednext --html mednext.html --options
    memprobe report --arch mednext --arch unet --arch segresnet --html three.html
    memprobe report --arch mednext --patch 64 64 64 --patch 32 160 160 --json
    """
    from memprobe.cli.progress import Progress
    from memprobe.core.archs.registry import ARCHS, resolve_arch
    from memprobe.core.output_paths import IMAGE_SUFFIXES, check_output_path
    from memprobe.reporting.memory_figure import draw_report
    from memprobe.reporting.run import report as build_report
    from memprobe.store.database import database_files

    reading = database_files(db_path)
    out = (
        check_output_path(out_path, reading=reading, suffixes=IMAGE_SUFFIXES)
        if out_path is not None
        else None
    )
    page = (
        check_output_path(html_path, "--html", reading=reading, suffixes=(".html", ".htm"))
        if html_path
        else None
    )
    if out is not None and page is not None and out.resolve() == page.resolve():
        raise InvalidInputError("--out and --html name the same file: give two")
    if out is None and page is None:
        out = check_output_path("report.png", reading=reading, suffixes=IMAGE_SUFFIXES)
    arch, *others = [resolve_arch(name).name for name in setup.archs]
    compare = [name for name in ARCHS if name != arch] if all_archs else others
    length = 3 * max(len(patches), 3) + 1
    with Progress(f"measuring {arch}", length) as progress:
        content = build_report(
            arch, patches=patches, gpu_mem=gpu_mem, safety=safety, precision=setup.precision, device=device,
            db=db_path, compare=compare, options=options,
            progress=lambda item, done: progress.advance(item, int(done)), **setup.overrides(),
        )  # fmt: skip
    written = [draw_report(content.figure, out)] if out is not None else []
    if page is not None:
        written.append(content.to_html(page))
    emit(_report(content, written), as_json)


def _report(content: Any, written: list[Path]) -> Report:
    result = content.figure
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
            "patch": format_shape(c.patch),
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
        "figure": next((str(path) for path in written if path.suffix.lower() not in (".html", ".htm")), None),
        "html": next((str(path) for path in written if path.suffix.lower() in (".html", ".htm")), None),
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
        "notes": list(content.notes),
        "measured": content.measured_steps,
        "reused": content.reused_steps,
        "archs": [{"arch": row.arch, "bytes_per_voxel": row.bytes_per_voxel, "largest_batch": row.largest_batch}
                  for row in content.archs],
    }  # fmt: skip
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
        *(f"wrote {path}" for path in written),
        f"{content.measured_steps} steps measured, {content.reused_steps} reused from the database"
        f"{', 1 traced event by event' if content.timeline is not None else ''}",
        *content.notes,
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
