"""``memprobe db``: look at and export the benchmark database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from memprobe.cli.options import db_option, emit, json_option
from memprobe.cli.render import Report
from memprobe.core.units import format_bytes

if TYPE_CHECKING:
    from memprobe.store.frames import Export
    from memprobe.store.merge import MergeResult


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
    """List stored calibrations (training, then inference: optimizer "inference") with their fit quality.

    \b
    memprobe db list
    memprobe db list --db calib.sqlite --no-shipped --json
    """
    from memprobe.store.calibration_sources import (
        all_inference_calibrations,
        shipped_calibrations,
        user_calibrations,
        user_inference_calibrations,
    )

    calibrations = user_calibrations(db_path) + (shipped_calibrations() if shipped else [])
    calibrations += all_inference_calibrations(db_path) if shipped else user_inference_calibrations(db_path)
    rows = [
        {
            "arch": c.arch,
            "device": c.device,
            "precision": c.precision,
            "optimizer": c.optimizer,
            "deep sup.": "yes" if c.deep_supervision else "no",
            "step": c.measured_step + (" +checkpointing" if c.checkpointing else ""),
            "GPUs": "1" if c.strategy == "single" else f"{c.strategy} x{c.world_size}",
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
    from memprobe.store.database import Database

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


_SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@db.command("export")
@db_option
@click.option("-o", "--out", "out_path", required=True, type=str, help="File to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["shipped", "csv", "json", "parquet"]),
    default=None,
    help="shipped: the newest calibrations as the JSON memprobe ships and `db import` reads; "
    "csv, json (a list of records) or parquet: a --table as pandas writes it.  [default: from "
    "--out's extension: .csv, .parquet; else shipped]",
)
@click.option(
    "--table",
    type=click.Choice(["measurements", "calibrations"]),
    default=None,
    help="With csv, json or parquet: the rows to write, as memprobe.load_measurements() and "
    "load_calibrations() give them.  [default: measurements]",
)
@json_option
def export(db_path: str | None, out_path: str, fmt: str | None, table: str | None, as_json: bool) -> None:
    """Export the database: calibrations as memprobe ships them, or a table for pandas.

    Parquet needs pyarrow: pip install 'memprobe[parquet]'. The file is written whole or not
    at all, and never over the database itself.

    \b
    memprobe db export --db build/shipped.sqlite --out memprobe/data/calibrations.json
    memprobe db export -o measurements.csv
    memprobe db export --format parquet --table calibrations -o calibrations.parquet
    """
    from memprobe.core.errors import InvalidInputError
    from memprobe.core.output_paths import check_output_path
    from memprobe.store.database import database_files

    fmt = fmt or _SUFFIX_FORMATS.get(Path(out_path).suffix.lower(), "shipped")
    if fmt == "shipped" and table == "measurements":
        raise InvalidInputError("--format shipped writes calibrations: use --format csv, json or parquet")
    target = check_output_path(out_path, reading=database_files(db_path))
    if fmt == "shipped":
        result = _export_shipped(db_path, target)
    else:
        from memprobe.store.frames import export_table

        result = export_table(db_path, table or "measurements", fmt, target)
    if as_json:
        emit(Report(result.to_dict()), as_json)
    click.echo(f"wrote {result.rows} {result.table} to {out_path} ({result.format})", err=True)


def _export_shipped(db_path: str | None, target: Path) -> Export:
    """The newest calibrations as the JSON memprobe ships its defaults in (``make shipped``)."""
    from memprobe.core.errors import InvalidInputError
    from memprobe.core.output_paths import write_atomically
    from memprobe.store.calibration_sources import user_calibrations
    from memprobe.store.frames import Export

    calibrations = [dict(c.to_dict(), source="shipped") for c in user_calibrations(db_path)]
    try:
        write_atomically(target, json.dumps(calibrations, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        raise InvalidInputError(f"cannot write {target}: {error.strerror or error}") from None
    return Export(str(target), "calibrations", len(calibrations), "shipped")


@db.command("merge")
@click.argument("sources", nargs=-1, required=True, metavar="DATABASE...")
@click.option("-o", "--out", "out_path", required=True, help="Database to write (kept rows included).")
@json_option
def merge(sources: tuple[str, ...], out_path: str, as_json: bool) -> None:
    """Merge memprobe databases into one, keeping each measurement and calibration once.

    Measurements count as the same when environment, configuration and measuring code agree;
    calibrations when key and creation time do. An existing --out keeps its rows.

    \b
    memprobe db merge gpu-box.sqlite laptop.sqlite -o lab.sqlite
    """
    from memprobe.store.merge import merge_databases

    _report(merge_databases(sources, out_path), out_path, as_json)


@db.command("import")
@click.argument("file", metavar="FILE")
@db_option
@json_option
def import_rows(file: str, db_path: str | None, as_json: bool) -> None:
    """Add a database's rows, or `db export` JSON calibrations, to --db; each kept once.

    \b
    memprobe db import gpu-box.sqlite
    memprobe db import calibrations.json --db laptop.sqlite
    """
    from memprobe.store.merge import import_into

    result, where = import_into(file, db_path)
    _report(result, where, as_json)


def _report(result: MergeResult, where: str, as_json: bool) -> None:
    rows = [
        {"table": table, "copied": copied, "already there": result.duplicates.get(table, 0)}
        for table, copied in result.copied.items()
    ]
    emit(Report(result.to_dict(), (("Merged", rows),)), as_json)
    skipped = f", {result.skipped} unusable rows skipped" if result.skipped else ""
    click.echo(f"{where}: {sum(result.copied.values())} rows added{skipped}", err=True)


@db.command("migrate")
@db_option
def migrate(db_path: str | None) -> None:
    """Bring the database's schema up to this memprobe's; read commands never change it.

    \b
    memprobe db migrate --db postgresql://me@db.lab/memprobe
    memprobe db migrate --db lab.sqlite
    """
    from memprobe.store.database import migrate_database

    where, version = migrate_database(db_path)
    click.echo(f"{where}: schema version {version}, this memprobe's")


@db.command("check")
@db_option
@click.option("--repair", is_flag=True, help="Move the bad rows to the quarantine table (never deleted).")
def check(db_path: str | None, repair: bool) -> None:
    """Report rows that memprobe cannot use; exit 1 if there are any.

    Planning skips such rows with a warning; --repair moves them into the ``quarantine`` table,
    where they stay, with the reason, for inspection or restoring by hand.

    \b
    memprobe db check --db calib.sqlite
    memprobe db check --db calib.sqlite --repair
    """
    from memprobe.store.database import Database

    with Database.open(db_path, create=False, readonly=not repair) as database:
        bad = database.bad_rows()
        for row in bad:
            click.echo(f"{row.table} row {row.row_id}: {row.reason}")
        if repair and bad:
            database.quarantine(bad)
    where = database.path or database.location
    if not bad:
        click.echo(f"{where}: every row is usable", err=True)
        return
    done = "moved to the quarantine table" if repair else "run with --repair to quarantine them"
    click.echo(f"{where}: {len(bad)} bad row{'s' if len(bad) != 1 else ''}; {done}", err=True)
    if not repair:
        raise click.exceptions.Exit(1)


def _percent(value: float | None) -> float | str:
    return round(100 * value, 2) if value is not None else "-"
