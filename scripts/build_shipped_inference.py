"""Rebuild the inference calibrations memprobe ships (memprobe/data/inference_calibrations.json).

MONAI's sliding window for every registered network, at fp32 and bf16-mixed (what people infer
with), and nnU-Net's predictor (fp16 autocast, its defaults) for the nnU-Net topologies its
planners choose for the benchmark's datasets (benchmarks/nnunet_calibrations.json), on the
trace backend. Measurements go to calibration/trace.sqlite and are reused on a re-run, so an
interrupted build resumes. Run: `make shipped`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from memprobe.backends import get_inference_backend
from memprobe.backends.recorder import MeasurementLog
from memprobe.core.archs.registry import ARCHS, axis_divisors, resolve_arch
from memprobe.core.inference_config import make_inference_config
from memprobe.formula.inference_calibration import with_predictor
from memprobe.inference.calibration_run import calibrate_inference
from memprobe.store.database import Database

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16-mixed")
NNUNET_TOPOLOGIES = ROOT / "benchmarks" / "nnunet_calibrations.json"


def jobs(archs: list[str] | None) -> list[tuple[str, dict[str, object]]]:
    """(architecture, inference settings): MONAI's window at each precision, then nnU-Net's predictor."""
    monai = [
        (arch, {"precision": precision, "overlap": 0.0})
        for precision in PRECISIONS
        for arch in archs or list(ARCHS)
    ]
    if archs is not None or not NNUNET_TOPOLOGIES.exists():
        return monai
    try:
        import nnunetv2  # noqa: F401  (the predictor's own code is measured)
    except ImportError:
        print("nnunetv2 is not installed: nnU-Net's predictor is not calibrated", file=sys.stderr)
        return monai
    topologies = sorted({item["arch"] for item in json.loads(NNUNET_TOPOLOGIES.read_text())})
    nnunet = {"predictor": "nnunet", "overlap": 0.5, "blend": "gaussian", "precision": "fp16-mixed"}
    return monai + [(arch, nnunet) for arch in topologies]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=ROOT / "calibration" / "trace.sqlite")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "memprobe" / "data" / "inference_calibrations.json"
    )
    parser.add_argument("--arch", action="append", help="Only these architectures (repeatable).")
    parser.add_argument(
        "--missing", action="store_true", help="Keep --out's calibrations; add only those it lacks."
    )
    args = parser.parse_args()
    backend = get_inference_backend("trace")
    shipped = json.loads(args.out.read_text()) if args.missing and args.out.exists() else []
    have = {(item["arch"], with_predictor(item)["predictor"].value, item["precision"]) for item in shipped}
    with Database.open(args.db) as db:
        for arch, settings in jobs(args.arch):
            if (arch, settings.get("predictor", "monai"), settings["precision"]) in have:
                continue
            started = time.perf_counter()
            divisors = axis_divisors(resolve_arch(arch))  # nnU-Net's anisotropic topologies differ per axis
            roi, image = tuple(2 * d for d in divisors), tuple(4 * d for d in divisors)
            base = make_inference_config(arch, roi, image, **settings)  # type: ignore[arg-type]
            report = calibrate_inference(MeasurementLog(backend, db), base)
            quality = report.calibration.quality
            print(
                f"{arch:42s} {base.predictor.value:6s} {base.precision.value:10s} held-out median "
                f"{100 * (quality.heldout_median_relative_error or 0):.2f}% worst "
                f"{100 * (quality.heldout_max_relative_error or 0):.2f}%  {report.measured} measured, "
                f"{report.reused} reused, {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            shipped.append({**report.calibration.to_dict(), "source": "shipped"})
    args.out.write_text(json.dumps(shipped, separators=(",", ":")) + "\n")  # per-op coefficients: compact
    print(f"wrote {len(shipped)} inference calibrations to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
