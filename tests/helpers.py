"""What the tests share: one in-process CLI runner, hand-made calibrations and the databases
that hold them, and the sizes and names many tests use."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from memprobe.formula.calibration import Calibration, FitQuality

if TYPE_CHECKING:
    from memprobe.formula.inference_calibration import InferenceCalibration

MEMPROBE = [sys.executable, "-m", "memprobe.cli.main"]
TINY = "tests.tiny_models:tiny_net"
# Small enough that every search stops at its first probe: a calibration is its design points.
SMALL_BUDGET = "1MiB"
GIB = 2**30
SIDECARS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("memprobe: error:")]


def invoke(capsys: pytest.CaptureFixture[str], *arguments: str) -> Result:
    """Run ``memprobe ARGUMENTS`` in this process, through ``main`` (where errors become one line)."""
    from memprobe.cli.main import main

    sigterm = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        main(list(arguments))
        code = 0
    except SystemExit as done:  # the status Python would exit with: None is 0, text is 1
        code = 0 if done.code is None else done.code if isinstance(done.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_cli(*arguments: str, timeout: float = 300, **popen: object) -> Result:
    """Run ``memprobe ARGUMENTS`` as a real process (the environment is the test's)."""
    completed = subprocess.run(
        [*MEMPROBE, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ,
        check=False,
        **popen,
    )  # type: ignore[call-overload]
    return Result(completed.returncode, completed.stdout, completed.stderr)


def start_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MEMPROBE, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else dict(os.environ),
    )


def file_state(path: Path) -> tuple[str | None, tuple[str, ...]]:
    """The file's SHA-256 (None if absent) and which SQLite side files lie beside it."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return digest, tuple(suffix for suffix in SIDECARS if Path(f"{path}{suffix}").exists())


def query(db_path: Path, sql: str, parameters: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Read a database that another process may be writing (0 rows while it does not exist yet)."""
    if not db_path.exists():
        return []
    connection = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True, timeout=60)
    try:
        return connection.execute(sql, tuple(parameters)).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):  # created, not migrated yet
            return []
        raise
    finally:
        connection.close()


def measurement_count(db_path: Path) -> int:
    rows = query(db_path, "SELECT COUNT(*) FROM measurements")
    return int(rows[0][0]) if rows else 0  # type: ignore[arg-type]


CONFIG_COLUMNS = (
    "environment_id, arch, patch_d, patch_h, patch_w, batch, precision, optimizer, in_channels, "
    "out_channels, deep_supervision"
)


def repeated_configurations(db_path: Path) -> list[tuple[object, ...]]:
    """Configurations stored more than once."""
    return query(
        db_path,
        f"SELECT {CONFIG_COLUMNS}, COUNT(*) FROM measurements GROUP BY {CONFIG_COLUMNS} HAVING COUNT(*) > 1",
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def shipped_calibration(key: tuple[str, str, str, str, bool]) -> object:
    """A calibration memprobe ships, read from its package data (tests hide them from memprobe)."""
    import json
    from dataclasses import replace
    from importlib import resources

    from memprobe.formula.calibration import Calibration

    text = resources.files("memprobe.data").joinpath("calibrations.json").read_text()
    found = next(c for c in map(Calibration.from_dict, json.loads(text)) if c.key[:5] == key)
    return replace(found, source="user")


def make_calibrated_db(path: Path, measurements: int = 0) -> Path:
    """A memprobe database with a trace calibration of MedNeXt (fp32, AdamW) and some measurements."""
    from memprobe.core.config import StepConfig
    from memprobe.core.measurement import Environment, Measurement
    from memprobe.store.database import Database

    environment = Environment("trace", "trace", host="test")
    with Database.open(path) as database:
        for batch in range(1, measurements + 1):
            config = StepConfig(arch="mednext", patch=(64, 64, 64), batch=batch)
            database.add_measurement(
                Measurement(config, environment, 2**20 * batch, phase_peaks_bytes={"forward": 1})
            )
        database.add_calibration(
            shipped_calibration(("mednext", "trace", "fp32", "adamw", False)),  # type: ignore[arg-type]
            environment,
        )
    return path


def make_calibration(
    arch: str = "mednext",
    precision: str = "fp32",
    *,
    device: str = "trace",
    per_voxel: float = 40.0,
) -> Calibration:
    """A calibration with simple coefficients: about 3.6 GiB per sample at 128^3 for MedNeXt at 40 B/voxel."""
    return Calibration(
        arch=arch,
        device=device,
        precision=precision,
        optimizer="adamw",
        deep_supervision=False,
        phase_coefficients={
            "forward": {
                "constant": 1e8,
                "parameters": 16.0,
                "feature_maps": per_voxel,
                "input_voxels": 4.0,
                "output_voxels": 8.0,
            },
            "backward": {"constant": 1e8, "parameters": 20.0, "feature_maps": 0.75 * per_voxel},
        },
        parameter_model={"constant": 5.6e6, "in_channels": 100.0, "out_channels": 100.0, "tokens": 0.0},
        quality=FitQuality(10, 0.01, 0.02, 4, 0.015, 0.03),
        created_at="2026-01-01T00:00:00+00:00",
        fit_range={
            "batch": [1, 64],
            "voxels": [32**3, 512**3],
            "in_channels": [1, 8],
            "out_channels": [1, 16],
        },
    )


def make_inference_calibration(
    per_window_voxel: float = 400.0, precision: str = "bf16-mixed", predictor: str = "monai"
) -> InferenceCalibration:
    """A hand-made inference calibration of MONAI's UNet on trace: 4 bytes per output and image
    voxel, ``per_window_voxel`` bytes of activations; bf16-mixed, the precision every command
    defaults to with no GPU in view."""
    from memprobe.core.inference_config import Predictor
    from memprobe.formula.inference_calibration import INFERENCE, InferenceCalibration

    return InferenceCalibration(
        arch="unet",
        device="trace",
        precision=precision,
        optimizer=INFERENCE,
        deep_supervision=False,
        phase_coefficients={
            "forward": {
                "constant": 1e8,
                "input_voxels": per_window_voxel,
                "image_output": 4.0,
                "image_voxels": 4.0,
            },
            "stitch": {"constant": 1e8, "image_output": 4.0, "image_voxels": 4.0},
        },
        parameter_model={"constant": 1e6, "in_channels": 0.0, "out_channels": 0.0, "tokens": 0.0},
        quality=FitQuality(13, 0.01, 0.02, 4, 0.02, 0.04),
        created_at="2026-11-29T00:00:00+00:00",
        fit_range={
            "sw_batch_size": [1, 8],
            "voxels": [32**3, 96**3],
            "in_channels": [1, 3],
            "out_channels": [2, 16],
        },
        predictor=Predictor(predictor),
    )


def write_calibrations(path: Path, *calibrations: object) -> Path:
    """A database at ``path`` holding ``calibrations`` (each stored as by `memprobe calibrate`)."""
    from memprobe.store.database import Database

    with Database.open(path) as database:
        for calibration in calibrations:
            database.add_calibration(calibration)  # type: ignore[arg-type]
    return path
