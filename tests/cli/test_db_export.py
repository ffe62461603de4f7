"""`memprobe db export --format csv|json|parquet`: the DataFrames, written for pandas and other tools."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from memprobe.formula.calibration import FitQuality
from memprobe.store.database import Database
from memprobe.store.frames import load_calibrations, load_measurements
from tests.helpers import file_state, invoke, make_calibration
from tests.store.test_frames import fill

READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "csv": pd.read_csv,
    "json": lambda path: pd.read_json(path, orient="records", precise_float=True),
    "parquet": pd.read_parquet,
}
LOADERS = {"measurements": load_measurements, "calibrations": load_calibrations}


@pytest.fixture
def filled(db_path: Path) -> Path:
    return fill(db_path)


def _export(capsys: pytest.CaptureFixture[str], db: Path, *arguments: str) -> tuple[int, str, str]:
    result = invoke(capsys, "db", "export", "--db", str(db), *arguments)
    return result.code, result.out, result.err


def _written(folder: Path, db: Path) -> set[str]:
    """Files in ``folder`` besides the database: an export's, or a temporary one left behind."""
    return {path.name for path in folder.iterdir() if not path.name.startswith(db.name)}


@pytest.mark.parametrize("table", ["measurements", "calibrations"])
@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_each_format_round_trips_through_pandas(
    filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, table: str
) -> None:
    out = tmp_path / f"export.{fmt}"
    code, _, err = _export(capsys, filled, "--format", fmt, "--table", table, "-o", str(out))
    assert code == 0, err
    expected = LOADERS[table](filled)
    read = READERS[fmt](out)
    assert list(read.columns) == list(expected.columns)
    assert len(read) == len(expected) and f"wrote {len(expected)} {table}" in err
    for column in ("mode", "arch", "device", "heldout_median_relative_error", "peak_allocated_bytes"):
        if column in expected:
            assert [None if pd.isna(v) else v for v in read[column]] == [
                None if pd.isna(v) else v for v in expected[column]
            ], column


def test_parquet_keeps_the_dtypes(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "measurements.parquet"
    assert _export(capsys, filled, "-o", str(out))[0] == 0  # format from the extension, table by default
    pd.testing.assert_frame_equal(pd.read_parquet(out), load_measurements(filled), check_dtype=False)
    assert pd.read_parquet(out).dtypes["patch_d"] == "Int64"


def test_json_keeps_every_digit(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precise = FitQuality(10, 2.707506115187545e-06, 2.5838100612492464e-05, 4, 4.853964124082154e-06, 1e-12)
    with Database.open(filled) as database:
        database.add_calibration(replace(make_calibration("unet"), quality=precise))
    out = tmp_path / "calibrations.json"
    assert _export(capsys, filled, "--format", "json", "--table", "calibrations", "-o", str(out))[0] == 0
    row = next(r for r in json.loads(out.read_text()) if r["arch"] == "unet")
    assert row["fit_median_relative_error"] == precise.median_relative_error
    assert row["heldout_max_relative_error"] == 1e-12 and row["reserved_fit_points"] is None


def test_json_prints_a_summary(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calibrations.csv"
    code, stdout, _ = _export(capsys, filled, "--table", "calibrations", "-o", str(out), "--json")
    assert code == 0
    assert json.loads(stdout) == {"path": str(out), "table": "calibrations", "rows": 3, "format": "csv"}


def test_a_json_file_is_still_the_shipped_format_by_default(
    filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "calibrations.json"
    code, stdout, _ = _export(capsys, filled, "-o", str(out), "--json")
    assert code == 0 and json.loads(stdout)["format"] == "shipped"
    shipped = json.loads(out.read_text())
    assert {c["arch"] for c in shipped} == {"basicunet", "mednext"}  # training calibrations, for `db import`
    assert all(c["source"] == "shipped" for c in shipped)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--format", "xml"), "Invalid value for '--format'"),
        (("--table", "plans", "--format", "csv"), "Invalid value for '--table'"),
        (("--format", "shipped", "--table", "measurements"), "--format shipped writes calibrations"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(
    filled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: tuple[str, ...],
    message: str,
) -> None:
    result = invoke(capsys, "db", "export", "--db", str(filled), "-o", str(tmp_path / "out.csv"), *arguments)
    assert result.code == 2 and len(result.error_lines) == 1 and message in result.error_lines[0], result.err
    assert "Traceback" not in result.err and _written(tmp_path, filled) == set()


def test_a_folder_is_refused(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    result = invoke(capsys, "db", "export", "--db", str(filled), "--format", "csv", "-o", str(folder))
    assert result.code == 2 and "is a folder" in result.error_lines[0]
    assert list(folder.iterdir()) == []


def test_parquet_without_pyarrow_names_the_extra(
    filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails, as when not installed
    result = invoke(capsys, "db", "export", "--db", str(filled), "-o", str(tmp_path / "m.parquet"))
    assert result.code == 2 and len(result.error_lines) == 1
    assert "pip install 'memprobe[parquet]'" in result.error_lines[0]
    assert _written(tmp_path, filled) == set()


def test_a_missing_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.sqlite"
    result = invoke(
        capsys, "db", "export", "--db", str(missing), "--format", "csv", "-o", str(tmp_path / "m.csv")
    )
    assert result.code == 2 and "no database at" in result.error_lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "shipped"])
@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_the_database_is_never_overwritten(
    filled: Path, capsys: pytest.CaptureFixture[str], fmt: str, suffix: str
) -> None:
    target = Path(f"{filled}{suffix}")
    before = file_state(filled)
    result = invoke(capsys, "db", "export", "--db", str(filled), "--format", fmt, "-o", str(target))
    assert result.code == 2 and "which memprobe reads" in result.error_lines[0]
    assert file_state(filled) == before


def test_the_default_database_is_protected_too(
    filled: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMPROBE_DB", str(filled))
    before = file_state(filled)
    result = invoke(capsys, "db", "export", "--format", "csv", "-o", str(filled))
    assert result.code == 2 and "which memprobe reads" in result.error_lines[0]
    assert file_state(filled) == before
