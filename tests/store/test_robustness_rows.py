"""Rows read from a database are input (#15): a bad row is skipped with one warning, never a crash.

Each case writes a real bad row next to a good calibration, then runs memprobe as a real
process: planning still answers from the good row, with one warning line naming the bad one;
``db check`` reports it (exit 1); ``db check --repair`` moves it to the quarantine table.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import file_state, make_calibrated_db, query, run_cli

GOOD_COEFFICIENTS = '{"forward": {"constant": 1e8, "input_voxels": 10.0}}'
QUALITY = '{"points": 10, "median_relative_error": 0.01, "max_relative_error": 0.02}'

# column of a new, newer calibration row of the same key -> its value
BAD_CALIBRATIONS: dict[str, tuple[str, object]] = {
    "negative coefficient": ("phase_coefficients_json", '{"forward": {"constant": -1.6e9}}'),
    "NaN coefficient": ("phase_coefficients_json", '{"forward": {"constant": NaN}}'),
    "infinite coefficient": ("phase_coefficients_json", '{"forward": {"constant": Infinity}}'),
    "null coefficient": ("phase_coefficients_json", '{"forward": {"constant": null}}'),
    "string coefficient": ("phase_coefficients_json", '{"forward": {"constant": "1e9"}}'),
    "invalid JSON": ("phase_coefficients_json", '{"forward": '),
    "empty JSON": ("phase_coefficients_json", ""),
    "empty object": ("phase_coefficients_json", "{}"),
    "non-object JSON": ("phase_coefficients_json", "[1, 2]"),
    "deeply nested JSON": ("phase_coefficients_json", "[" * 100_000 + "]" * 100_000),
    "huge JSON": ("phase_coefficients_json", '{"forward": {"x": "' + "x" * 2_000_000 + '"}}'),
    "a BLOB": ("phase_coefficients_json", b"\x00\x01\x02"),
    "NULL parameter model": ("parameter_model_json", "null"),
    "unknown precision": ("precision", "fp8"),
    "unknown optimizer": ("optimizer", "lion"),
    "quality without points": ("quality_json", '{"median_relative_error": 0.01}'),
    "negative reserve": ("reserved_coefficients_json", '{"forward": {"constant": -5}}'),
    "broken fit range": ("fit_range_json", '{"batch": 3}'),
    "text context": ("context_bytes", "a lot"),
    "missing environment": ("environment_id", 999),
}


def _add_row(db_path: Path, column: str, value: object) -> int:
    """A copy of the good calibration, one column changed, stored after it (so it is the newest)."""
    connection = sqlite3.connect(db_path)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(calibrations)") if row[1] != "id"]
    cursor = connection.execute(
        f"INSERT INTO calibrations ({', '.join(columns)}) SELECT {', '.join(columns)} FROM calibrations "
        "ORDER BY id LIMIT 1"
    )
    row_id = int(cursor.lastrowid or 0)
    connection.execute(f"UPDATE calibrations SET {column} = ? WHERE id = ?", (value, row_id))
    connection.commit()
    connection.close()
    return row_id


@pytest.fixture
def good_db(tmp_path: Path) -> Path:
    path = make_calibrated_db(tmp_path / "calib.sqlite")
    connection = sqlite3.connect(path)
    connection.execute("UPDATE calibrations SET phase_coefficients_json = ?", (GOOD_COEFFICIENTS,))
    connection.commit()
    connection.close()
    return path


def _suggest(db_path: Path) -> object:
    return run_cli(
        "suggest",
        "--db",
        str(db_path),
        "--patch",
        "64",
        "64",
        "64",
        "--gpu-mem",
        "24GiB",
        "--precision",
        "fp32",
        "--json",
    )


@pytest.mark.parametrize("case", BAD_CALIBRATIONS)
def test_a_bad_calibration_row_is_skipped_with_one_warning(good_db: Path, case: str) -> None:
    column, value = BAD_CALIBRATIONS[case]
    row_id = _add_row(good_db, column, value)
    before = file_state(good_db)
    planned = _suggest(good_db)
    assert planned.code == 0, planned.err  # type: ignore[attr-defined]
    assert "Traceback" not in planned.err  # type: ignore[attr-defined]
    warnings = [line for line in planned.err.splitlines() if line.startswith("memprobe: warning:")]  # type: ignore[attr-defined]
    assert len(warnings) == 1 and f"calibrations row {row_id} " in warnings[0]
    assert "memprobe db check" in warnings[0]
    assert '"batch"' in planned.out and "-" not in planned.out.split('"predicted_peak_bytes":')[1][:3]  # type: ignore[attr-defined]
    assert file_state(good_db) == before  # a read changes nothing, leaves no side file

    checked = run_cli("db", "check", "--db", str(good_db))
    assert checked.code == 1 and f"calibrations row {row_id}:" in checked.out
    assert "Traceback" not in checked.err and file_state(good_db) == before


@pytest.mark.parametrize("case", ["negative coefficient", "a BLOB", "deeply nested JSON"])
def test_repair_moves_bad_rows_to_quarantine_and_keeps_them(good_db: Path, case: str) -> None:
    column, value = BAD_CALIBRATIONS[case]
    row_id = _add_row(good_db, column, value)
    repaired = run_cli("db", "check", "--db", str(good_db), "--repair")
    assert repaired.code == 0, repaired.err
    assert query(good_db, "SELECT source_table, source_id FROM quarantine") == [("calibrations", row_id)]
    assert query(good_db, "SELECT COUNT(*) FROM calibrations") == [(1,)]
    again = run_cli("db", "check", "--db", str(good_db))
    assert again.code == 0 and again.out == ""
    planned = _suggest(good_db)
    assert planned.code == 0 and "warning" not in planned.err


def test_an_extra_key_from_a_newer_memprobe_is_tolerated(good_db: Path) -> None:
    _add_row(good_db, "quality_json", QUALITY[:-1] + ', "written_by_memprobe_9": true}')
    planned = _suggest(good_db)
    assert planned.code == 0 and planned.err.count("warning: skipped") == 0
    assert run_cli("db", "check", "--db", str(good_db)).code == 0


def test_negative_coefficients_never_yield_a_plan(good_db: Path) -> None:
    """The defect was batch 4096 at "-1.50 GiB", exit 0: with only the bad row there is no plan."""
    connection = sqlite3.connect(good_db)
    connection.execute(
        'UPDATE calibrations SET phase_coefficients_json = \'{"forward": {"constant": -1.6e9}}\''
    )
    connection.commit()
    connection.close()
    planned = run_cli(
        "suggest",
        "--db",
        str(good_db),
        "--patch",
        "64",
        "64",
        "64",
        "--gpu-mem",
        "24GiB",
        "--precision",
        "fp32",
    )
    assert planned.code == 2 and "4096" not in planned.out and "-1.50" not in planned.out
    assert "no calibration of mednext" in planned.err and "Traceback" not in planned.err


BAD_MEASUREMENTS: dict[str, tuple[str, object]] = {
    "broken phase peaks": ("phase_peaks_json", "{not json"),
    "negative peak": ("peak_allocated_bytes", -5),
    "text batch": ("batch", "two"),
    "unknown precision": ("precision", "fp4"),
    "BLOB breakdown": ("breakdown_json", b"\xff"),
}


@pytest.mark.parametrize("case", BAD_MEASUREMENTS)
def test_a_bad_measurement_row_is_skipped_when_listing(good_db: Path, case: str) -> None:
    make_calibrated_db(good_db, measurements=2)
    column, value = BAD_MEASUREMENTS[case]
    connection = sqlite3.connect(good_db)
    connection.execute(f"UPDATE measurements SET {column} = ? WHERE id = 1", (value,))
    connection.commit()
    connection.close()
    listed = run_cli("db", "measurements", "--db", str(good_db), "--json")
    assert listed.code == 0 and "Traceback" not in listed.err
    assert listed.err.count("memprobe: warning: skipped measurements row 1 ") == 1
    assert listed.out.count('"batch"') == 1
    checked = run_cli("db", "check", "--db", str(good_db))
    assert checked.code == 1 and "measurements row 1:" in checked.out
