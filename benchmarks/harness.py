"""What the benchmarks share: the architectures to run, trace steps measured once per session,
calibrations, and writing each result table, a pandas DataFrame, as markdown, CSV and JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

import pandas as pd

from memprobe.core.archs.registry import ARCHS, get_arch, smallest_patch_size
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.enums import DeviceKind
from memprobe.core.measurement import Environment, Measurement
from memprobe.formula.calibration import Calibration

ARCHS_VARIABLE = "MEMPROBE_BENCH_ARCHS"  # e.g. "mednext,basicunet" while developing; default: all
# "fitted": fit every calibration in this run, from this run's traces, instead of using the shipped one.
CALIBRATIONS_VARIABLE = "MEMPROBE_BENCH_CALIBRATIONS"
# `make bench` refreshes the committed tables in benchmarks/results; `make test` writes to an
# ignored folder, so a test run leaves the checkout as it found it.
RESULTS_DIR = Path(os.environ.get("MEMPROBE_RESULTS_DIR") or Path(__file__).resolve().parent / "results")
REPO_ROOT = Path(__file__).resolve().parents[1]
STORED_TRACE_DB = REPO_ROOT / "calibration" / "trace.sqlite"
BUDGET_BYTES = 24 * 2**30
GIB = 2**30


def selected_archs() -> list[str]:
    """Registered architectures, or those named in ``$MEMPROBE_BENCH_ARCHS``."""
    names = [n for n in os.environ.get(ARCHS_VARIABLE, "").split(",") if n.strip()]
    return [get_arch(n).name for n in names] if names else list(ARCHS)


def base_config(arch: str) -> StepConfig:
    """fp32, AdamW, no deep supervision: the calibration the accuracy table checks."""
    return make_step_config(arch, (smallest_patch_size(get_arch(arch)),) * 3, 1)


@dataclass(frozen=True)
class TimedMeasurement:
    measurement: Measurement
    wall_seconds: float  # the whole probe: building the network, warm-up and measured step


class StoredTraceSteps:
    """Calibration steps that ``make shipped`` traced into ``calibration/trace.sqlite``.

    The shipped calibrations were fitted on exactly these steps, so the baselines fitted on the
    same design points can read them instead of tracing them again (minutes on 2 cores). They
    are used only when this run's torch, MONAI, memprobe and measurement code are those that
    took them (the host is not compared: a trace step reads the same on any machine); otherwise
    every step is traced here.
    """

    def __init__(self, current: Environment, path: Path = STORED_TRACE_DB) -> None:
        from memprobe.store.database import Database

        self.database: Database | None = None
        self.environment: Environment | None = None
        if not path.is_file():
            return
        database = Database.open(path, create=False, readonly=True)
        matching = [e for e in database.environments() if replace(e, host=current.host) == current]
        if matching:
            self.database, self.environment = database, matching[-1]
        else:
            database.close()

    def find(self, config: StepConfig) -> Measurement | None:
        from memprobe.backends.recorder import reuse_key_for

        if self.database is None or self.environment is None:
            return None
        return self.database.find_measurement(config, self.environment, None, reuse_key_for(config))


class SessionMeasurements:
    """Trace steps taken during the benchmark session, each configuration measured once.

    Implements the Backend protocol, so a calibration made here fills the same record the
    tables read from. :meth:`calibration_step` may answer from :class:`StoredTraceSteps`;
    :meth:`measure` always traces in this run.
    """

    kind = DeviceKind.TRACE

    def __init__(self) -> None:
        from memprobe.backends.trace_backend import TraceBackend

        self.backend = TraceBackend()
        self.taken: dict[StepConfig, TimedMeasurement] = {}
        self.stored = StoredTraceSteps(self.backend.environment())
        self.read_from_store: set[StepConfig] = set()

    def environment(self) -> Environment:
        return self.backend.environment()

    def timed(self, config: StepConfig) -> TimedMeasurement:
        if config not in self.taken:
            started = time.perf_counter()
            measurement = self.backend.measure(config)
            self.taken[config] = TimedMeasurement(measurement, time.perf_counter() - started)
        return self.taken[config]

    def measure(self, config: StepConfig) -> Measurement:
        return self.timed(config).measurement

    def calibration_step(self, config: StepConfig) -> Measurement:
        """A design point of the shipped calibration: the stored step when there is one, else traced now."""
        if config not in self.taken:
            found = self.stored.find(config)
            if found is not None:
                self.read_from_store.add(config)
                return found
        return self.measure(config)

    def store_note(self) -> str:
        """Where the design points came from, for the tables' notes."""
        if not self.read_from_store:
            return "Every step was traced in this run."
        return (
            f"{len(self.read_from_store)} design-point steps were read from "
            f"{STORED_TRACE_DB.relative_to(REPO_ROOT)} (traced by `make shipped` with this run's torch, "
            "MONAI, memprobe and measurement code; the shipped calibrations were fitted on them); "
            "every held-out and searched step was traced in this run."
        )


@dataclass(frozen=True)
class SourcedCalibration:
    calibration: Calibration
    origin: str  # "shipped" or "calibrated in this run"


class Calibrations:
    """The shipped trace calibration of each architecture, or one fitted in this session.

    With ``$MEMPROBE_BENCH_CALIBRATIONS=fitted`` every calibration is fitted in this session.
    """

    def __init__(self, measurements: SessionMeasurements) -> None:
        from memprobe.store.calibration_sources import shipped_calibrations

        self.measurements = measurements
        fit_all = os.environ.get(CALIBRATIONS_VARIABLE, "shipped") == "fitted"
        self.shipped = {
            c.arch: c
            for c in ([] if fit_all else shipped_calibrations())
            if (c.device, c.precision, c.optimizer, c.deep_supervision, c.step, c.checkpointing)
            == ("trace", "fp32", "adamw", False, "memprobe", False)
        }
        self.made: dict[str, Calibration] = {}

    def get(self, arch: str) -> SourcedCalibration:
        if arch in self.shipped:
            return SourcedCalibration(self.shipped[arch], "shipped")
        if arch not in self.made:
            self.made[arch] = self._calibrate(arch)
        return SourcedCalibration(self.made[arch], "calibrated in this run")

    def _calibrate(self, arch: str) -> Calibration:
        from memprobe.backends.recorder import MeasurementLog
        from memprobe.calibration_run import calibrate
        from memprobe.store.database import Database

        with Database.open(":memory:") as db:
            log = MeasurementLog(self.measurements, db, BUDGET_BYTES)  # type: ignore[arg-type]
            return calibrate(log, base_config(arch), BUDGET_BYTES, search=False).calibration


Rows: TypeAlias = list[dict[str, Any]] | pd.DataFrame


@dataclass(frozen=True)
class ResultTable:
    """One benchmark table: display rows for markdown, raw records for CSV and JSON.

    Each is a DataFrame, or the list of dicts one is built from (:func:`table_frame`).
    """

    name: str
    title: str
    rows: Rows
    records: Rows
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def table_frame(rows: Rows) -> pd.DataFrame:
    """``rows`` as a DataFrame of the values as given: columns in order of first appearance.

    Object columns keep each value as it is (an int stays ``2``, never ``2.0``); a value that
    is missing, or a key a row lacks, is None, which the tables show empty.
    """
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, dtype=object)
    frame = frame.astype(object)
    return frame.where(frame.notna(), None)


def csv_text(frame: pd.DataFrame) -> str:
    """The CSV file of ``frame``, as Python's csv module writes it (CRLF line ends, None empty)."""
    return frame.to_csv(index=False, lineterminator="\r\n")


def _json_records(records: Rows) -> list[dict[str, Any]]:
    """Records for the JSON file; a list keeps each record's own keys (a DataFrame has them all)."""
    return table_frame(records).to_dict(orient="records") if isinstance(records, pd.DataFrame) else records


def environment_info() -> dict[str, Any]:
    """Versions, CPU and date, recorded with every table."""
    import monai
    import torch

    from memprobe import __version__

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "memprobe": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def markdown(table: ResultTable, environment: dict[str, Any]) -> str:
    rows = table_frame(table.rows).to_markdown(index=False, tablefmt="github", disable_numparse=True)
    lines = [f"### {table.title}", "", rows, ""]
    lines += [f"- {note}" for note in table.notes]
    e = environment
    lines += [
        "",
        f"Generated {e['date']} by `python -m pytest benchmarks -p no:cacheprovider` "
        f"(memprobe {e['memprobe']}, torch {e['torch']}, MONAI {e['monai']}, {e['cpu']}, "
        f"{e['cpu_count']} CPUs).",
    ]
    return "\n".join(lines) + "\n"


def write_results(table: ResultTable, results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<name>.md``, ``.csv`` and ``.json``; return the markdown file."""
    results_dir.mkdir(parents=True, exist_ok=True)
    environment = environment_info()
    path = results_dir / f"{table.name}.md"
    path.write_text(markdown(table, environment))
    (results_dir / f"{table.name}.csv").write_bytes(csv_text(table_frame(table.records)).encode("utf-8"))
    document = {
        "table": table.name,
        "title": table.title,
        "environment": environment,
        "records": _json_records(table.records),
        "notes": list(table.notes),
        **table.extra,
    }
    (results_dir / f"{table.name}.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    return path


def gib(size: float | None) -> str:
    return "-" if size is None else f"{size / GIB:.2f}"


def percent(fraction: float | None, sign: str = "+") -> str:
    """A relative error as a percentage; errors below 0.01% keep two significant digits."""
    if fraction is None:
        return "-"
    if 1e-9 < abs(fraction) < 1e-4:  # below 1e-9 it is rounding noise
        return f"{100 * fraction:{sign}.1e}%"
    return f"{100 * fraction:{sign}.2f}%"


def patch_text(patch: tuple[int, ...] | list[int]) -> str:
    return "x".join(map(str, patch))
