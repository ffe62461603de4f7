"""Speed: planning without torch against importing torch, estimate() latency, trace-probe cost.

Timings are reported against the issue's targets, never asserted: they depend on the machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Calibrations,
    ResultTable,
    SessionMeasurements,
    selected_archs,
    write_results,
)
from memprobe.core.config import make_step_config

SUGGEST_TARGET_SECONDS = 0.15  # over a bare `python -c pass`: the start-up memprobe itself adds
ESTIMATE_TARGET_SECONDS = 1e-3
SUGGEST_RUNS = 5
IMPORT_TORCH_RUNS = 3
PROBE_PATCH = (128, 128, 128)


def _median_process_seconds(command: list[str], runs: int) -> float:
    """Median wall time of ``command`` in a new process, after one untimed run to warm the file cache.

    Bytecode is cached as an installed package's is (a machine with PYTHONDONTWRITEBYTECODE set
    would otherwise time Python compiling memprobe's source on every run).
    """
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(command, check=True, capture_output=True, env=environment)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=environment)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _calibration_db(calibrations: Calibrations, arch: str, directory: Path) -> Path:
    """A database holding just ``arch``'s trace calibration, as after `memprobe calibrate`."""
    from memprobe.store.database import Database

    path = directory / "speed.sqlite"
    with Database.open(path) as db:
        db.add_calibration(calibrations.get(arch).calibration)
    return path


def _benchmarked_seconds(benchmark: Any, function: Any) -> tuple[float, str]:
    """pytest-benchmark's median, or a timeit minimum when benchmarks are disabled."""
    benchmark(function)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        return float(stats.median), f"{stats.rounds} rounds (pytest-benchmark median)"
    repeats = timeit.repeat(function, number=100, repeat=5)
    return min(repeats) / 100, "5 x 100 calls (timeit best)"


def _against_target(seconds: float, target: float) -> str:
    """The time as a share of its target: reported, never a verdict, since nothing asserts it."""
    return f"{seconds / target:.2f}x target"


def _seconds_text(seconds: float) -> str:
    if seconds < 1e-2:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def test_speed_table(
    benchmark: Any, measurements: SessionMeasurements, calibrations: Calibrations, tmp_path: Path
) -> None:
    from memprobe.api import estimate

    archs = selected_archs()
    arch = "mednext" if "mednext" in archs else archs[0]
    db = _calibration_db(calibrations, arch, tmp_path)
    memprobe = str(Path(sys.executable).with_name("memprobe"))
    suggest = [
        memprobe,
        "suggest",
        "--patch",
        *map(str, PROBE_PATCH),
        "--gpu-mem",
        "24GiB",
        "--arch",
        arch,
        "--db",
        str(db),
        "--json",
    ]
    bare_seconds = _median_process_seconds([sys.executable, "-c", "pass"], SUGGEST_RUNS)
    suggest_seconds = _median_process_seconds(suggest, SUGGEST_RUNS) - bare_seconds
    torch_seconds = _median_process_seconds([sys.executable, "-c", "import torch"], IMPORT_TORCH_RUNS)
    estimate(arch, PROBE_PATCH, 2, db=db, device="trace")  # warm: calibrations loaded and cached
    estimate_seconds, estimate_runs = _benchmarked_seconds(
        benchmark, lambda: estimate(arch, PROBE_PATCH, 2, db=db, device="trace")
    )

    rows: list[dict[str, Any]] = [
        {
            "measurement": f"`memprobe suggest --patch 128 128 128 --gpu-mem 24GiB --arch {arch} --json` "
            f"(new process, beyond a bare `python -c pass` of {_seconds_text(bare_seconds)})",
            "time": _seconds_text(suggest_seconds),
            "runs": f"median of {SUGGEST_RUNS}",
            "target": f"< {SUGGEST_TARGET_SECONDS} s",
            "result": _against_target(suggest_seconds, SUGGEST_TARGET_SECONDS),
        },
        {
            "measurement": '`python -c "import torch"` (new process)',
            "time": _seconds_text(torch_seconds),
            "runs": f"median of {IMPORT_TORCH_RUNS}",
            "target": "-",
            "result": f"suggest is {torch_seconds / (suggest_seconds + bare_seconds):.0f}x faster",
        },
        {
            "measurement": f"`memprobe.estimate('{arch}', (128, 128, 128), 2)` (warm)",
            "time": _seconds_text(estimate_seconds),
            "runs": estimate_runs,
            "target": "< 1 ms",
            "result": _against_target(estimate_seconds, ESTIMATE_TARGET_SECONDS),
        },
    ]
    records: list[dict[str, Any]] = [
        {
            "measurement": "suggest_cold_start_beyond_bare_python",
            "seconds": round(suggest_seconds, 4),
            "target_seconds": SUGGEST_TARGET_SECONDS,
            "ratio_to_target": round(suggest_seconds / SUGGEST_TARGET_SECONDS, 3),
        },
        {
            "measurement": "import_torch_cold_start",
            "seconds": round(torch_seconds, 4),
            "target_seconds": None,
            "ratio_to_target": None,
        },
        {
            "measurement": "estimate_warm",
            "seconds": estimate_seconds,
            "target_seconds": ESTIMATE_TARGET_SECONDS,
            "ratio_to_target": round(estimate_seconds / ESTIMATE_TARGET_SECONDS, 3),
        },
    ]
    for name in archs:
        timed = measurements.timed(make_step_config(name, PROBE_PATCH, 1))
        step = timed.measurement.step_seconds or 0.0
        rows.append(
            {
                "measurement": f"trace probe {name} 128x128x128 b1 (in process)",
                "time": f"{timed.wall_seconds:.2f} s (step {step:.2f} s)",
                "runs": "1",
                "target": "-",
                "result": "-",
            }
        )
        records.append(
            {
                "measurement": f"trace_probe_{name}",
                "seconds": round(timed.wall_seconds, 3),
                "step_seconds": round(step, 3),
                "target_seconds": None,
                "ratio_to_target": None,
            }
        )
    notes = (
        "new process: wall time of the command in a fresh Python process (file cache warm); suggest reads a "
        "database holding one calibration and never imports torch.",
        "trace probe: one `TraceBackend.measure` (build the network, a warm-up step, the measured step on "
        "fake tensors); step = the measured step alone. The first probe of the run also pays for torch's and "
        "MONAI's lazy imports.",
        f"Timings are machine-dependent and reported, not asserted ({os.cpu_count()} CPUs here): result "
        "gives each time as a multiple of the issue's target (below 1x: within it).",
    )
    write_results(ResultTable("speed", "Speed: planning, estimating and probing", rows, records, notes))
