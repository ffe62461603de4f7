"""``memprobe db``: look at and export the benchmark database."""

from __future__ import annotations

import json
from pathlib import Path

import click

from memprobe.commands.options import db_option, emit, json_option
from memprobe.reporters import Report
from memprobe.units import format_bytes


@click.group()
def db() -> None:
    """Inspect the benchmark database (measurements and calibrations)."""


@db.command("list")
@db_option
@click.option(
    "--shipped/--no-shipped", default=True, show_default=True, help="Include the calibrations memprobe ships."
)
@json_option
def list_calibrations(db_path: str | None, shipped: bool, as_json: bool) -> None:
    """List stored calibrations with their fit quality.

    \b
    memprobe db list
    memprobe db list --db calib.sqlite --no-shipped --json
    """
    from memprobe.sources import shipped_calibrations, user_calibrations

    calibrations = user_calibrations(db_path) + (shipped_calibrations() if shipped else [])
    rows = [
        {
            "arch": c.arch,
            "device": c.device,
            "precision": c.precision,
            "optimizer": c.optimizer,
            "deep sup.": "yes" if c.deep_supervision else "no",
            "points": c.quality.points,
            "fit median %": round(100 * c.quality.median_relative_error, 2),
            "held-out median %": _percent(c.quality.heldout_median_relative_error),
            "held-out worst %": _percent(c.quality.heldout_max_relative_error),
            "source": c.source,
            "created": c.created_at[:19],
        }
        for c in calibrations
    ]
    note = "held-out %: the fit against the backend it was measured on (fit vs trace for a trace calibration)"
    emit(Report([c.to_dict() for c in calibrations], (("Calibrations", rows),), (note,)), as_json)


@db.command("measurements")
@db_option
@click.option("--arch", default=None, help="Only this architecture.")
@json_option
def list_measurements(db_path: str | None, arch: str | None, as_json: bool) -> None:
    """List stored measurements.

    \b
    memprobe db measurements --arch mednext
    """
    from memprobe.db import Database

    with Database.open(db_path, create=False, readonly=True) as database:
        measurements = database.measurements(arch=arch)
    rows = [
        {
            "configuration": m.config.label(),
            "device": m.environment.device_name,
            "peak allocated": "OOM" if m.oom else m.error or format_bytes(m.peak_allocated_bytes),
            "peak reserved": format_bytes(m.peak_reserved_bytes),
        }
        for m in measurements
    ]
    emit(Report([m.to_dict() for m in measurements], (("Measurements", rows),)), as_json)


@db.command("export")
@db_option
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON file to write (memprobe/data/calibrations.json to ship them).",
)
def export(db_path: str | None, out_path: Path) -> None:
    """Export the newest calibrations as JSON (the format memprobe ships its defaults in).

    \b
    memprobe db export --db build/shipped.sqlite --out memprobe/data/calibrations.json
    """
    from memprobe.sources import user_calibrations

    calibrations = [dict(c.to_dict(), source="shipped") for c in user_calibrations(db_path)]
    out_path.write_text(json.dumps(calibrations, indent=1, sort_keys=True) + "\n")
    click.echo(f"wrote {len(calibrations)} calibrations to {out_path}", err=True)


def _percent(value: float | None) -> float | str:
    return round(100 * value, 2) if value is not None else "-"
