"""Bring one lab's databases together: ``db merge`` into a new file, ``db import`` into a live one.

Rows are input (memprobe.store.row_checks): a row that cannot be used is skipped with one warning,
never copied. Each row is kept once: measurements by environment fingerprint, configuration
(budget, training step and its hash included) and measurement-code version with the model
hash; calibrations by their key and creation time. Quarantined rows stay where they are.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_bytes, shown
from memprobe.core.output_paths import check_output_path
from memprobe.store.database import Database, database_files
from memprobe.store.row_checks import (
    BadRowError,
    Row,
    calibration_from_fields,
    calibration_from_row,
    column,
    environment_from_row,
    measurement_from_row,
    warn_bad_row,
)

# What a measurement found, not what it was of: left out of the key that decides duplicates.
_RESULT_COLUMNS = frozenset(
    {
        "id",
        "created_at",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "phase_peaks_json",
        "breakdown_json",
        "reserved_phase_peaks_json",
        "step_seconds",
        "seconds",
        "oom",
        "error",
        "parameter_count",
        "reserved_source",
        "simulated_allocated_bytes",
        "context_bytes",
        "warmup_steps",
    }
)
_CALIBRATION_KEY = (
    "arch",
    "device",
    "precision",
    "optimizer",
    "deep_supervision",
    "step",
    "checkpointing",
    "strategy",
    "world_size",
)
_KEYS: dict[str, tuple[str, ...] | None] = {  # None: every column that is not a result
    "measurements": None,
    "calibrations": (*_CALIBRATION_KEY, "created_at"),
    "inference_measurements": None,
    "inference_calibrations": ("arch", "device", "precision", "settings_json", "created_at"),
    "module_peaks": ("module_key", "device_kind", "batch", "peak_allocated_bytes", "created_at"),
}
# Columns a source read as it is (a server of an older schema) may lack, with the value migrating gives.
_MIGRATED_DEFAULTS: dict[str, dict[str, object]] = {
    "inference_measurements": {"settings_json": "{}"},
    "inference_calibrations": {"settings_json": "{}"},
}


@dataclass(frozen=True)
class MergeResult:
    """Rows copied and rows already present (duplicates), per table; rows skipped as unusable."""

    copied: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"copied": self.copied, "duplicates": self.duplicates, "skipped": self.skipped}


def merge_databases(sources: Sequence[str | Path], out: str | Path) -> MergeResult:
    """Write ``out`` holding every usable row of ``sources`` once (``out`` too, if it exists).

    The result is built beside ``out`` and moved into place whole, so a failure leaves ``out``
    as it was.

    Raises:
        InvalidInputError: ``out`` is one of the sources or cannot be written.
        DatabaseError: a source is missing or not a memprobe database.
    """
    if not sources:
        raise InvalidInputError("db merge needs at least one database to read")
    reading = [file for source in sources for file in database_files(source)]
    target = check_output_path(out, "-o", reading=reading)
    inputs = [str(source) for source in sources]  # a PostgreSQL URL stays a URL
    handle, temporary = tempfile.mkstemp(
        dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    os.unlink(temporary)  # Database creates it
    try:
        with Database.open(temporary) as database:
            database._writer()  # the merged file exists even when the inputs hold no rows
            if target.exists():
                _copy_each([target], database)  # merging into an existing file keeps what it holds
            result = _copy_each(inputs, database)
        os.replace(temporary, target)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{temporary}{suffix}").unlink(missing_ok=True)
    return result


def import_into(file: str | Path, db_path: str | Path | None) -> tuple[MergeResult, str]:
    """Add the rows of ``file`` to the database at ``db_path``; each row is kept once.

    ``file`` is either a memprobe database, or JSON written by ``memprobe db export``; the
    database may be a PostgreSQL URL. Returns what was added, and where (password removed).

    Raises:
        InvalidInputError: ``file`` is missing, is the database itself, or is neither kind
            (JSON too large or nested too deeply included).
    """
    source = Path(file).expanduser()
    if not source.is_file():
        raise InvalidInputError(f"{source} is not a file: give a database or a `db export` JSON file")
    if any(_same(source, other) for other in database_files(db_path)):
        raise InvalidInputError(f"{source} is the database --db names: import another file")
    with source.open("rb") as stream:
        header = stream.read(16)
    items = None if header == b"SQLite format 3\x00" else _exported_items(source)
    with Database.open(db_path) as database:
        if items is None:
            return _copy_each([source], database), database.location
        return _import_exported(source, items, database), database.location


def _exported_items(source: Path) -> list[Any]:
    """The items of a ``db export`` JSON file, read as input: a regular file under the size cap."""
    data = read_input_bytes(source, "db import")
    try:
        items = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise InvalidInputError(
            f"{shown(source)} is JSON nested too deeply to be `db export` output"
        ) from None
    except ValueError as error:  # not UTF-8, not JSON, or a number of thousands of digits
        raise InvalidInputError(
            f"{shown(source)} is neither a memprobe database nor `db export` JSON ({shown(error)})"
        ) from None
    if not isinstance(items, list):
        raise InvalidInputError(f"{source} is not `db export` JSON: expected a list of calibrations")
    return items


def _same(first: Path, second: Path) -> bool:
    try:
        return second.exists() and os.path.samefile(first, second)
    except OSError:
        return False


def _copy_each(sources: Sequence[str | Path], target: Database) -> MergeResult:
    copied: dict[str, int] = {}
    duplicates: dict[str, int] = {}
    skipped = 0
    for path in sources:
        with Database.open(path, create=False, readonly=True) as source:
            skipped += _copy(source, target, copied, duplicates)
    return MergeResult(copied, duplicates, skipped)


def _copy(source: Database, target: Database, copied: dict[str, int], duplicates: dict[str, int]) -> int:
    """Copy the new usable rows of ``source`` into ``target``, counting; return how many were skipped."""
    skipped = 0
    where = source.location
    environments = _environment_ids(source, target)
    checks = _row_checks(source, where)
    for table in _KEYS:
        rows = [row for row in source._rows(f"SELECT * FROM {table} ORDER BY id")]
        usable = []
        for row in rows:
            try:
                checks.get(table, lambda row: None)(row)
                environment_id = row["environment_id"] if table != "module_peaks" else None
                if environment_id is not None and environment_id not in environments:
                    raise BadRowError(f"its environment {environment_id!r} does not exist")
            except BadRowError as error:
                warn_bad_row(where, table, row["id"], str(error))
                skipped += 1
                continue
            usable.append(row)
        new, known = _insert_new(target, table, usable, environments)
        copied[table] = copied.get(table, 0) + new
        duplicates[table] = duplicates.get(table, 0) + known
    return skipped


def _environment_ids(source: Database, target: Database) -> dict[object, int]:
    """Each usable environment of ``source`` by its id there, mapped to its id in ``target``."""
    mapping = {}
    for row in source._rows("SELECT * FROM environments ORDER BY id"):
        try:
            environment = environment_from_row(row)
        except BadRowError as error:
            warn_bad_row(source.location, "environments", row["id"], str(error))
            continue
        mapping[row["id"]] = target.environment_id(environment)
    return mapping


def _row_checks(source: Database, where: str) -> dict[str, Callable[[Row], object]]:
    """Validate a row of each table as input (raises BadRowError)."""

    def measurement(row: Row) -> object:
        return measurement_from_row(row, source._environment(row["environment_id"]))

    def calibration(row: Row) -> object:
        environment_id = row["environment_id"]
        environment = source._environment(environment_id).to_dict() if environment_id is not None else {}
        return calibration_from_row(row, environment, source=where)

    def inference_measurement(row: Row) -> object:
        from memprobe.store.inference_rows import inference_measurement_from_row

        environment = source._environment(row["environment_id"])
        return _checked(lambda: inference_measurement_from_row(row, environment))  # type: ignore[arg-type]

    def inference_calibration(row: Row) -> object:
        return _checked(lambda: source.inference_calibration_from_row(row))  # type: ignore[arg-type]

    return {
        "measurements": measurement,
        "calibrations": calibration,
        "inference_measurements": inference_measurement,
        "inference_calibrations": inference_calibration,
    }


def _checked(read: Callable[[], object]) -> object:
    """Run a reader of inference rows, which raise plain errors, turning them into BadRowError."""
    try:
        return read()
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise BadRowError(str(error)) from None


def _insert_new(
    target: Database, table: str, rows: list[Any], environments: dict[object, int]
) -> tuple[int, int]:
    """Insert the rows whose key ``target`` does not hold yet, in one transaction."""
    if not rows:
        return 0, 0
    defaults = _MIGRATED_DEFAULTS.get(table, {})
    names: list[str] = rows[0].keys()
    columns = [*(name for name in defaults if name not in names), *(name for name in names if name != "id")]
    key_columns = _KEYS[table] or tuple(name for name in columns if name not in _RESULT_COLUMNS)
    copied = duplicates = 0
    with target._write() as connection:
        present = {
            tuple(row[name] for name in key_columns)
            for row in connection.execute(f"SELECT {', '.join(key_columns)} FROM {table}").fetchall()
        }
        for row in rows:
            values = {name: column(row, name, defaults.get(name)) for name in columns}
            if values.get("environment_id") is not None:
                values["environment_id"] = environments[values["environment_id"]]
            key = tuple(values[name] for name in key_columns)
            if key in present:
                duplicates += 1
                continue
            present.add(key)
            connection.execute(
                f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            copied += 1
    return copied, duplicates


def _import_exported(source: Path, items: list[Any], target: Database) -> MergeResult:
    """Add the calibrations of a ``db export`` JSON file (each checked as input) to ``target``."""
    present = {
        (
            (
                *(row[name] for name in _CALIBRATION_KEY[:4]),
                bool(row["deep_supervision"]),
                row["step"],
                bool(row["checkpointing"]),
                row["strategy"],
                row["world_size"],
            ),
            row["created_at"],
        )
        for row in target._rows(f"SELECT {', '.join(_CALIBRATION_KEY)}, created_at FROM calibrations")
    }
    copied = duplicates = skipped = 0
    for number, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise BadRowError("not an object")
            calibration = calibration_from_fields(item, source=target.location)
        except BadRowError as error:
            warn_bad_row(str(source), "calibration", number, str(error), "fix or remove it in the file")
            skipped += 1
            continue
        if (calibration.key, calibration.created_at) in present:
            duplicates += 1
            continue
        present.add((calibration.key, calibration.created_at))
        environment = _exported_environment(item.get("environment"))
        target.add_calibration(calibration, environment)
        copied += 1
    return MergeResult({"calibrations": copied}, {"calibrations": duplicates}, skipped)


def _exported_environment(facts: object) -> Any:
    """The environment an exported calibration was made in, when the file says (else None)."""
    from memprobe.core.measurement import Environment

    if not isinstance(facts, dict) or not facts:
        return None
    try:
        return environment_from_row({name: facts.get(name) for name in Environment.__dataclass_fields__})
    except (BadRowError, TypeError):
        return None
