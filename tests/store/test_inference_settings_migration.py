"""Schema 7: the inference settings column, a migration on SQLite and PostgreSQL, also where memprobe added it ad hoc."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from memprobe.core.errors import DatabaseError
from memprobe.core.inference_config import InferenceConfig, Predictor
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.store.database import Database
from memprobe.store.merge import merge_databases
from memprobe.store.schema import SCHEMA_VERSION, schema_columns
from tests.helpers import make_inference_calibration
from tests.store.test_db import ENVIRONMENT

TABLES = ("inference_measurements", "inference_calibrations")
MONAI = InferenceConfig("unet", (32, 32, 32), (64, 64, 64))
NNUNET = replace(MONAI, predictor=Predictor.NNUNET, mirror_axes=(0, 1, 2))
# The indexes as schema 6 made them, without the settings column.
SCHEMA_6_INDEXES = (
    "CREATE INDEX inference_measurements_by_config ON inference_measurements ("
    "environment_id, arch, precision, roi_d, roi_h, roi_w, image_d, image_h, image_w, sw_batch_size)",
    "CREATE INDEX inference_calibrations_by_key ON inference_calibrations (arch, device, precision)",
)


def _measurement(config: InferenceConfig, peak: int) -> InferenceMeasurement:
    return InferenceMeasurement(config, ENVIRONMENT, peak, phase_peaks_bytes={"forward": peak})


def _written(database: Database, *, with_nnunet: bool) -> None:
    """MONAI rows, and nnU-Net rows (which only a database with the settings column holds)."""
    database.add_measurement(_measurement(MONAI, 1000))
    database.add_calibration(make_inference_calibration())
    if with_nnunet:
        database.add_measurement(_measurement(NNUNET, 2000))
        database.add_calibration(replace(make_inference_calibration(), predictor=Predictor.NNUNET))


def _as_schema_6(db_path: Path, *, ad_hoc_column: bool) -> None:
    """Turn a schema-7 file into what schema 6 left: the column gone, or added ad hoc by the old store."""
    connection = sqlite3.connect(db_path, isolation_level=None)
    for table in TABLES:
        connection.execute(f"DROP INDEX {table}_by_{'config' if table == TABLES[0] else 'key'}")
        if not ad_hoc_column:
            connection.execute(f"ALTER TABLE {table} DROP COLUMN settings_json")
    for statement in SCHEMA_6_INDEXES:
        connection.execute(statement)
    connection.execute("PRAGMA user_version = 6")
    connection.close()


def _schema_6_file(db_path: Path, *, ad_hoc_column: bool) -> Path:
    with Database.open(db_path) as database:
        _written(database, with_nnunet=ad_hoc_column)
    _as_schema_6(db_path, ad_hoc_column=ad_hoc_column)
    return db_path


def _file_facts(db_path: Path) -> tuple[int, dict[str, list[str]]]:
    """The file's schema version and each inference index's columns."""
    connection = sqlite3.connect(db_path)
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        indexes = {
            name: [row[2] for row in connection.execute(f"PRAGMA index_info({name})")]
            for name in ("inference_measurements_by_config", "inference_calibrations_by_key")
        }
    finally:
        connection.close()
    return version, indexes


def _predictors(database: Database) -> set[Predictor]:
    """The predictors of the newest calibrations (one per settings)."""
    return {c.predictor for c in database.inference_calibrations()}


def _assert_current(db_path: Path) -> None:
    version, indexes = _file_facts(db_path)
    assert version == SCHEMA_VERSION == 7
    assert all(columns[-1] == "settings_json" for columns in indexes.values()), indexes


def test_a_fresh_database_is_at_schema_7_with_the_column(db_path: Path) -> None:
    with Database.open(db_path) as database:
        _written(database, with_nnunet=True)
        assert [m.config for m in database.inference_measurements()] == [MONAI, NNUNET]
        assert _predictors(database) == {Predictor.MONAI, Predictor.NNUNET}
    _assert_current(db_path)
    assert all("settings_json" in schema_columns(7)[table] for table in TABLES)
    assert all("settings_json" not in schema_columns(6)[table] for table in TABLES)


@pytest.mark.parametrize("ad_hoc_column", [False, True], ids=["without-column", "ad-hoc-column"])
def test_a_schema_6_file_migrates_to_7_keeping_its_rows(db_path: Path, ad_hoc_column: bool) -> None:
    _schema_6_file(db_path, ad_hoc_column=ad_hoc_column)
    with Database.open(db_path) as database:
        assert database.schema_version() == 7
        expected = [MONAI, NNUNET] if ad_hoc_column else [MONAI]
        assert [m.config for m in database.inference_measurements()] == expected
        assert _predictors(database) == {Predictor.MONAI, *([Predictor.NNUNET] if ad_hoc_column else [])}
        assert database.find_measurement(MONAI, ENVIRONMENT).peak_allocated_bytes == 1000  # type: ignore[union-attr]
        database.add_measurement(_measurement(replace(NNUNET, mirror_axes=()), 3000))
    _assert_current(db_path)


@pytest.mark.parametrize("ad_hoc_column", [False, True], ids=["without-column", "ad-hoc-column"])
def test_a_read_of_a_schema_6_file_leaves_it_as_it_was(db_path: Path, ad_hoc_column: bool) -> None:
    """Without the column it is read through a migrated copy in memory; with it, as it is."""
    _schema_6_file(db_path, ad_hoc_column=ad_hoc_column)
    before = db_path.read_bytes()
    with Database.open(db_path, create=False, readonly=True) as database:
        assert database.inference_measurements()[0].config == MONAI
        assert Predictor.MONAI in _predictors(database)
    assert db_path.read_bytes() == before and _file_facts(db_path)[0] == 6


def test_a_schema_7_file_without_the_column_is_refused(db_path: Path) -> None:
    with Database.open(db_path) as database:
        _written(database, with_nnunet=False)
    connection = sqlite3.connect(db_path, isolation_level=None)
    connection.execute("DROP INDEX inference_calibrations_by_key")
    connection.execute("ALTER TABLE inference_calibrations DROP COLUMN settings_json")
    connection.close()
    for readonly in (False, True):
        with pytest.raises(DatabaseError, match=r"lacks the column inference_calibrations\.settings_json"):
            Database.open(db_path, readonly=readonly)


def test_db_merge_keeps_settings_and_fills_them_in_for_a_schema_6_file(tmp_path: Path) -> None:
    old = _schema_6_file(tmp_path / "old.sqlite", ad_hoc_column=False)
    new = tmp_path / "new.sqlite"
    with Database.open(new) as database:
        _written(database, with_nnunet=True)  # the same created_at: the settings tell them apart
    merged = merge_databases([old, new], tmp_path / "merged.sqlite")
    assert merged.copied["inference_measurements"] == 2 and merged.duplicates["inference_measurements"] == 1
    assert merged.copied["inference_calibrations"] == 2 and merged.duplicates["inference_calibrations"] == 1
    with Database.open(tmp_path / "merged.sqlite", create=False, readonly=True) as database:
        assert [m.config for m in database.inference_measurements()] == [MONAI, NNUNET]
        assert _predictors(database) == {Predictor.MONAI, Predictor.NNUNET}


# PostgreSQL --------------------------------------------------------------------------------


def _server_as_schema_6(url: str, *, ad_hoc_column: bool) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as server:
        for table in TABLES:
            if ad_hoc_column:
                server.execute(f"DROP INDEX {table}_by_{'config' if table == TABLES[0] else 'key'}")
            else:  # its indexes go with it
                server.execute(f"ALTER TABLE {table} DROP COLUMN settings_json")
        for statement in SCHEMA_6_INDEXES:
            server.execute(statement)
        server.execute("UPDATE memprobe_schema SET version = 6")


def _server_version(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as server:
        row = server.execute("SELECT version FROM memprobe_schema").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("ad_hoc_column", [False, True], ids=["without-column", "ad-hoc-column"])
def test_a_schema_6_server_is_read_as_it_is_then_migrates_to_7(
    postgres_url: str, tmp_path: Path, ad_hoc_column: bool
) -> None:
    with Database.open(postgres_url) as database:
        _written(database, with_nnunet=ad_hoc_column)
    _server_as_schema_6(postgres_url, ad_hoc_column=ad_hoc_column)
    expected = [MONAI, NNUNET] if ad_hoc_column else [MONAI]
    with Database.open(postgres_url, create=False, readonly=True) as database:
        assert [m.config for m in database.inference_measurements()] == expected
        assert Predictor.MONAI in _predictors(database)
    merged = merge_databases([postgres_url], tmp_path / "merged.sqlite")  # read as it is, too
    assert merged.copied["inference_measurements"] == len(expected)
    assert _server_version(postgres_url) == 6
    with Database.open(postgres_url) as database:
        assert database.schema_version() == 7
        assert [m.config for m in database.inference_measurements()] == expected
        database.add_measurement(_measurement(replace(NNUNET, mirror_axes=()), 3000))
        found = database.find_measurement(replace(NNUNET, mirror_axes=()), ENVIRONMENT)
        assert found is not None and found.peak_allocated_bytes == 3000
        indexed = database._rows(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'inference_calibrations_by_key'"
        )
        assert "settings_json" in indexed[0]["indexdef"]
    assert _server_version(postgres_url) == 7
