"""Rebuild the inference calibrations memprobe ships (memprobe/data/inference_calibrations.json).

MONAI's sliding window for every registered network, at fp32 and bf16-mixed (what people infer
with), on the trace backend. Measurements go to calibration/trace.sqlite and are reused on a
re-run, so an interrupted build resumes. Run: `make shipped`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from memprobe.archs.registry import ARCHS, resolve_arch
from memprobe.db import Database
from memprobe.inference.calibration_run import calibrate_inference
from memprobe.inference.config import make_inference_config
from memprobe.inference.run import InferenceRunner

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16-mixed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=ROOT / "calibration" / "trace.sqlite")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "memprobe" / "data" / "inference_calibrations.json"
    )
    parser.add_argument("--arch", action="append", help="Only these architectures (repeatable).")
    args = parser.parse_args()
    runner = InferenceRunner("trace")
    shipped = []
    with Database.open(args.db) as db:
        for precision in PRECISIONS:
            for arch in args.arch or list(ARCHS):
                started = time.perf_counter()
                divisor = resolve_arch(arch).divisor
                base = make_inference_config(arch, (2 * divisor,) * 3, (4 * divisor,) * 3, precision=precision,
                                             overlap=0.0)  # fmt: skip
                report = calibrate_inference(runner, base, db)
                quality = report.calibration.quality
                print(
                    f"{arch:10s} {precision:10s} held-out median {100 * (quality.heldout_median_relative_error or 0):.2f}% "
                    f"worst {100 * (quality.heldout_max_relative_error or 0):.2f}%  {report.measured} measured, "
                    f"{report.reused} reused, {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
                shipped.append({**report.calibration.to_dict(), "source": "shipped"})
    args.out.write_text(json.dumps(shipped, separators=(",", ":")) + "\n")  # per-op coefficients: compact
    print(f"wrote {len(shipped)} inference calibrations to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
