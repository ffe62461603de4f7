"""Robustness, round 3: the database and the files around it.

- every file a command writes, the files inside an output folder included, is checked like
  ``--out``: never the database (``verify --out DIR`` with ``--db DIR/verify.json``);
- a malformed or unknown database URL, and a ``--db`` in a folder that does not exist, are one
  line and exit code 2, for reads and writes alike, creating nothing;
- a database missing a column of its schema version is refused when opened, naming the column;
- ``db import`` of deeply nested JSON, or of a file over the input cap, is one line.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from memprobe.core.errors import DatabaseError, InvalidInputError
from tests.helpers import SMALL_BUDGET, TINY, Result, file_state, invoke, make_calibrated_db

VERIFY_OUTPUTS = ("verify.json", "gpu_truth.md", "measurements.jsonl")


def _assert_one_line(result: Result, *fragments: str) -> None:
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1 and result.err.splitlines()[-1] == result.error_lines[0]
    for fragment in fragments:
        assert fragment in result.error_lines[0], result.error_lines[0]
    assert "Traceback" not in result.err


def _listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# 1. Outputs that replace the database -------------------------------------------------------


@pytest.mark.parametrize("name", VERIFY_OUTPUTS)
def test_check_output_folder_refuses_the_database_inside_it(tmp_path: Path, name: str) -> None:
    from memprobe.core.output_paths import check_output_folder
    from memprobe.store.database import database_files

    out = tmp_path / "truth"
    with pytest.raises(InvalidInputError, match="which memprobe reads"):
        check_output_folder(out, VERIFY_OUTPUTS, reading=database_files(out / name))
    assert not out.exists()  # refused before the folder is made


def test_check_output_folder_makes_the_folder_and_names_each_file(tmp_path: Path) -> None:
    from memprobe.core.output_paths import check_output_folder
    from memprobe.store.database import database_files

    out = tmp_path / "new" / "truth"
    files = check_output_folder(out, VERIFY_OUTPUTS, reading=database_files(tmp_path / "db.sqlite"))
    assert files == [out / name for name in VERIFY_OUTPUTS] and out.is_dir()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        check_output_folder(tmp_path / "a_file", VERIFY_OUTPUTS)


@pytest.mark.parametrize("name", VERIFY_OUTPUTS)
def test_verify_refuses_an_out_folder_that_holds_the_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    out = tmp_path / "truth"
    out.mkdir()
    db = make_calibrated_db(out / name, measurements=2)
    before = file_state(db)
    result = invoke(
        capsys,
        *("verify", "--rehearse", "--arch", TINY, "--precision", "fp32", "--gpu-mem", "16MiB"),
        *("--out", str(out), "--db", str(db)),
    )
    _assert_one_line(result, "which memprobe reads")
    assert file_state(db) == before
    assert _listing(out) == [name]  # nothing measured, nothing written


def test_write_outputs_refuses_a_file_memprobe_reads(tmp_path: Path) -> None:
    from memprobe.cli.render.verify_tables import write_outputs
    from memprobe.verify.results import VerifyResult

    db = make_calibrated_db(tmp_path / "gpu_truth.md")
    before = file_state(db)
    result = VerifyResult({}, True, 1, (), (), None, (), (), ())
    with pytest.raises(InvalidInputError, match="which memprobe reads"):
        write_outputs(result, tmp_path, reading=[db])
    assert file_state(db) == before and not (tmp_path / "verify.json").exists()


# 7. Malformed database URLs, unknown schemes, missing folders ---------------------------------

BAD_URLS = {
    "an unclosed IPv6 host": ("postgresql://[::1", "not a valid database URL"),
    "a port that is not a number": ("postgresql://me@db.lab:abc/memprobe", "not a valid database URL"),
    "a port out of range": ("postgresql://db.lab:99999/memprobe", "not a valid database URL"),
    "mysql": ("mysql://db.lab/memprobe", "unknown scheme 'mysql'"),
    "sqlite": ("sqlite:///calib.sqlite", "unknown scheme 'sqlite'"),
}
DB_READS = {
    "db measurements": ("db", "measurements"),
    "db list": ("db", "list"),
    "suggest": ("suggest", "--patch", "64", "64", "64", "--gpu-mem", "24GiB", "--precision", "fp32"),
}
DB_WRITES = {
    "calibrate": ("calibrate", "--arch", TINY, "--device", "trace", "--gpu-mem", SMALL_BUDGET),
    "db migrate": ("db", "migrate"),
}


@pytest.mark.parametrize("command", [*DB_READS, *DB_WRITES])
@pytest.mark.parametrize("case", BAD_URLS)
def test_a_bad_database_url_is_one_line_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    command: str,
) -> None:
    url, message = BAD_URLS[case]
    monkeypatch.chdir(tmp_path)
    result = invoke(capsys, *{**DB_READS, **DB_WRITES}[command], "--db", url)
    _assert_one_line(result, message)
    assert _listing(tmp_path) == []


def test_a_bad_url_in_the_environment_is_refused_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMPROBE_DB", "sqlite:///calib.sqlite")
    _assert_one_line(invoke(capsys, *DB_WRITES["calibrate"]), "unknown scheme 'sqlite'", "$MEMPROBE_DB")
    assert _listing(tmp_path) == []


def test_a_malformed_url_never_shows_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, "db", "list", "--db", "postgresql://me:s3cret@db.lab:port/memprobe")
    _assert_one_line(result, "not a valid database URL")
    assert "s3cret" not in result.err


@pytest.mark.parametrize("command", [*DB_READS, *DB_WRITES, "db import"])
def test_a_database_in_a_missing_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    db = tmp_path / "no" / "such" / "calib.sqlite"
    arguments = {**DB_READS, **DB_WRITES, "db import": ("db", "import", "{source}")}[command]
    source = make_calibrated_db(tmp_path / "source.sqlite")
    before = _listing(tmp_path)
    result = invoke(capsys, *(a.format(source=source) for a in arguments), "--db", str(db))
    _assert_one_line(result, f"the folder {tmp_path / 'no' / 'such'} does not exist")
    assert _listing(tmp_path) == before


# 8. A database missing a column of its schema -------------------------------------------------

DROPPED = (
    ("measurements", "peak_reserved_bytes"),
    ("calibrations", "quality_json"),
    ("environments", "host"),
)


def _without_column(path: Path, table: str, column: str) -> Path:
    make_calibrated_db(path, measurements=3)
    connection = sqlite3.connect(path)
    connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    connection.commit()
    connection.close()
    return path


@pytest.mark.parametrize(("table", "column"), DROPPED)
def test_opening_a_database_without_a_column_of_its_schema_names_the_column(
    tmp_path: Path, table: str, column: str
) -> None:
    from memprobe.store.database import Database

    db = _without_column(tmp_path / "calib.sqlite", table, column)
    before = file_state(db)
    for readonly in (True, False):
        with pytest.raises(DatabaseError, match=rf"lacks the column {table}\.{column}"):
            Database.open(db, readonly=readonly)
    assert file_state(db) == before


COLUMN_COMMANDS = {
    "db measurements": ("db", "measurements", "--db", "{damaged}"),
    "db check": ("db", "check", "--db", "{damaged}"),
    "db check --repair": ("db", "check", "--repair", "--db", "{damaged}"),
    "db import from it": ("db", "import", "{damaged}", "--db", "{good}"),
    "db import into it": ("db", "import", "{good}", "--db", "{damaged}"),
    "db merge from it": ("db", "merge", "{damaged}", "{good}", "-o", "{out}"),
    "db merge into it": ("db", "merge", "{good}", "-o", "{damaged}"),
}


@pytest.mark.parametrize("command", COLUMN_COMMANDS)
@pytest.mark.parametrize(("table", "column"), DROPPED[:1])
def test_commands_refuse_a_database_without_a_column_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, table: str, column: str, command: str
) -> None:
    damaged = _without_column(tmp_path / "damaged.sqlite", table, column)
    good = make_calibrated_db(tmp_path / "good.sqlite", measurements=1)
    out = tmp_path / "merged.sqlite"
    before = {path: file_state(path) for path in (damaged, good, out)}
    arguments = (a.format(damaged=damaged, good=good, out=out) for a in COLUMN_COMMANDS[command])
    result = invoke(capsys, *arguments)
    _assert_one_line(result, f"{table}.{column}")
    assert {path: file_state(path) for path in before} == before


def test_a_server_without_a_column_of_its_schema_is_refused_for_reads_and_writes(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    from memprobe.store.database import Database

    with Database.open(postgres_url) as database:
        database.add_calibration(_shipped_calibration(), None)
    with psycopg.connect(postgres_url, autocommit=True) as server:
        server.execute("ALTER TABLE calibrations DROP COLUMN quality_json")
    for command in (("db", "list"), ("db", "migrate")):
        _assert_one_line(invoke(capsys, *command, "--db", postgres_url), "calibrations.quality_json")


def _shipped_calibration() -> object:
    from tests.helpers import shipped_calibration

    return shipped_calibration(("mednext", "trace", "fp32", "adamw", False))


# 11. Deep JSON, and the import file read as input ---------------------------------------------


def test_db_import_of_deeply_nested_json_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    db = tmp_path / "calib.sqlite"
    result = invoke(capsys, "db", "import", str(deep), "--db", str(db))
    _assert_one_line(result, "nested too deeply")
    assert not db.exists()


def test_db_import_refuses_a_file_over_the_input_cap(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from memprobe.core.input_files import MAX_INPUT_BYTES

    huge = tmp_path / "huge.json"
    with huge.open("wb") as stream:
        stream.truncate(MAX_INPUT_BYTES + 1)  # sparse: costs no disk
    db = tmp_path / "calib.sqlite"
    _assert_one_line(invoke(capsys, "db", "import", str(huge), "--db", str(db)), "larger than")
    assert not db.exists()


@pytest.mark.parametrize(
    "line", ["[" * 100_000 + "]" * 100_000, "[1, 2]", '{"kind": "row"}'], ids=["deep", "a list", "no key"]
)
def test_a_verify_log_line_that_is_not_a_record_is_one_error(tmp_path: Path, line: str) -> None:
    from memprobe.verify import ResultLog

    path = tmp_path / "measurements.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInputError, match=r"line 1 .* is not a verify result"):
        ResultLog(path, "x")


def test_a_count_beyond_the_range_says_the_range_not_that_it_is_no_whole_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2^63 - 1 is a whole number of at least 0: the message names the bound it broke (class 15)."""
    from memprobe.store.calibration_sources import shipped_calibrations
    from memprobe.store.row_checks import BadRowError, calibration_from_fields

    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)
    fields = shipped_calibrations()[0].to_dict()
    fields["quality"]["points"] = 2**63 - 1
    with pytest.raises(BadRowError, match=r"whole number from 0 to 4\.61e\+18 \(9223372036854775807\)"):
        calibration_from_fields(fields, source="test")
