"""Concurrency: processes writing one database at once lose no rows, never fail with "database is locked"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from memprobe.store.schema import SCHEMA_VERSION
from tests.helpers import SMALL_BUDGET, TINY, query, repeated_configurations, start_cli, wait_for

VARIANTS = {
    ("fp32", "adamw"): (),
    ("bf16-mixed", "adamw"): ("--precision", "bf16-mixed"),
    ("fp32", "sgd"): ("--optimizer", "sgd"),
}


def test_concurrent_calibrations_keep_every_measurement(db_path: Path) -> None:
    processes = {
        key: start_cli(
            "calibrate",
            "--arch",
            TINY,
            "--device",
            "trace",
            "--precision",
            "fp32",
            "--gpu-mem",
            SMALL_BUDGET,
            "--db",
            str(db_path),
            "--json",
            *options,
        )
        for key, options in VARIANTS.items()
    }
    reports = {}
    for key, process in processes.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert "locked" not in err
        reports[key] = json.loads(out)

    for (precision, optimizer), report in reports.items():
        rows = query(
            db_path,
            "SELECT batch, patch_d, patch_h, patch_w, in_channels, out_channels, "
            "peak_allocated_bytes FROM measurements WHERE precision = ? AND optimizer = ?",
            (precision, optimizer),
        )
        assert len(rows) == report["measured"]
        reported = {
            (m["batch"], *m["patch"], m["in_channels"], m["out_channels"], m["peak_allocated_bytes"])
            for m in report["measurements"]
        }
        assert reported <= set(rows)
    assert repeated_configurations(db_path) == []
    assert sorted(query(db_path, "SELECT precision, optimizer FROM calibrations")) == sorted(VARIANTS)


_WRITER = textwrap.dedent("""
    import os, sys, time
    from memprobe.formula.calibration import Calibration, FitQuality
    from memprobe.core.config import StepConfig
    from memprobe.store.database import Database
    from memprobe.core.measurement import Environment, Measurement

    db_path, go, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    open(f"{go}-ready-{writer}", "w").close()
    while not os.path.exists(go):  # start together, so the file is created and migrated in a race
        time.sleep(0.005)
    environment = Environment("trace", "trace", host=f"writer-{writer % 2}")
    with Database.open(db_path) as database:
        for batch in range(1, count + 1):
            config = StepConfig(arch=f"arch-{writer}", patch=(32, 32, 32), batch=batch)
            database.add_measurement(Measurement(config, environment, 1000 * batch))
            assert database.find_measurement(config, environment).peak_allocated_bytes == 1000 * batch
        database.add_calibration(Calibration(f"arch-{writer}", "trace", "fp32", "adamw", False, {}, {},
                                             FitQuality(count, 0.0, 0.0)), environment)
""")


def test_many_writers_created_at_once_lose_nothing(db_path: Path, tmp_path: Path) -> None:
    writers, count = 6, 40
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db_path), str(go), str(writer), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for writer in range(writers)
    ]
    wait_for(
        lambda: all(Path(f"{go}-ready-{writer}").exists() for writer in range(writers)),
        timeout=120,
        what="the writers to start",
    )
    go.touch()
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert query(db_path, "SELECT arch, COUNT(*) FROM measurements GROUP BY arch ORDER BY arch") == [
        (f"arch-{writer}", count) for writer in range(writers)
    ]
    assert query(db_path, "SELECT COUNT(*) FROM environments") == [(2,)]
    assert query(db_path, "SELECT COUNT(*) FROM calibrations") == [(writers,)]
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
