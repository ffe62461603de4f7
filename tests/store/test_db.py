"""The benchmark database: schema, migrations, WAL mode, reuse of measurements, newest calibrations."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

import memprobe.store.schema as db_module
from memprobe.core.config import StepConfig
from memprobe.core.enums import OptimizerName, Precision, Strategy
from memprobe.core.errors import DatabaseError
from memprobe.core.measurement import MEASUREMENT_CODE_VERSION, Environment, Measurement, ReuseKey
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.store.database import Database
from memprobe.store.schema import SCHEMA_VERSION
from tests.helpers import file_state, query

ENVIRONMENT = Environment("trace", "trace", torch_version="2.13", memprobe_version="0.1.0", host="here")
GPU = Environment("cuda", "NVIDIA H100", total_memory_bytes=80 * 2**30, driver_version="550", host="here")
CONFIG = StepConfig(arch="mednext", patch=(128, 128, 128), batch=2)


def measurement(
    config: StepConfig = CONFIG,
    environment: Environment = ENVIRONMENT,
    peak: int | None = 1000,
    **fields: object,
) -> Measurement:
    return Measurement(config, environment, peak, **fields)  # type: ignore[arg-type]


def calibration(
    arch: str = "mednext", created_at: str = "2026-01-01T00:00:00+00:00", **key: object
) -> Calibration:
    fields: dict[str, object] = dict(
        device="trace", precision="fp32", optimizer="adamw", deep_supervision=False
    )
    fields.update(key)
    return Calibration(
        arch=arch,
        phase_coefficients={"forward": {"constant": 1.0}},
        parameter_model={"constant": 5.0},
        quality=FitQuality(10, 0.01, 0.02, 4, 0.03, 0.05),
        created_at=created_at,
        **fields,
    )  # type: ignore[arg-type]


# Schema, creation, migrations --------------------------------------------------------------


def test_a_new_database_has_the_current_schema(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"environments", "measurements", "calibrations"} <= tables
    columns = {row[1] for row in connection.execute("PRAGMA table_info(measurements)")}
    assert {
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "oom",
        "error",
        "budget_bytes",
        "phase_peaks_json",
    } <= columns
    connection.close()


def test_the_file_is_created_by_the_first_write(tmp_path: Path) -> None:
    path = tmp_path / "bench.sqlite"
    with Database.open(path) as database:
        assert database.find_measurement(CONFIG, ENVIRONMENT) is None
        assert database.measurements() == [] and database.calibrations() == []
        assert not path.exists()
        database.add_measurement(measurement())
        assert path.exists()
        assert database.find_measurement(CONFIG, ENVIRONMENT) is not None


def test_a_named_database_in_a_missing_folder_is_refused_not_created(tmp_path: Path) -> None:
    """As `--db` promises: a missing folder is a mistake in the path, never made silently."""
    from memprobe.core.errors import DatabaseError

    with pytest.raises(DatabaseError, match="does not exist"):
        Database.open(tmp_path / "not" / "yet" / "bench.sqlite")
    assert not (tmp_path / "not").exists()


def test_a_database_created_meanwhile_by_another_process_is_read(db_path: Path) -> None:
    with Database.open(db_path) as waiting:
        with Database.open(db_path) as other:
            other.add_measurement(measurement())
        assert waiting.find_measurement(CONFIG, ENVIRONMENT) is not None


def test_reading_a_missing_database_is_an_error(db_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no database at"):
        Database.open(db_path, create=False)
    with pytest.raises(DatabaseError, match="no database at"):
        Database.open(db_path, readonly=True)
    assert not db_path.exists()


def test_a_file_database_is_in_wal_mode(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_an_empty_file_becomes_a_database(db_path: Path) -> None:
    db_path.touch()
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
        assert len(database.measurements()) == 1


def _with_a_second_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = (*db_module.MIGRATIONS, "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    monkeypatch.setattr(db_module, "MIGRATIONS", migrations)
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", len(migrations))


def test_an_older_database_is_migrated_on_open_keeping_its_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
    _with_a_second_migration(monkeypatch)
    for _ in range(2):  # the second open finds nothing left to migrate
        with Database.open(db_path) as database:
            assert len(database.measurements()) == 1
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    assert connection.execute("SELECT COUNT(*) FROM notes").fetchone() == (0,)
    connection.close()


def test_a_read_only_open_does_not_migrate(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
    before = file_state(db_path)
    migrations = (*db_module.MIGRATIONS, "ALTER TABLE measurements ADD COLUMN later INTEGER")
    monkeypatch.setattr(db_module, "MIGRATIONS", migrations)
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", len(migrations))
    with Database.open(db_path, readonly=True) as database:  # read through a migrated copy in memory
        assert len(database.measurements()) == 1
    assert file_state(db_path) == before


def test_a_read_only_open_reads_an_older_database_that_has_every_column(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that only adds a table (as the quarantine did) does not lock readers out."""
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
    before = file_state(db_path)
    _with_a_second_migration(monkeypatch)
    with Database.open(db_path, readonly=True) as database:
        assert len(database.measurements()) == 1
    assert file_state(db_path) == before


def test_a_newer_database_is_refused_untouched(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
    connection = sqlite3.connect(db_path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    before = file_state(db_path)
    for readonly in (False, True):
        with pytest.raises(DatabaseError, match="newer than this memprobe understands"):
            Database.open(db_path, readonly=readonly)
    assert file_state(db_path) == before


def test_reading_leaves_no_side_files(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
        database.add_calibration(calibration())
    before = file_state(db_path)
    with Database.open(db_path, readonly=True) as database:
        assert len(database.calibrations()) == 1
        with pytest.raises(DatabaseError):
            database.add_measurement(measurement(replace(CONFIG, batch=3)))
    assert file_state(db_path) == before


# Measurements --------------------------------------------------------------------------------


def test_measurements_round_trip(fresh_db: Database) -> None:
    stored = measurement(
        peak_reserved_bytes=2000,
        phase_peaks_bytes={"forward": 900, "backward": 1000},
        step_seconds=0.5,
        budget_bytes=4000,
        parameter_count=42,
        breakdown_bytes={"weights": 10},
    )
    fresh_db.add_measurement(stored)
    assert fresh_db.measurements() == [stored]


def test_a_stored_measurement_is_reused(fresh_db: Database) -> None:
    stored = measurement()
    fresh_db.add_measurement(stored)
    assert fresh_db.find_measurement(CONFIG, ENVIRONMENT) == stored
    assert fresh_db.find_measurement(CONFIG, ENVIRONMENT, budget_bytes=123) == stored  # a peak is budget-free


@pytest.mark.parametrize(
    "change",
    [
        {"arch": "basicunet"},
        {"patch": (128, 128, 96)},
        {"batch": 3},
        {"precision": Precision.BF16_MIXED},
        {"optimizer": OptimizerName.SGD},
        {"in_channels": 2},
        {"out_channels": 3},
        {"deep_supervision": True},
    ],
    ids=lambda change: next(iter(change)),
)
def test_another_configuration_is_not_reused(fresh_db: Database, change: dict[str, object]) -> None:
    fresh_db.add_measurement(measurement())
    assert fresh_db.find_measurement(replace(CONFIG, **change), ENVIRONMENT) is None  # type: ignore[arg-type]


def test_another_environment_is_not_reused_and_not_recorded(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_measurement(measurement())
        assert database.find_measurement(CONFIG, GPU) is None
        assert database.find_measurement(CONFIG, replace(ENVIRONMENT, torch_version="2.14")) is None
    assert query(db_path, "SELECT COUNT(*) FROM environments") == [(1,)]  # a lookup writes nothing


def test_a_failed_measurement_is_never_reused(fresh_db: Database) -> None:
    fresh_db.add_measurement(measurement(peak=None, error="the probe's process was killed by SIGSEGV"))
    assert fresh_db.find_measurement(CONFIG, ENVIRONMENT) is None


def test_an_out_of_memory_result_is_reused_only_for_its_budget(fresh_db: Database) -> None:
    oom = measurement(CONFIG, GPU, peak=None, oom=True, budget_bytes=8 * 2**30)
    fresh_db.add_measurement(oom)
    assert fresh_db.find_measurement(CONFIG, GPU, budget_bytes=8 * 2**30) == oom
    assert fresh_db.find_measurement(CONFIG, GPU, budget_bytes=16 * 2**30) is None
    assert fresh_db.find_measurement(CONFIG, GPU) is None


def test_the_newest_measurement_is_reused(fresh_db: Database) -> None:
    fresh_db.add_measurement(measurement(peak=1000))
    fresh_db.add_measurement(measurement(peak=1100))
    found = fresh_db.find_measurement(CONFIG, ENVIRONMENT)
    assert found is not None and found.peak_allocated_bytes == 1100


def test_measurements_are_filtered(fresh_db: Database) -> None:
    fresh_db.add_measurement(measurement())
    fresh_db.add_measurement(measurement(replace(CONFIG, arch="basicunet")))
    fresh_db.add_measurement(measurement(replace(CONFIG, precision=Precision.BF16_MIXED), GPU))
    assert [m.config.arch for m in fresh_db.measurements(arch="basicunet")] == ["basicunet"]
    assert [m.environment for m in fresh_db.measurements(device="NVIDIA H100")] == [GPU]
    assert len(fresh_db.measurements(precision="fp32")) == 2


# Calibrations --------------------------------------------------------------------------------


def test_the_newest_calibration_of_each_key_is_returned(db_path: Path) -> None:
    with Database.open(db_path) as database:
        database.add_calibration(calibration(created_at="2026-01-01T00:00:00+00:00"), ENVIRONMENT)
        database.add_calibration(calibration(created_at="2026-02-01T00:00:00+00:00"), ENVIRONMENT)
        database.add_calibration(calibration(precision="bf16-mixed"))
        database.add_calibration(calibration(device="NVIDIA H100"), GPU)
        database.add_calibration(calibration(optimizer="sgd"))
        database.add_calibration(calibration(deep_supervision=True))
        database.add_calibration(calibration(arch="basicunet"))
        newest = database.calibrations()
    assert len(newest) == 6
    assert len({c.key for c in newest}) == 6
    mednext = next(
        c
        for c in newest
        if c.key == ("mednext", "trace", "fp32", "adamw", False, "memprobe", False, "single", 1)
    )
    assert mednext.created_at == "2026-02-01T00:00:00+00:00"
    assert mednext.environment == ENVIRONMENT.to_dict()
    assert mednext.source == str(db_path)
    assert mednext.phase_coefficients == {"forward": {"constant": 1.0}}
    assert mednext.quality == FitQuality(10, 0.01, 0.02, 4, 0.03, 0.05)
    gpu = next(c for c in newest if c.device == "NVIDIA H100")
    assert gpu.environment == GPU.to_dict()


def test_an_in_memory_database_works(fresh_db: Database) -> None:
    fresh_db.add_calibration(calibration())
    assert [c.source for c in fresh_db.calibrations()] == [":memory:"]


# What a measurement's reuse depends on, and databases from before the allocator replay ---------


@pytest.mark.parametrize(
    "stored_key",
    [ReuseKey(code_version=MEASUREMENT_CODE_VERSION - 1), ReuseKey(model_hash="0123abcd")],
)
def test_measurements_of_other_code_or_model_source_are_not_reused(
    fresh_db: Database, stored_key: ReuseKey
) -> None:
    """A measurement taken by other measuring code, or of an edited model file, is measured afresh."""
    fresh_db.add_measurement(measurement(), stored_key)
    assert fresh_db.find_measurement(CONFIG, ENVIRONMENT) is None
    assert fresh_db.find_measurement(CONFIG, ENVIRONMENT, reuse_key=stored_key) is not None


def test_a_custom_model_is_keyed_by_its_source_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Editing the factory's file changes the key its measurements are reused by."""
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.training.networks import factory_source_hash

    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "edited_model_module.py"
    source.write_text("def build(i, o):\n    return None\n")
    spec = resolve_arch("edited_model_module:build")
    before = factory_source_hash(spec)
    source.write_text("def build(i, o):\n    return 1\n")
    assert before is not None and factory_source_hash(spec) not in (None, before)
    assert factory_source_hash(resolve_arch("mednext")) is None


def test_all_new_measurement_fields_round_trip(fresh_db: Database) -> None:
    stored = measurement(
        peak_reserved_bytes=4096,
        reserved_source="simulated",
        simulated_allocated_bytes=1024,
        reserved_phase_peaks_bytes={"forward": 2048, "backward": 4096},
        context_bytes=500,
        warmup_steps=3,
    )
    fresh_db.add_measurement(stored)
    assert fresh_db.measurements() == [stored]


def test_a_version_1_database_is_migrated_and_its_calibration_names_the_missing_reserve(
    db_path: Path,
) -> None:
    """A calibration stored before the reserve was fitted is read with no reserve fit, never a made-up one."""
    connection = sqlite3.connect(db_path)
    connection.executescript(db_module.MIGRATIONS[0])
    connection.execute("PRAGMA user_version = 1")
    connection.execute(
        "INSERT INTO calibrations (arch, device, precision, optimizer, deep_supervision, "
        "phase_coefficients_json, parameter_model_json, quality_json, created_at) VALUES "
        "('mednext', 'trace', 'fp32', 'adamw', 0, '{\"forward\": {\"constant\": 1e9}}', "
        '\'{"constant": 5.0}\', \'{"points": 10, "median_relative_error": 0.01, '
        "\"max_relative_error\": 0.02}', '2026-01-01')"
    )
    connection.commit()
    connection.close()
    with Database.open(db_path) as database:
        (old,) = database.calibrations()
    assert old.reserved_coefficients is None and old.fit_range is None
    from memprobe.core.archs.registry import get_arch
    from memprobe.planning.need import extrapolation_warnings, memory_need

    need = memory_need(old, get_arch("mednext"), (64, 64, 64), 1)
    assert "not calibrated" in need.reserve_source and "memprobe calibrate" in need.reserve_source
    assert need.reserve_overhead_bytes == pytest.approx(0.1 * need.allocated_bytes)
    assert "does not record the range" in extrapolation_warnings(old, (64, 64, 64), 1)[0]
    assert sqlite3.connect(db_path).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# One rank of data parallelism (#14) ------------------------------------------------------------

DDP4 = replace(CONFIG, strategy=Strategy.DDP, world_size=4)


def test_migration_6_adds_strategy_and_world_size_to_an_older_database(db_path: Path) -> None:
    connection = sqlite3.connect(db_path)
    for script in db_module.MIGRATIONS[:5]:
        connection.executescript(script)
    connection.execute("PRAGMA user_version = 5")
    connection.commit()
    connection.close()
    with Database.open(db_path) as database:
        database.add_measurement(measurement(DDP4))
    columns = {row[1]: row[4] for row in sqlite3.connect(db_path).execute("PRAGMA table_info(calibrations)")}
    assert columns["strategy"] == "'single'" and columns["world_size"] == "1"
    assert query(db_path, "SELECT strategy, world_size FROM measurements") == [("ddp", 4)]


def test_a_rank_of_ddp_and_the_single_gpu_step_are_separate_measurements(fresh_db: Database) -> None:
    fresh_db.add_measurement(measurement(CONFIG, peak=1000))
    fresh_db.add_measurement(measurement(DDP4, peak=1500))
    single = fresh_db.find_measurement(CONFIG, ENVIRONMENT)
    rank = fresh_db.find_measurement(DDP4, ENVIRONMENT)
    assert single is not None and single.peak_allocated_bytes == 1000
    assert rank is not None and rank.peak_allocated_bytes == 1500
    assert (rank.config.strategy, rank.config.world_size) == (Strategy.DDP, 4)
    assert fresh_db.find_measurement(replace(DDP4, world_size=2), ENVIRONMENT) is None
    assert Measurement.from_dict(rank.to_dict()) == rank


def test_calibrations_of_each_gpu_layout_are_kept_apart(fresh_db: Database) -> None:
    fresh_db.add_calibration(calibration())
    fresh_db.add_calibration(calibration(strategy="ddp", world_size=4))
    fresh_db.add_calibration(calibration(strategy="fsdp", world_size=4))
    layouts = sorted((c.strategy, c.world_size) for c in fresh_db.calibrations())
    assert layouts == [("ddp", 4), ("fsdp", 4), ("single", 1)]
    ddp = next(c for c in fresh_db.calibrations() if c.strategy == "ddp")
    assert Calibration.from_dict(ddp.to_dict()) == ddp
