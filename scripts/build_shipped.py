"""Rebuild the calibrations memprobe ships (memprobe/data/calibrations.json) on the trace backend.

Measurements go to calibration/trace.sqlite and are reused on a re-run, so an interrupted
build resumes; the fitted calibrations are then exported as JSON. Run: `make shipped`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from memprobe.backends import get_backend
from memprobe.backends.recorder import MeasurementLog
from memprobe.calibration_run import calibrate
from memprobe.core.archs.registry import ARCHS, smallest_patch_size
from memprobe.core.config import make_step_config
from memprobe.store.database import Database

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
BUDGET_BYTES = 24 * 2**30


def calibration_jobs(archs: list[str]) -> list[tuple[str, str, bool]]:
    """Every architecture at every precision; deep-supervision variants where the network has it."""
    jobs = [(arch, precision, False) for precision in PRECISIONS for arch in archs]
    jobs += [
        (arch, precision, True)
        for precision in PRECISIONS
        for arch in archs
        if ARCHS[arch].supports_deep_supervision
    ]
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=ROOT / "calibration" / "trace.sqlite")
    parser.add_argument("--out", type=Path, default=ROOT / "memprobe" / "data" / "calibrations.json")
    parser.add_argument("--arch", action="append", help="Only these architectures (repeatable).")
    args = parser.parse_args()
    backend = get_backend("trace")
    with Database.open(args.db) as db:
        for arch, precision, deep_supervision in calibration_jobs(args.arch or list(ARCHS)):
            started = time.perf_counter()
            size = smallest_patch_size(ARCHS[arch])
            base = make_step_config(
                arch, (size,) * 3, 1, precision=precision, deep_supervision=deep_supervision
            )
            report = calibrate(MeasurementLog(backend, db, BUDGET_BYTES), base, BUDGET_BYTES, search=False)
            quality, reserved = report.calibration.quality, report.calibration.reserved_quality
            print(
                f"{arch:10s} {precision:10s} ds={deep_supervision!s:5s} held-out allocated median "
                f"{100 * (quality.heldout_median_relative_error or 0):.2f}% worst "
                f"{100 * (quality.heldout_max_relative_error or 0):.2f}%, reserved worst "
                f"{100 * ((reserved.heldout_max_relative_error or 0) if reserved else 0):.2f}%  "
                f"{report.measured} measured, "
                f"{report.reused} reused, {time.perf_counter() - started:.0f}s",
                flush=True,
            )
        calibrations = [dict(c.to_dict(), source="shipped") for c in db.calibrations()]
    args.out.write_text(json.dumps(calibrations, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(calibrations)} calibrations to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
