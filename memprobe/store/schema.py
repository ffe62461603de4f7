"""The database's schema: numbered migrations, shared by SQLite and PostgreSQL, and column checks."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from typing import Any

from memprobe.core.errors import DatabaseError

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE environments (
        id INTEGER PRIMARY KEY,
        device_kind TEXT NOT NULL,
        device_name TEXT NOT NULL,
        total_memory_bytes INTEGER,
        driver_version TEXT,
        cuda_version TEXT,
        cudnn_version TEXT,
        torch_version TEXT,
        monai_version TEXT,
        memprobe_version TEXT,
        host TEXT,
        created_at TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE
    );
    CREATE TABLE measurements (
        id INTEGER PRIMARY KEY,
        environment_id INTEGER NOT NULL REFERENCES environments(id),
        arch TEXT NOT NULL,
        patch_d INTEGER NOT NULL, patch_h INTEGER NOT NULL, patch_w INTEGER NOT NULL,
        batch INTEGER NOT NULL,
        precision TEXT NOT NULL,
        optimizer TEXT NOT NULL,
        in_channels INTEGER NOT NULL,
        out_channels INTEGER NOT NULL,
        deep_supervision INTEGER NOT NULL,
        budget_bytes INTEGER,
        peak_allocated_bytes INTEGER,
        peak_reserved_bytes INTEGER,
        phase_peaks_json TEXT NOT NULL DEFAULT '{}',
        breakdown_json TEXT NOT NULL DEFAULT '{}',
        step_seconds REAL,
        oom INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        parameter_count INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX measurements_by_config ON measurements (
        environment_id, arch, precision, optimizer, deep_supervision, batch, patch_d, patch_h, patch_w
    );
    CREATE TABLE calibrations (
        id INTEGER PRIMARY KEY,
        arch TEXT NOT NULL,
        device TEXT NOT NULL,
        precision TEXT NOT NULL,
        optimizer TEXT NOT NULL,
        deep_supervision INTEGER NOT NULL,
        environment_id INTEGER REFERENCES environments(id),
        phase_coefficients_json TEXT NOT NULL,
        parameter_model_json TEXT NOT NULL,
        quality_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX calibrations_by_key ON calibrations (arch, device, precision, optimizer, deep_supervision);
    """,
    # 2: the allocator's reserve (measured or simulated), overheads, what a measurement's reuse
    # depends on, and what a calibration knows of its own reach.
    """
    ALTER TABLE measurements ADD COLUMN reserved_source TEXT;
    ALTER TABLE measurements ADD COLUMN simulated_allocated_bytes INTEGER;
    ALTER TABLE measurements ADD COLUMN reserved_phase_peaks_json TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE measurements ADD COLUMN context_bytes INTEGER;
    ALTER TABLE measurements ADD COLUMN warmup_steps INTEGER;
    ALTER TABLE measurements ADD COLUMN code_version INTEGER;
    ALTER TABLE measurements ADD COLUMN model_hash TEXT;
    ALTER TABLE calibrations ADD COLUMN reserved_coefficients_json TEXT;
    ALTER TABLE calibrations ADD COLUMN reserved_quality_json TEXT;
    ALTER TABLE calibrations ADD COLUMN fit_range_json TEXT;
    ALTER TABLE calibrations ADD COLUMN context_bytes INTEGER;
    """,
    # 3 (#13): the training step each measurement and calibration is of, a custom step's source
    # hash, activation checkpointing, and the peaks of a LightningModule's own training step (memprobe's Lightning callback).
    """
    ALTER TABLE measurements ADD COLUMN step TEXT NOT NULL DEFAULT 'memprobe';
    ALTER TABLE measurements ADD COLUMN step_hash TEXT;
    ALTER TABLE measurements ADD COLUMN checkpointing INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calibrations ADD COLUMN step TEXT NOT NULL DEFAULT 'memprobe';
    ALTER TABLE calibrations ADD COLUMN checkpointing INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE module_peaks (
        id INTEGER PRIMARY KEY,
        module_key TEXT NOT NULL,
        device_kind TEXT NOT NULL,
        batch INTEGER NOT NULL,
        peak_allocated_bytes INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX module_peaks_by_key ON module_peaks (module_key, device_kind, batch);
    """,
    # 4: rows `memprobe db check --repair` moved out of the way (never deleted), with the reason.
    """
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        source_table TEXT NOT NULL,
        source_id INTEGER NOT NULL,
        reason TEXT NOT NULL,
        row_json TEXT NOT NULL,
        quarantined_at TEXT NOT NULL
    );
    """,
    # 5 (#17): sliding-window inference, kept apart from training (memprobe/store/inference_rows.py).
    """
    CREATE TABLE inference_measurements (
        id INTEGER PRIMARY KEY,
        environment_id INTEGER NOT NULL REFERENCES environments(id),
        arch TEXT NOT NULL,
        roi_d INTEGER NOT NULL, roi_h INTEGER NOT NULL, roi_w INTEGER NOT NULL,
        image_d INTEGER NOT NULL, image_h INTEGER NOT NULL, image_w INTEGER NOT NULL,
        sw_batch_size INTEGER NOT NULL,
        overlap REAL NOT NULL,
        blend TEXT NOT NULL,
        precision TEXT NOT NULL,
        in_channels INTEGER NOT NULL,
        out_channels INTEGER NOT NULL,
        stitch TEXT NOT NULL,
        peak_allocated_bytes INTEGER,
        peak_reserved_bytes INTEGER,
        phase_peaks_json TEXT NOT NULL DEFAULT '{}',
        reserved_phase_peaks_json TEXT NOT NULL DEFAULT '{}',
        seconds REAL,
        oom INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        parameter_count INTEGER,
        reserved_source TEXT,
        simulated_allocated_bytes INTEGER,
        context_bytes INTEGER,
        code_version INTEGER NOT NULL,
        model_hash TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX inference_measurements_by_config ON inference_measurements (
        environment_id, arch, precision, roi_d, roi_h, roi_w, image_d, image_h, image_w, sw_batch_size
    );
    CREATE TABLE inference_calibrations (
        id INTEGER PRIMARY KEY,
        arch TEXT NOT NULL,
        device TEXT NOT NULL,
        precision TEXT NOT NULL,
        environment_id INTEGER REFERENCES environments(id),
        phase_coefficients_json TEXT NOT NULL,
        parameter_model_json TEXT NOT NULL,
        quality_json TEXT NOT NULL,
        reserved_coefficients_json TEXT,
        reserved_quality_json TEXT,
        fit_range_json TEXT,
        context_bytes INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE INDEX inference_calibrations_by_key ON inference_calibrations (arch, device, precision);
    """,
    # 6 (#14): one rank of data parallelism: the strategy ('single', 'ddp', 'fsdp') and the
    # ranks it spreads over, part of each measurement's configuration and calibration's key.
    """
    ALTER TABLE measurements ADD COLUMN strategy TEXT NOT NULL DEFAULT 'single';
    ALTER TABLE measurements ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE calibrations ADD COLUMN strategy TEXT NOT NULL DEFAULT 'single';
    ALTER TABLE calibrations ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1;
    DROP INDEX IF EXISTS measurements_by_config;
    CREATE INDEX measurements_by_config ON measurements (
        environment_id, arch, precision, optimizer, deep_supervision, batch, patch_d, patch_h, patch_w,
        strategy, world_size
    );
    DROP INDEX IF EXISTS calibrations_by_key;
    CREATE INDEX calibrations_by_key ON calibrations (
        arch, device, precision, optimizer, deep_supervision, strategy, world_size
    );
    """,
    # 7: what an inference configuration sets beyond MONAI's defaults (``InferenceConfig.settings``:
    # the nnU-Net predictor, its mirroring, ``buffer_steps``), part of a measurement's lookup and a
    # calibration's key. memprobe before schema 7 added the column when a row first needed it;
    # apply_migrations skips an ADD COLUMN the table has already.
    """
    ALTER TABLE inference_measurements ADD COLUMN settings_json TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE inference_calibrations ADD COLUMN settings_json TEXT NOT NULL DEFAULT '{}';
    DROP INDEX IF EXISTS inference_measurements_by_config;
    CREATE INDEX inference_measurements_by_config ON inference_measurements (
        environment_id, arch, precision, roi_d, roi_h, roi_w, image_d, image_h, image_w, sw_batch_size,
        settings_json
    );
    DROP INDEX IF EXISTS inference_calibrations_by_key;
    CREATE INDEX inference_calibrations_by_key ON inference_calibrations (arch, device, precision, settings_json);
    """,
)


SCHEMA_VERSION = len(MIGRATIONS)


# A schema at least this new is read as it is where a read may not migrate it (a PostgreSQL
# server; SQLite reads a migrated in-memory copy): the later migrations only add columns with
# defaults, which reading fills in (row_checks.column). Raise it with a migration that adds a
# table reading uses, or a column without a default.
READ_AS_IS_FROM = 5


def schema_columns(version: int) -> dict[str, set[str]]:
    """The columns of each table in schema ``version``: what a database of that version holds."""
    schema = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS[:version]:
            schema.executescript(script)
        return table_columns(schema)
    finally:
        schema.close()


def table_columns(connection: sqlite3.Connection) -> dict[str, set[str]]:
    tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {
        name: {column[1] for column in connection.execute(f"PRAGMA table_info({_quoted(name)})")}
        for (name,) in tables
    }


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def missing_column(present: dict[str, set[str]], wanted: dict[str, set[str]]) -> str | None:
    """The first table, or ``table.column``, of ``wanted`` that ``present`` lacks; None if none."""
    for table in sorted(wanted):
        if table not in present:
            return table
        lacking = sorted(wanted[table] - present[table])
        if lacking:
            return f"{table}.{lacking[0]}"
    return None


def check_columns(where: object, present: dict[str, set[str]], version: int) -> None:
    """Refuse a database without a table or column its schema version has (dropped by hand, damaged).

    Its version alone would let it through, and every read would then fail on the missing column.
    """
    missing = missing_column(present, schema_columns(version))
    if missing is not None:
        what = "column" if "." in missing else "table"
        raise DatabaseError(
            f"database {where} lacks the {what} {missing} of its schema version {version}: it was "
            "damaged or changed by another program; restore it from a copy or pass another --db"
        )


def apply_migrations(
    connection: Any,
    current: int,
    translate: Callable[[str], str] = str,
    columns: Callable[[Any], dict[str, set[str]]] | None = None,
) -> None:
    """Run every migration after ``current`` inside the caller's transaction, recording each.

    ``translate`` turns a migration's SQLite DDL into another server's (PostgreSQL's), and
    ``columns`` reads the tables' columns there (default: SQLite's). An ``ADD COLUMN`` of a
    column the table has already is skipped: memprobe before schema 7 added ``settings_json``
    when first needed, and SQLite has no ``ADD COLUMN IF NOT EXISTS``.
    """
    read_columns = columns or table_columns
    for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
        present = read_columns(connection) if _ADD_COLUMN.search(script) else {}
        for statement in translate(script).split(";"):
            if statement.strip() and not _adds_present_column(statement, present):
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {number}")


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)")


def _adds_present_column(statement: str, present: dict[str, set[str]]) -> bool:
    match = _ADD_COLUMN.match(" ".join(statement.split()))
    return match is not None and match.group(2) in present.get(match.group(1), set())
