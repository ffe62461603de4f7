"""Output paths (#15): never destroy data through one; refuse a bad one before measuring anything.

Each case runs memprobe as a real process with a real bad ``--out`` and checks the exit code,
the one error line, no traceback, and (by checksum) that no file memprobe was not asked to
write has changed.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import TINY, make_calibrated_db, run_cli


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# name -> (how to build --out from the work folder and the database, expected message)
OUT_CASES: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "the database itself": (lambda folder, db: str(db), "which memprobe reads"),
    "the database by another name": (lambda folder, db: f"{folder}/./{db.name}", "which memprobe reads"),
    "a link to the database": (lambda folder, db: _link(folder / "link.json", db), "which memprobe reads"),
    "its -wal": (lambda folder, db: f"{db}-wal", "which memprobe reads"),
    "its -shm": (lambda folder, db: f"{db}-shm", "which memprobe reads"),
    "a missing folder": (lambda folder, db: str(folder / "nowhere" / "out.json"), "does not exist"),
    "a folder": (lambda folder, db: str(folder), "is a folder"),
    "/dev/full": (lambda folder, db: "/dev/full", "device or kernel file"),
    "/dev/null": (lambda folder, db: "/dev/null", "device or kernel file"),
    "a /proc file": (lambda folder, db: "/proc/self/comm", "device or kernel file"),
    "an empty string": (lambda folder, db: "", "is empty"),
    "a FIFO": (lambda folder, db: _fifo(folder / "pipe.json"), "not a regular file"),
}


def _link(link: Path, target: Path) -> str:
    link.symlink_to(target)
    return str(link)


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("case", OUT_CASES)
def test_db_export_refuses_a_bad_out_and_changes_nothing(tmp_path: Path, case: str) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite", measurements=2)
    make_out, message = OUT_CASES[case]
    out = make_out(tmp_path, db)
    before = _checksums(tmp_path)
    result = run_cli("db", "export", "--db", str(db), "--out", out)
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
    assert "Traceback" not in result.err
    assert _checksums(tmp_path) == before


REPORT_CASES = {
    "the default database": ("{db}", "which memprobe reads"),
    "an unknown image extension": ("{folder}/report.bmp", "unknown extension"),
    "no extension": ("{folder}/report", "unknown extension"),
    "a missing folder": ("{folder}/nowhere/report.png", "does not exist"),
    "/dev/full": ("/dev/full", "device or kernel file"),
    "an empty string": ("", "is empty"),
}


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report_refuses_a_bad_out_before_measuring(tmp_path: Path, case: str) -> None:
    """Checked before anything is measured: no database is created, nothing is written."""
    pattern, message = REPORT_CASES[case]
    db = tmp_path / "new.sqlite"
    out = pattern.format(folder=tmp_path, db=db)
    before = _checksums(tmp_path)
    result = run_cli("report", "--arch", TINY, "--db", str(db), "--out", out)
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
    assert "Traceback" not in result.err and "measuring" not in result.err
    assert _checksums(tmp_path) == before and not db.exists()


def test_plan_config_out_refuses_the_database(tmp_path: Path) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    config = tmp_path / "config.yaml"
    config.write_text("MODEL:\n  ARCHITECTURE: mednext\n")
    before = _checksums(tmp_path)
    result = run_cli("plan", "--config", str(config), "--out", str(db), "--db", str(db), "--gpu-mem", "24GiB")
    assert result.code == 2 and "which memprobe reads" in result.error_lines[0]
    assert _checksums(tmp_path) == before


def _small_file_limit() -> None:
    """In the child: files may not grow past 2 kB, and a write past it fails instead of killing."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_a_write_that_fails_midway_exits_non_zero_and_keeps_the_old_file(tmp_path: Path) -> None:
    db = make_calibrated_db(tmp_path / "calib.sqlite")
    out = tmp_path / "calibrations.json"
    out.write_text("[]\n")
    before = _checksums(tmp_path)
    result = run_cli("db", "export", "--db", str(db), "--out", str(out), preexec_fn=_small_file_limit)
    assert result.code == 2 and "cannot write" in result.error_lines[0]
    assert "Traceback" not in result.err
    assert _checksums(tmp_path) == before  # the old export is whole, no temporary file is left
