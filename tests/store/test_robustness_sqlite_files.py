"""SQLite file handling (#15): exact names, reads that never touch another process's log, refusals
before any write, and a $MEMPROBE_DB that points nowhere reported like a bad --db.

Real files, real memprobe processes; checksums and side-file listings before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memprobe.store.schema import SCHEMA_VERSION
from tests.helpers import file_state, make_calibrated_db, run_cli


def _listing(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.iterdir()
        if path.is_file()
    }


@pytest.mark.parametrize(
    "name", ["a#b.sqlite", "a?mode=memory.sqlite", "100%25.sqlite", "x%y.sqlite", "c#?%.sqlite"]
)
def test_a_path_with_uri_characters_opens_exactly_that_file(tmp_path: Path, name: str) -> None:
    db = make_calibrated_db(tmp_path / name, measurements=1)
    (tmp_path / "a").write_text("a decoy that a URI cut at # or ? would name")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([name, "a"])
    before = _listing(tmp_path)
    listed = run_cli("db", "list", "--db", str(db), "--no-shipped", "--json")
    assert listed.code == 0, listed.err
    assert [c["arch"] for c in json.loads(listed.out)] == ["mednext"]
    measurements = run_cli("db", "measurements", "--db", str(db), "--json")
    assert measurements.code == 0 and len(json.loads(measurements.out)) == 1
    assert _listing(tmp_path) == before  # nothing created, nothing changed


@pytest.fixture
def live_writer(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL database another live connection has written to, its new row only in the -wal."""
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    connection = sqlite3.connect(db, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    connection.execute(
        "INSERT INTO calibrations (arch, device, precision, optimizer, deep_supervision, environment_id, "
        "phase_coefficients_json, parameter_model_json, quality_json, created_at) SELECT 'basicunet', device, "
        "precision, optimizer, deep_supervision, environment_id, phase_coefficients_json, parameter_model_json, "
        "quality_json, created_at FROM calibrations LIMIT 1"
    )
    assert Path(f"{db}-wal").stat().st_size > 0
    yield db, connection
    connection.close()


READS: dict[str, tuple[str, ...]] = {
    "db list": ("db", "list", "--no-shipped", "--json"),
    "db measurements": ("db", "measurements", "--json"),
    "db check": ("db", "check"),
    "suggest": (
        "suggest",
        "--patch",
        "64",
        "64",
        "64",
        "--gpu-mem",
        "24GiB",
        "--arch",
        "basicunet",
        "--precision",
        "fp32",
    ),
}


@pytest.mark.parametrize("command", READS)
def test_a_read_never_checkpoints_or_removes_another_process_log(
    live_writer: tuple[Path, sqlite3.Connection], command: str
) -> None:
    db, _ = live_writer
    before = {suffix: _digest(Path(f"{db}{suffix}")) for suffix in ("", "-wal")}
    result = run_cli(*READS[command], "--db", str(db))
    assert result.code == 0, result.err
    if command == "db list":
        assert {c["arch"] for c in json.loads(result.out)} == {"mednext", "basicunet"}  # read through the log
    assert {suffix: _digest(Path(f"{db}{suffix}")) for suffix in ("", "-wal")} == before


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_a_log_without_its_index_is_read_without_creating_one(tmp_path: Path) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    Path(f"{db}-wal").write_bytes(b"")
    before = file_state(db)
    assert run_cli("db", "list", "--db", str(db), "--no-shipped").code == 0
    assert file_state(db) == before


def test_a_read_of_a_crashed_writer_log_leaves_it_in_place(tmp_path: Path) -> None:
    """A -wal left by a writer that died is not checkpointed by a read (the next writer will)."""
    source = make_calibrated_db(tmp_path / "source.sqlite")
    connection = sqlite3.connect(source, isolation_level=None)
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    connection.execute("UPDATE calibrations SET created_at = '2030-01-01'")
    copy = tmp_path / "crashed.sqlite"
    for suffix in ("", "-wal", "-shm"):  # what the disk holds when the writer is killed
        Path(f"{copy}{suffix}").write_bytes(Path(f"{source}{suffix}").read_bytes())
    connection.close()
    before = file_state(copy), _digest(Path(f"{copy}-wal"))
    listed = run_cli("db", "list", "--db", str(copy), "--no-shipped", "--json")
    assert listed.code == 0, listed.err
    assert json.loads(listed.out)[0]["created_at"] == "2030-01-01"
    assert (file_state(copy), _digest(Path(f"{copy}-wal"))) == before


def _foreign_view(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE VIEW answer AS SELECT 42")
    connection.commit()
    connection.close()


def _foreign_trigger_table(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE log (line TEXT)")
    connection.execute("CREATE TRIGGER t AFTER INSERT ON log BEGIN SELECT 1; END")
    connection.commit()
    connection.close()


def _newer(path: Path) -> None:
    make_calibrated_db(path)
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    connection.execute("PRAGMA journal_mode = DELETE")
    connection.commit()
    connection.close()


def _foreign_in_rollback_mode(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE songs (title TEXT)")
    connection.execute("PRAGMA user_version = 7")
    connection.commit()
    connection.close()


REFUSED: dict[str, tuple[Callable[[Path], None], str]] = {
    "only another program's view": (_foreign_view, "of something else"),
    "another program's table and trigger": (_foreign_trigger_table, "of something else"),
    "a newer memprobe's": (_newer, "newer than this memprobe"),
    "another program's, rollback journal": (_foreign_in_rollback_mode, "not memprobe's"),
}
WRITES = {
    "db check --repair": ("db", "check", "--repair"),
    "calibrate": (
        "calibrate",
        "--arch",
        "tests.tiny_models:tiny_net",
        "--gpu-mem",
        "1MiB",
        "--device",
        "trace",
    ),
}


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("case", REFUSED)
def test_a_foreign_or_newer_database_is_refused_before_anything_is_written(
    tmp_path: Path, case: str, write: str
) -> None:
    make, message = REFUSED[case]
    db = tmp_path / "other.sqlite"
    make(db)
    header = db.read_bytes()[:100]
    before = file_state(db)
    result = run_cli(*WRITES[write], "--db", str(db))
    assert result.code == 2 and len(result.error_lines) == 1 and message in result.error_lines[0]
    assert "Traceback" not in result.err
    assert file_state(db) == before and db.read_bytes()[:100] == header  # no WAL switch, no journal


def _dangling(folder: Path) -> Path:
    link = folder / "dangling.sqlite"
    link.symlink_to(folder / "gone.sqlite")
    return link


def _loop(folder: Path) -> Path:
    first, second = folder / "one.sqlite", folder / "two.sqlite"
    first.symlink_to(second)
    second.symlink_to(first)
    return first


ENV_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "a dangling link": (_dangling, "leads nowhere or loops"),
    "a link loop": (_loop, "leads nowhere or loops"),
    "a missing folder": (lambda folder: folder / "no" / "such" / "db.sqlite", "folder that does not exist"),
    "a folder": (lambda folder: folder, "is a directory"),
}


@pytest.mark.parametrize("case", ENV_CASES)
def test_memprobe_db_pointing_nowhere_is_reported_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    make, message = ENV_CASES[case]
    monkeypatch.setenv("MEMPROBE_DB", str(make(tmp_path)))
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED")  # the shipped calibrations would answer if it were ignored
    before = _listing(tmp_path)
    result = run_cli("suggest", "--patch", "64", "64", "64", "--gpu-mem", "24GiB", "--precision", "fp32")
    assert result.code == 2, result.out
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
    assert "Traceback" not in result.err and result.out == ""
    assert _listing(tmp_path) == before
    assert os.environ["MEMPROBE_DB"]


def test_a_database_from_before_the_quarantine_is_read_untouched_and_repair_upgrades_it(
    tmp_path: Path,
) -> None:
    import re

    from memprobe.store.schema import MIGRATIONS

    db = make_calibrated_db(tmp_path / "calib.sqlite")
    before_quarantine = next(i for i, script in enumerate(MIGRATIONS) if "CREATE TABLE quarantine" in script)
    connection = sqlite3.connect(db)
    for script in reversed(MIGRATIONS[before_quarantine:]):  # the quarantine's migration and every later one
        for table in re.findall(r"CREATE TABLE (\w+)", script):
            connection.execute(f"DROP TABLE {table}")
        for index in re.findall(r"CREATE INDEX (\w+)", script):
            connection.execute(f"DROP INDEX IF EXISTS {index}")
        for table, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", script):
            connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    connection.execute(f"PRAGMA user_version = {before_quarantine}")
    connection.commit()
    connection.close()
    before = file_state(db)
    for name, read in READS.items():
        result = run_cli(*read, "--db", str(db))
        assert result.code == (2 if name == "suggest" else 0), result.err  # it has no basicunet
        assert "needs an upgrade" not in result.err
    assert file_state(db) == before
    assert run_cli("db", "check", "--repair", "--db", str(db)).code == 0
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert connection.execute("SELECT COUNT(*) FROM quarantine").fetchone() == (0,)
    connection.close()
