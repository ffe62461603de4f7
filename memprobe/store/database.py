"""The benchmark database: environments, measurements and calibrations in SQLite.

Every measurement is committed the moment it is taken, so an interrupted calibration keeps
what it measured; WAL mode, a busy timeout and short transactions let several calibrations
write one file at once. The schema is versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import quote

from memprobe.core.config import StepConfig
from memprobe.core.errors import DatabaseError
from memprobe.core.inference_config import InferenceConfig
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.core.input_files import shown
from memprobe.core.measurement import Environment, Measurement, ReuseKey
from memprobe.formula.calibration import Calibration
from memprobe.formula.inference_calibration import InferenceCalibration
from memprobe.store import schema
from memprobe.store.inference_rows import INFERENCE_REUSE_KEY, InferenceTables
from memprobe.store.row_checks import (
    BadRowError,
    calibration_from_row,
    environment_from_row,
    measurement_from_row,
    warn_bad_row,
)
from memprobe.store.schema import (
    apply_migrations,
    check_columns,
    missing_column,
    schema_columns,
    table_columns,
)

T = TypeVar("T")
_CURRENT_CODE = ReuseKey()  # a registered network measured by this memprobe
ENV_VARIABLE = "MEMPROBE_DB"
BUSY_TIMEOUT_MS = 60_000


def database_url(db_path: str | Path | None = None) -> str | None:
    """The PostgreSQL URL that ``db_path`` (or, without one, ``$MEMPROBE_DB``) names, else None (a file).

    Raises:
        DatabaseError: a URL of another scheme (``sqlite:///``, ``mysql://``) or a malformed
            PostgreSQL URL: taken for a relative file path, it would create ``./sqlite:/`` folders.
    """
    from memprobe.store.postgres import check_url, is_url, masked, url_scheme

    text = os.environ.get(ENV_VARIABLE, "") if db_path is None else db_path
    scheme = url_scheme(text)
    if not isinstance(text, str) or scheme is None:
        return None
    what = "--db" if db_path is not None else f"${ENV_VARIABLE}"
    if not is_url(text):
        raise DatabaseError(
            f"{what} {shown(masked(text))}: unknown scheme {scheme!r}; give a database file's "
            "path or a postgresql:// URL"
        )
    check_url(text, what)
    return text


def database_exists(db_path: str | Path | None = None) -> bool:
    """Whether the database ``db_path`` names (default: ``$MEMPROBE_DB``, else the user's) may hold rows.

    Raises:
        DatabaseError: ``db_path`` is a bad URL, or a file in a folder that does not exist.
    """
    if database_url(db_path) is not None:
        return True
    if db_path is None:
        return default_db_path().exists()
    target = Path(db_path).expanduser()
    _check_folder(target)
    return target.exists()


def default_db_path() -> Path:
    """``$MEMPROBE_DB``, else ``memprobe.sqlite`` in the user's data directory.

    Raises:
        DatabaseError: ``$MEMPROBE_DB`` names a link that leads nowhere or loops, or a file in
            a folder that does not exist (reported like a bad --db, never silently replaced).
    """
    if os.environ.get(ENV_VARIABLE):
        path = Path(os.environ[ENV_VARIABLE]).expanduser()
        if path.is_symlink() and not path.exists():
            raise DatabaseError(
                f"${ENV_VARIABLE}={path} is a link that leads nowhere or loops: fix it or pass --db"
            )
        if not path.parent.is_dir():
            raise DatabaseError(
                f"${ENV_VARIABLE}={path} is in a folder that does not exist: fix it or pass --db"
            )
        return path
    from platformdirs import user_data_path

    return user_data_path("memprobe", appauthor=False) / "memprobe.sqlite"


def migrate_database(path: str | Path | None = None) -> tuple[str, int]:
    """Bring the existing database at ``path`` to this memprobe's schema (a read never does).

    Returns where it is (password removed) and its schema version now.

    Raises:
        DatabaseError: there is no database at ``path``, or it cannot be migrated.
    """
    with Database.open(path, create=False) as database:
        return database.location, database.schema_version()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _retry_when_locked(action: Callable[[], T], attempts: int = 20) -> T:
    """Run ``action``, retrying with backoff while another writer holds the lock."""
    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as error:
            if ("locked" not in str(error) and "busy" not in str(error)) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


class Database(InferenceTables):
    """A memprobe benchmark database file (use :meth:`open`).

    Training steps and sliding-window inferences are kept in tables of their own; the same
    methods store and find either (``add_measurement``, ``find_measurement``,
    ``add_calibration``), and each kind is read back with its own (``measurements`` and
    ``calibrations``, ``inference_measurements`` and ``inference_calibrations``).
    """

    def __init__(
        self,
        connection: sqlite3.Connection | None,
        path: Path | None,
        readonly: bool = False,
        location: str | None = None,
    ) -> None:
        self._opened = connection  # None until a database that does not exist yet is first written
        self.path = path
        self.readonly = readonly
        self._location = location  # a server's URL, password removed

    @classmethod
    def open(cls, path: str | Path | None = None, *, create: bool = True, readonly: bool = False) -> Database:
        """Open (and, for writing, migrate) the database at ``path``.

        A database that does not exist yet is created by the first write, so a command that
        fails before it measures anything leaves no file behind.

        Raises:
            DatabaseError: the file is not a memprobe database, is from a newer memprobe,
                is damaged, or cannot be created or written; the file is left as it was.
        """
        url = database_url(path)
        if url is not None:
            from memprobe.store.postgres import connect

            server = connect(url, readonly=readonly)
            return cls(server, None, readonly, server.location)  # type: ignore[arg-type]
        target = default_db_path() if path is None else Path(path).expanduser()
        if str(target) == ":memory:":
            connection = sqlite3.connect(":memory:", isolation_level=None)
            return cls(_prepared(connection, None, readonly=False), None)
        if target.is_dir():
            raise DatabaseError(f"{target} is a directory, not a database file: pass --db FILE")
        if target.is_symlink() and not target.exists():
            raise DatabaseError(f"{target} is a link that leads nowhere or loops: pass another --db")
        if target.exists() and not target.is_file():
            raise DatabaseError(f"{target} is not a regular file: pass --db FILE")
        if not target.exists():
            return cls._not_created(target, named=path is not None, writing=create and not readonly)
        return cls(_connect(target, readonly=readonly), target, readonly)

    @classmethod
    def _not_created(cls, target: Path, *, named: bool, writing: bool) -> Database:
        """A database still to be created by its first write: in a folder that exists, if named.

        Only the default location's folder is made; a named one that is missing is a typo, and
        a new database there would take the measurements away from the one meant.
        """
        if writing:
            _check_creatable(target)
        if named:
            _check_folder(target)
        if not writing:
            raise DatabaseError(f"no database at {target}: run `memprobe calibrate` first or pass --db")
        return cls(None, target)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def schema_version(self) -> int:
        """The schema version of the rows (0 for a database not created yet)."""
        rows = self._rows("PRAGMA user_version")
        return int(rows[0][0]) if rows else 0

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reader(self) -> sqlite3.Connection | None:
        """The connection to read from; None while a database still to be created does not exist."""
        if self._opened is None and self.path is not None and self.path.exists():
            self._opened = _connect(self.path, readonly=self.readonly)  # another process created it meanwhile
        return self._opened

    def _writer(self) -> sqlite3.Connection:
        if self._opened is None:
            assert self.path is not None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseError(
                    f"cannot create a database at {self.path}: {error.strerror}; pass --db"
                ) from None
            self._opened = _connect(self.path, readonly=False, create=True)
        return self._opened

    def _rows(self, query: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read query; a database not created yet has no rows."""
        connection = self._reader()
        if connection is None:
            return []
        try:
            return connection.execute(query, parameters).fetchall()
        except sqlite3.DatabaseError as error:
            raise DatabaseError(
                f"cannot read database {self.location} ({error}): pass another --db"
            ) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction, taken with BEGIN IMMEDIATE so writers queue, not deadlock."""
        connection = self._writer()
        try:
            _retry_when_locked(lambda: connection.execute("BEGIN IMMEDIATE"))
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            _retry_when_locked(lambda: connection.execute("COMMIT"))
        except sqlite3.DatabaseError as error:
            raise DatabaseError(f"cannot write to database {self.location}: {error}") from None

    # Environments -------------------------------------------------------------------------

    def environment_id(self, environment: Environment) -> int:
        """The id of ``environment``, inserting it the first time it is seen."""
        known = self._known_environment_id(environment)
        if known is not None:
            return known
        facts = environment.to_dict()
        with self._write() as connection:
            connection.execute(
                f"INSERT OR IGNORE INTO environments ({', '.join(facts)}, created_at, fingerprint) "
                f"VALUES ({', '.join('?' * (len(facts) + 2))})",
                (*facts.values(), _now(), _fingerprint(environment)),
            )
        known = self._known_environment_id(environment)
        assert known is not None
        return known

    def _known_environment_id(self, environment: Environment) -> int | None:
        rows = self._rows("SELECT id FROM environments WHERE fingerprint = ?", (_fingerprint(environment),))
        return int(rows[0][0]) if rows else None

    # Measurements -------------------------------------------------------------------------

    @overload
    def add_measurement(self, measurement: Measurement, reuse_key: ReuseKey | None = None) -> int: ...
    @overload
    def add_measurement(
        self, measurement: InferenceMeasurement, reuse_key: ReuseKey | None = None
    ) -> int: ...
    def add_measurement(
        self, measurement: Measurement | InferenceMeasurement, reuse_key: ReuseKey | None = None
    ) -> int:
        """Store one measurement (a training step's or an inference's), committed at once.

        ``reuse_key`` (measurement-code version, model source hash) decides what later runs
        may reuse it: only those measuring with the same code the same model source (default:
        a registered network measured by this memprobe).
        """
        if isinstance(measurement, InferenceMeasurement):
            return self._add_inference_measurement(measurement, reuse_key or INFERENCE_REUSE_KEY)
        reuse_key = reuse_key or _CURRENT_CODE
        environment_id = self.environment_id(measurement.environment)
        c = measurement.config
        m = measurement
        values = {
            "environment_id": environment_id,
            "arch": c.arch,
            "patch_d": c.patch[0],
            "patch_h": c.patch[1],
            "patch_w": c.patch[2],
            "batch": c.batch,
            "precision": c.precision.value,
            "optimizer": c.optimizer.value,
            "in_channels": c.in_channels,
            "out_channels": c.out_channels,
            "deep_supervision": int(c.deep_supervision),
            "budget_bytes": m.budget_bytes,
            "peak_allocated_bytes": m.peak_allocated_bytes,
            "peak_reserved_bytes": m.peak_reserved_bytes,
            "phase_peaks_json": json.dumps(m.phase_peaks_bytes),
            "breakdown_json": json.dumps(m.breakdown_bytes),
            "step_seconds": m.step_seconds,
            "oom": int(m.oom),
            "error": m.error,
            "parameter_count": m.parameter_count,
            "created_at": _now(),
            "reserved_source": m.reserved_source,
            "simulated_allocated_bytes": m.simulated_allocated_bytes,
            "reserved_phase_peaks_json": json.dumps(m.reserved_phase_peaks_bytes),
            "context_bytes": m.context_bytes,
            "warmup_steps": m.warmup_steps,
            "code_version": reuse_key.code_version,
            "model_hash": reuse_key.model_hash,
            "step": c.step,
            "step_hash": reuse_key.step_hash,
            "checkpointing": int(c.checkpointing),
            "strategy": c.strategy.value,
            "world_size": c.world_size,
        }
        with self._write() as connection:
            cursor = connection.execute(
                f"INSERT INTO measurements ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
        return int(cursor.lastrowid or 0)

    @overload
    def find_measurement(
        self,
        config: StepConfig,
        environment: Environment,
        budget_bytes: int | None = None,
        reuse_key: ReuseKey | None = None,
    ) -> Measurement | None: ...
    @overload
    def find_measurement(
        self,
        config: InferenceConfig,
        environment: Environment,
        budget_bytes: int | None = None,
        reuse_key: ReuseKey | None = None,
    ) -> InferenceMeasurement | None: ...
    def find_measurement(
        self,
        config: StepConfig | InferenceConfig,
        environment: Environment,
        budget_bytes: int | None = None,
        reuse_key: ReuseKey | None = None,
    ) -> Measurement | InferenceMeasurement | None:
        """A stored measurement of ``config`` on this environment, to reuse instead of re-measuring.

        Only one taken by the same measurement code of the same model source (``reuse_key``)
        is reused. A successful peak does not depend on the budget; an out-of-memory result
        does, so it is reused only for the same budget (an inference's never is).
        """
        if isinstance(config, InferenceConfig):
            return self._find_inference_measurement(config, environment, reuse_key or INFERENCE_REUSE_KEY)
        reuse_key = reuse_key or _CURRENT_CODE
        environment_id = self._known_environment_id(environment)  # a lookup must not write
        if environment_id is None:
            return None
        rows = self._rows(
            "SELECT * FROM measurements WHERE environment_id = ? AND arch = ? AND patch_d = ? AND patch_h = ? "
            "AND patch_w = ? AND batch = ? AND precision = ? AND optimizer = ? AND in_channels = ? "
            "AND out_channels = ? AND deep_supervision = ? AND error IS NULL AND code_version = ? "
            "AND model_hash IS ? AND step = ? AND step_hash IS ? AND checkpointing = ? AND strategy = ? "
            "AND world_size = ? ORDER BY id DESC",
            (
                environment_id,
                config.arch,
                *config.patch,
                config.batch,
                config.precision.value,
                config.optimizer.value,
                config.in_channels,
                config.out_channels,
                int(config.deep_supervision),
                reuse_key.code_version,
                reuse_key.model_hash,
                config.step,
                reuse_key.step_hash,
                int(config.checkpointing),
                config.strategy.value,
                config.world_size,
            ),
        )
        for row in rows:
            stored = self._checked_measurement(row, environment)
            if stored is not None and (stored.ok or stored.budget_bytes == budget_bytes):
                return stored
        return None

    def measurements(
        self,
        arch: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        reserved_source: str | None = None,
    ) -> list[Measurement]:
        """Stored measurements, oldest first, optionally filtered (``reserved_source`` "snapshot": imported runs)."""
        query = (
            "SELECT * FROM measurements WHERE (? IS NULL OR arch = ?) AND (? IS NULL OR precision = ?) "
            "AND (? IS NULL OR reserved_source = ?) ORDER BY id"
        )
        result = []
        for row in self._rows(query, (arch, arch, precision, precision, reserved_source, reserved_source)):
            try:
                environment = self._environment(row["environment_id"])
            except BadRowError as error:
                warn_bad_row(self._where, "measurements", row["id"], str(error))
                continue
            if device is not None and environment.calibration_device != device:
                continue
            stored = self._checked_measurement(row, environment)
            if stored is not None:
                result.append(stored)
        return result

    @property
    def location(self) -> str:
        """Where the rows are: the file, ``:memory:``, or the server's URL without its password."""
        return self._location or str(self.path or ":memory:")

    @property
    def _where(self) -> str:
        return self.location

    def _checked_measurement(self, row: sqlite3.Row, environment: Environment) -> Measurement | None:
        """The measurement in ``row``, or None (with one warning) when the row is not usable."""
        try:
            return measurement_from_row(row, environment)
        except BadRowError as error:
            warn_bad_row(self._where, "measurements", row["id"], str(error))
            return None

    def environments(self) -> list[Environment]:
        """Every environment measurements were taken on, oldest first."""
        return [self._environment(row["id"]) for row in self._rows("SELECT id FROM environments ORDER BY id")]

    def _environment(self, environment_id: object) -> Environment:
        rows = self._rows("SELECT * FROM environments WHERE id = ?", (environment_id,))
        if not rows:
            raise BadRowError(f"its environment {environment_id!r} does not exist")
        return environment_from_row(rows[0])

    # Calibrations -------------------------------------------------------------------------

    def add_calibration(self, calibration: Calibration, environment: Environment | None = None) -> int:
        """Store a calibration (a training step's or an inference's); the newest per key answers plans."""
        if isinstance(calibration, InferenceCalibration):
            return self._add_inference_calibration(calibration, environment)
        environment_id = self.environment_id(environment) if environment else None
        with self._write() as connection:
            cursor = connection.execute(
                "INSERT INTO calibrations (arch, device, precision, optimizer, deep_supervision, environment_id, "
                "phase_coefficients_json, parameter_model_json, quality_json, created_at, "
                "reserved_coefficients_json, reserved_quality_json, fit_range_json, context_bytes, step, checkpointing, "
                "strategy, world_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    calibration.arch,
                    calibration.device,
                    calibration.precision,
                    calibration.optimizer,
                    int(calibration.deep_supervision),
                    environment_id,
                    json.dumps(calibration.phase_coefficients),
                    json.dumps(calibration.parameter_model),
                    json.dumps(calibration.quality.__dict__),
                    calibration.created_at or _now(),
                    _json_or_null(calibration.reserved_coefficients),
                    _json_or_null(
                        calibration.reserved_quality.__dict__ if calibration.reserved_quality else None
                    ),
                    _json_or_null(calibration.fit_range),
                    calibration.context_bytes,
                    calibration.step,
                    int(calibration.checkpointing),
                    calibration.strategy,
                    calibration.world_size,
                ),
            )
        return int(cursor.lastrowid or 0)

    def calibrations(self) -> list[Calibration]:
        """The newest usable calibration for each key; a bad row is skipped with one warning."""
        result: dict[tuple[object, ...], Calibration] = {}
        for row in self._rows("SELECT * FROM calibrations ORDER BY id DESC"):
            try:
                calibration = self._calibration_from_row(row)
            except BadRowError as error:
                warn_bad_row(self._where, "calibrations", row["id"], str(error))
                continue
            result.setdefault(calibration.key, calibration)
        return sorted(result.values(), key=lambda c: (c.arch, c.device, c.precision))

    def _calibration_from_row(self, row: sqlite3.Row) -> Calibration:
        environment_id = row["environment_id"]
        environment = self._environment(environment_id).to_dict() if environment_id is not None else {}
        return calibration_from_row(row, environment, source=self._where)

    # A LightningModule's own training step (memprobe.integrations.lightning) -----------------

    def add_module_peak(
        self, module_key: str, device_kind: str, batch: int, peak_allocated_bytes: int
    ) -> None:
        """Store the measured peak of a LightningModule's training step at ``batch``."""
        with self._write() as connection:
            connection.execute(
                "INSERT INTO module_peaks (module_key, device_kind, batch, peak_allocated_bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (module_key, device_kind, batch, peak_allocated_bytes, _now()),
            )

    def module_peaks(self, module_key: str, device_kind: str) -> dict[int, int]:
        """The newest stored peak of each batch measured for ``module_key`` on ``device_kind``."""
        rows = self._rows(
            "SELECT batch, peak_allocated_bytes FROM module_peaks WHERE module_key = ? AND device_kind = ? "
            "ORDER BY id",
            (module_key, device_kind),
        )
        return {int(row["batch"]): int(row["peak_allocated_bytes"]) for row in rows}

    # Checking -----------------------------------------------------------------------------

    def bad_rows(self) -> list[BadRow]:
        """Every calibration and measurement row that cannot be used, with the reason."""
        bad = []
        for row in self._rows("SELECT * FROM calibrations ORDER BY id"):
            try:
                self._calibration_from_row(row)
            except BadRowError as error:
                bad.append(BadRow("calibrations", row["id"], str(error)))
        for row in self._rows("SELECT * FROM measurements ORDER BY id"):
            try:
                measurement_from_row(row, self._environment(row["environment_id"]))
            except BadRowError as error:
                bad.append(BadRow("measurements", row["id"], str(error)))
        return bad

    def quarantine(self, bad: list[BadRow]) -> int:
        """Move ``bad`` rows into the ``quarantine`` table (never deleted), in one transaction."""
        with self._write() as connection:
            for item in bad:
                row = connection.execute(
                    f"SELECT * FROM {item.table} WHERE id = ?", (item.row_id,)
                ).fetchone()
                if row is None:
                    continue
                connection.execute(
                    "INSERT INTO quarantine (source_table, source_id, reason, row_json, quarantined_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (item.table, item.row_id, item.reason, _row_json(row), _now()),
                )
                connection.execute(f"DELETE FROM {item.table} WHERE id = ?", (item.row_id,))
        return len(bad)


@dataclass(frozen=True)
class BadRow:
    """A stored row that cannot be used: its table, id and why."""

    table: str
    row_id: int
    reason: str


def _row_json(row: sqlite3.Row) -> str:
    """The row as JSON, BLOBs as hex, so a quarantined row can be restored by hand."""
    values = {
        name: {"blob_hex": value.hex()} if isinstance(value, bytes) else value
        for name, value in zip(row.keys(), row, strict=True)
    }
    return json.dumps(values, default=repr)

    # A LightningModule's own step ---------------------------------------------------------


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _fingerprint(environment: Environment) -> str:
    return json.dumps(environment.to_dict(), sort_keys=True)


_MEMPROBE_TABLES = frozenset({"environments", "measurements", "calibrations"})


def _connect(path: Path, *, readonly: bool, create: bool = False) -> sqlite3.Connection:
    """Connect to the database file at ``path`` and check (and, for writing, migrate) its schema."""
    _refuse_foreign_file(path)
    if not readonly and path.exists() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise DatabaseError(
            f"cannot write to {path}: the file or its folder is read-only; pass --db FILE "
            "in a writable folder"
        )
    try:
        connection = sqlite3.connect(
            _uri(path, readonly=readonly, create=create),
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
        )
    except sqlite3.Error as error:
        raise DatabaseError(f"cannot open database {path}: {error}; pass another --db") from None
    return _prepared(connection, path, readonly=readonly)


def _uri(path: Path, *, readonly: bool, create: bool) -> str:
    """A ``file:`` URI that names exactly ``path`` (``#``, ``?`` and ``%`` escaped).

    A read opens read-only, so it never checkpoints, deletes or creates another process's
    ``-wal``/``-shm``: with a write-ahead log and its index beside the file (a writer is or was
    at work) it reads through them; without them nothing is writing, and the file is read as
    immutable, which creates no side files at all.
    """
    name = quote(os.fspath(path.absolute()))
    if not readonly:
        return f"file:{name}?mode={'rwc' if create else 'rw'}"
    has_log = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()  # else ro would create -shm
    return f"file:{name}?mode=ro" if has_log else f"file:{name}?mode=ro&immutable=1"


def _prepared(connection: sqlite3.Connection, path: Path | None, *, readonly: bool) -> sqlite3.Connection:
    """Check that ``connection`` holds a memprobe database this version understands; migrate it for writing.

    Nothing is written before every check passed, and the connection is closed if one fails.
    """
    where = path or ":memory:"
    connection.row_factory = sqlite3.Row  # rows are read by column name, whatever migrations added
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if readonly:
            connection.execute("PRAGMA query_only = ON")
        version, tables = _retry_when_locked(lambda: _schema_facts(connection))
        _check_schema(where, version, tables)
        check_columns(where, table_columns(connection), version)
        if version < schema.SCHEMA_VERSION:
            if readonly and _has_every_column(connection):
                return connection  # later migrations only added what writing needs (quarantine)
            if readonly:
                return _upgraded_copy(connection)
            _retry_when_locked(lambda: _migrate(connection))
        if path is not None and not readonly:
            _retry_when_locked(lambda: connection.execute("PRAGMA journal_mode = WAL"))
    except sqlite3.DatabaseError as error:
        connection.close()
        raise DatabaseError(
            f"{where} is not a readable memprobe database ({error}): pass another --db"
        ) from None
    except BaseException:
        connection.close()
        raise
    return connection


def _upgraded_copy(connection: sqlite3.Connection) -> sqlite3.Connection:
    """An older database, read without writing to it: an in-memory copy, migrated there.

    A read command may not change the file (another user's, or read-only); the next command
    that writes migrates the file itself.
    """
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        connection.backup(copy)
        _migrate(copy)
    finally:
        connection.close()
    copy.row_factory = sqlite3.Row
    copy.execute("PRAGMA query_only = ON")
    return copy


def _has_every_column(connection: sqlite3.Connection) -> bool:
    """Whether an older database already has every table and column that reading rows uses."""
    wanted = schema_columns(schema.SCHEMA_VERSION)
    del wanted["quarantine"]  # only `db check --repair` writes it
    return missing_column(table_columns(connection), wanted) is None


def _schema_facts(connection: sqlite3.Connection) -> tuple[int, set[str]]:
    """The schema version and table names, read in one transaction so they agree with each other."""
    connection.execute("BEGIN")
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        rows = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
    # Another program's views, triggers or indexes count too: no schema is created beside them.
    return version, {
        name if kind == "table" else f"{kind} {name}"
        for (kind, name) in rows
        if not name.startswith("sqlite_") and (kind == "table" or not _is_memprobe_index(name))
    }


def _is_memprobe_index(name: str) -> bool:
    return name in ("measurements_by_config", "calibrations_by_key")


def _check_schema(where: object, version: int, tables: set[str]) -> None:
    """Refuse another program's database, and a memprobe database newer than this memprobe."""
    if version > schema.SCHEMA_VERSION and (not tables or tables >= _MEMPROBE_TABLES):
        raise DatabaseError(
            f"database {where} has schema version {version}, newer than this memprobe "
            f"understands ({schema.SCHEMA_VERSION}): upgrade memprobe or use another --db"
        )
    if version and not tables >= _MEMPROBE_TABLES:
        raise DatabaseError(f"{where} is an SQLite database but not memprobe's: pass another --db")
    if not version and tables:
        raise DatabaseError(f"{where} is an SQLite database of something else: pass another --db")


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        current = connection.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
        apply_migrations(connection, current)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _check_folder(path: Path) -> None:
    """Refuse a database named in a folder that does not exist, for reads and writes alike."""
    folder = path.parent
    if not folder.is_dir():
        raise DatabaseError(f"{path}: the folder {folder} does not exist; create it or pass another --db")


def _check_creatable(path: Path) -> None:
    """Refuse early a database that could not be created, before any probe runs."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DatabaseError(
            f"cannot create a database at {path}: {folder} is not a writable folder; "
            "pass --db FILE in a writable folder"
        )


_SQLITE_HEADER = b"SQLite format 3\x00"


def _refuse_foreign_file(path: Path) -> None:
    """Refuse a non-empty file that is not SQLite before SQLite touches it."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return  # to be created
    except OSError as error:
        raise DatabaseError(f"cannot read {path}: {error.strerror}") from None
    if header and header != _SQLITE_HEADER:
        raise DatabaseError(f"{path} is not an SQLite database: pass another --db or move the file away")


_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def database_files(db_path: str | Path | None) -> list[Path]:
    """The database memprobe reads (``--db`` or the default) and its SQLite side files."""
    if database_url(None if db_path is None else str(db_path)) is not None:
        return []  # rows on a server: no file here to protect
    base = default_db_path() if db_path is None else Path(db_path).expanduser()
    if str(base) == ":memory:":
        return []
    return [Path(f"{base}{suffix}") for suffix in _SQLITE_SIDE_FILES]
