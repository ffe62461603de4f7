"""Damaged or foreign databases, and read-only places: one clear line, exit code 2, the file untouched.

"Untouched" is checked byte for byte (a hash before and after), and no -wal, -shm or -journal
file may be left beside a file that had none.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import memprobe
from memprobe.core.errors import DatabaseError
from memprobe.store.schema import SCHEMA_VERSION
from tests.helpers import (
    MEMPROBE,
    SMALL_BUDGET,
    TINY,
    Result,
    file_state,
    invoke,
    make_calibrated_db,
)


def make_memprobe_db(path: Path) -> Path:
    """A real memprobe database of several pages, its write-ahead log checkpointed away."""
    make_calibrated_db(path, measurements=60)
    assert file_state(path)[1] == ()
    return path


def _not_sqlite(path: Path) -> None:
    path.write_text("experiment,patch,batch\nrun1,128,2\n" * 200)


def _truncated(size: Callable[[int], int]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        make_memprobe_db(path)
        data = path.read_bytes()
        path.write_bytes(data[: size(len(data))])

    return make


def _foreign(user_version: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE songs (title TEXT, seconds INTEGER)")
        connection.execute("INSERT INTO songs VALUES ('intro', 93)")
        connection.execute(f"PRAGMA user_version = {user_version}")
        connection.commit()
        connection.close()

    return make


def _newer(path: Path) -> None:
    make_memprobe_db(path)
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()


DAMAGED = {
    "not SQLite": (_not_sqlite, "is not an SQLite database"),
    "truncated to half": (_truncated(lambda n: n // 2), "is not a readable memprobe database"),
    "truncated to 100 bytes": (_truncated(lambda n: 100), "is not a readable memprobe database"),
    "truncated in the header": (_truncated(lambda n: 50), "is not a readable memprobe database"),
    "another program's": (_foreign(0), "is an SQLite database of something else"),
    "another program's, versioned": (_foreign(7), "is an SQLite database but not memprobe's"),
    "newer schema": (_newer, "newer than this memprobe understands"),
}

COMMANDS = {
    "calibrate": (
        "calibrate",
        "--arch",
        TINY,
        "--device",
        "trace",
        "--gpu-mem",
        SMALL_BUDGET,
        "--db",
        "{db}",
    ),
    "suggest": (
        "suggest",
        "--arch",
        "mednext",
        "--patch",
        "128",
        "128",
        "128",
        "--gpu-mem",
        "24GiB",
        "--precision",
        "fp32",
        "--db",
        "{db}",
    ),
    "plan": ("plan", "--arch", "mednext", "--gpu-mem", "24GiB", "--precision", "fp32", "--db", "{db}"),
    "db list": ("db", "list", "--db", "{db}"),
    "db measurements": ("db", "measurements", "--db", "{db}"),
    "db export": ("db", "export", "--db", "{db}", "--out", "{out}"),
}


@pytest.fixture(params=list(DAMAGED), ids=list(DAMAGED))
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    make, message = DAMAGED[request.param]
    path = tmp_path / "damaged.sqlite"
    make(path)
    assert file_state(path)[1] == ()
    yield path, message


def _assert_refused(result: Result, message: str) -> None:
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1 and result.err.splitlines()[-1] == result.error_lines[0]
    assert message in result.error_lines[0]
    assert "Traceback" not in result.err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_refuse_a_damaged_or_foreign_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damaged: tuple[Path, str], command: str
) -> None:
    path, message = damaged
    before = file_state(path)
    out = tmp_path / "export.json"
    result = invoke(capsys, *(a.format(db=path, out=out) for a in COMMANDS[command]))
    _assert_refused(result, message)
    assert file_state(path) == before
    assert not out.exists()


def test_the_default_database_is_checked_too(
    capsys: pytest.CaptureFixture[str], damaged: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, message = damaged
    monkeypatch.setenv("MEMPROBE_DB", str(path))
    before = file_state(path)
    _assert_refused(
        invoke(
            capsys,
            "suggest",
            "--arch",
            "mednext",
            "--patch",
            "128",
            "128",
            "128",
            "--gpu-mem",
            "24GiB",
            "--precision",
            "fp32",
        ),
        message,
    )
    assert file_state(path) == before


@pytest.mark.parametrize("call", ["estimate", "max_batch_size", "calibrate"])
def test_the_api_raises_database_error(damaged: tuple[Path, str], call: str) -> None:
    path, message = damaged
    before = file_state(path)
    with pytest.raises(DatabaseError, match=message):
        if call == "estimate":
            memprobe.estimate("mednext", (128, 128, 128), 2, db=path)
        elif call == "max_batch_size":
            memprobe.max_batch_size("mednext", (128, 128, 128), "24GiB", db=path)
        else:
            memprobe.api.calibrate(TINY, device="trace", gpu_mem=SMALL_BUDGET, db=path)
    assert file_state(path) == before


def test_a_directory_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = invoke(capsys, *(a.format(db=tmp_path, out="-") for a in COMMANDS["calibrate"]))
    _assert_refused(result, "is a directory, not a database file")


# Read-only places --------------------------------------------------------------------------


def _without_file_permission_override() -> None:
    """In the child, before exec: as root, give up the capabilities that ignore file permissions."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(*arguments: str) -> Result:
    completed = subprocess.run(
        [*MEMPROBE, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
        check=False,
        preexec_fn=_without_file_permission_override,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder holding a memprobe database, where this user may read but not write."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    make_memprobe_db(folder / "bench.sqlite")
    (folder / "bench.sqlite").chmod(0o444)
    folder.chmod(0o555)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"],
            capture_output=True,
            preexec_fn=_without_file_permission_override,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        folder.chmod(0o755)
        pytest.skip(f"cannot give up the permission to write here: {error}")
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("this user can write into a read-only folder")
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(folder)


def test_calibrate_refuses_to_create_a_database_in_a_read_only_folder(read_only_folder: Path) -> None:
    target = read_only_folder / "new" / "bench.sqlite"
    result = _run_unprivileged(*(a.format(db=target) for a in COMMANDS["calibrate"]))
    _assert_refused(result, "is not a writable folder")
    assert not target.parent.exists()


def test_calibrate_refuses_a_read_only_database(read_only_folder: Path) -> None:
    path = read_only_folder / "bench.sqlite"
    before = file_state(path)
    result = _run_unprivileged(*(a.format(db=path) for a in COMMANDS["calibrate"]))
    _assert_refused(result, "the file or its folder is read-only")
    assert file_state(path) == before


def test_suggest_reads_a_database_in_a_read_only_folder(read_only_folder: Path) -> None:
    path = read_only_folder / "bench.sqlite"
    before = file_state(path)
    result = _run_unprivileged(*(a.format(db=path) for a in COMMANDS["suggest"]), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["calibration"]["source"] == str(path)
    assert file_state(path) == before
