"""``db merge`` and ``db import``: a lab's databases brought together, each row kept once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from memprobe.core.config import StepConfig
from memprobe.store.database import Database
from tests.helpers import invoke
from tests.store.test_db import ENVIRONMENT, GPU, calibration, measurement


def _count(path: Path, table: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        connection.close()


def _two_overlapping(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    shared = measurement()
    with Database.open(first) as database:
        database.add_measurement(shared)
        database.add_measurement(measurement(StepConfig(arch="mednext", patch=(64, 64, 64), batch=1)))
        database.add_calibration(calibration(created_at="2026-01-01T00:00:00+00:00"), ENVIRONMENT)
    with Database.open(second) as database:
        database.add_measurement(shared)  # the same measurement, taken on both machines' copies
        database.add_measurement(measurement(environment=GPU, peak=2000))
        database.add_calibration(calibration(created_at="2026-01-01T00:00:00+00:00"), ENVIRONMENT)
        database.add_calibration(calibration(created_at="2026-02-01T00:00:00+00:00"), ENVIRONMENT)
    return first, second


def test_merge_keeps_each_overlapping_row_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _two_overlapping(tmp_path)
    out = tmp_path / "lab.sqlite"
    result = invoke(capsys, *["db", "merge", str(first), str(second), "-o", str(out), "--json"])
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["copied"]["measurements"] == 3 and report["duplicates"]["measurements"] == 1
    assert report["copied"]["calibrations"] == 2 and report["duplicates"]["calibrations"] == 1
    assert _count(out, "measurements") == 3
    assert _count(out, "calibrations") == 2
    assert _count(out, "environments") == 2
    with Database.open(out, create=False, readonly=True) as merged:
        peaks = sorted(m.peak_allocated_bytes or 0 for m in merged.measurements())
        assert peaks == [1000, 1000, 2000]
        assert {m.environment.device_name for m in merged.measurements()} == {"trace", "NVIDIA H100"}
        assert merged.calibrations()[0].created_at == "2026-02-01T00:00:00+00:00"


def test_merging_again_adds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _two_overlapping(tmp_path)
    out = tmp_path / "lab.sqlite"
    assert invoke(capsys, *["db", "merge", str(first), str(second), "-o", str(out)]).code == 0
    result = invoke(capsys, *["db", "merge", str(first), str(second), "-o", str(out), "--json"])
    assert result.code == 0, result.err
    assert sum(json.loads(result.out)["copied"].values()) == 0
    assert _count(out, "measurements") == 3


def test_merge_refuses_to_write_onto_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _two_overlapping(tmp_path)
    before = first.read_bytes()
    result = invoke(capsys, *["db", "merge", str(first), str(second), "-o", str(first)])
    assert result.code == 2
    assert "memprobe reads" in result.err
    assert first.read_bytes() == before


def test_merge_of_a_file_that_is_not_a_database_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _two_overlapping(tmp_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    out = tmp_path / "lab.sqlite"
    result = invoke(capsys, *["db", "merge", str(first), str(junk), "-o", str(out)])
    assert result.code == 2
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lab.sqlite")]


def test_merge_skips_unusable_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _two_overlapping(tmp_path)
    connection = sqlite3.connect(second)
    connection.execute("UPDATE measurements SET batch = -3 WHERE peak_allocated_bytes = 2000")
    connection.commit()
    connection.close()
    out = tmp_path / "lab.sqlite"
    result = invoke(capsys, *["db", "merge", str(first), str(second), "-o", str(out), "--json"])
    assert result.code == 0, result.err
    assert json.loads(result.out)["skipped"] == 1
    assert _count(out, "measurements") == 2


def test_import_a_database_into_another(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _two_overlapping(tmp_path)
    result = invoke(capsys, *["db", "import", str(second), "--db", str(first), "--json"])
    assert result.code == 0, result.err
    assert _count(first, "measurements") == 3
    assert _count(first, "calibrations") == 2


def test_import_is_the_inverse_of_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_box, laptop = tmp_path / "gpu.sqlite", tmp_path / "laptop.sqlite"
    with Database.open(gpu_box) as database:
        database.add_calibration(calibration(), GPU)
        database.add_calibration(calibration("swinunetr"), GPU)
    exported = tmp_path / "calibrations.json"
    assert invoke(capsys, *["db", "export", "--db", str(gpu_box), "--out", str(exported)]).code == 0
    for _ in range(2):  # the second import finds both already there
        result = invoke(capsys, *["db", "import", str(exported), "--db", str(laptop), "--json"])
        assert result.code == 0, result.err
    assert json.loads(result.out)["duplicates"] == {"calibrations": 2}
    with Database.open(laptop, create=False, readonly=True) as database:
        imported = database.calibrations()
    assert sorted(c.arch for c in imported) == ["mednext", "swinunetr"]
    assert imported[0].environment.get("device_name") == "NVIDIA H100"


def test_import_of_the_database_itself_or_of_junk_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _two_overlapping(tmp_path)
    assert invoke(capsys, *["db", "import", str(first), "--db", str(first)]).code == 2
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    result = invoke(capsys, *["db", "import", str(junk), "--db", str(first)])
    assert result.code == 2
    assert "neither a memprobe database" in result.err


def test_merging_empty_databases_writes_an_empty_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.sqlite"
    with Database.open(empty) as database:
        database._writer()
    out = tmp_path / "lab.sqlite"
    result = invoke(capsys, "db", "merge", str(empty), "-o", str(out))
    assert result.code == 0, result.err
    assert _count(out, "measurements") == 0


def test_merge_and_import_keep_each_gpu_layout_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import replace

    from memprobe.core.enums import Strategy

    single = StepConfig(arch="mednext", patch=(64, 64, 64), batch=2)
    rank = replace(single, strategy=Strategy.DDP, world_size=4)
    first, second = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    created = "2026-01-01T00:00:00+00:00"
    with Database.open(first) as database:
        database.add_measurement(measurement(single))
        database.add_calibration(calibration(created_at=created), ENVIRONMENT)
    with Database.open(second) as database:
        database.add_measurement(measurement(rank))  # the same configuration, as one rank of 4
        database.add_calibration(calibration(created_at=created, strategy="ddp", world_size=4), ENVIRONMENT)
    out = tmp_path / "lab.sqlite"
    result = invoke(capsys, *["db", "merge", str(first), str(second), "-o", str(out), "--json"])
    assert result.code == 0, result.err
    assert json.loads(result.out)["duplicates"] == {name: 0 for name in json.loads(result.out)["duplicates"]}
    with Database.open(out, create=False, readonly=True) as merged:
        assert sorted(m.config.world_size for m in merged.measurements()) == [1, 4]
        assert sorted(c.strategy for c in merged.calibrations()) == ["ddp", "single"]
    exported = tmp_path / "calibrations.json"
    assert invoke(capsys, *["db", "export", "--db", str(out), "--out", str(exported)]).code == 0
    laptop = tmp_path / "laptop.sqlite"
    result = invoke(capsys, *["db", "import", str(exported), "--db", str(laptop), "--json"])
    assert json.loads(result.out)["copied"] == {"calibrations": 2}, result.err
    with Database.open(laptop, create=False, readonly=True) as database:
        assert sorted((c.strategy, c.world_size) for c in database.calibrations()) == [
            ("ddp", 4),
            ("single", 1),
        ]
