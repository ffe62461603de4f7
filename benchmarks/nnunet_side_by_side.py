"""nnU-Net's plans next to memprobe's for the same budget (#12): three dataset fingerprints.

For each dataset and preset (default 8 GB, ResEnc M 8 GB, ResEnc L 24 GB) it runs nnU-Net's own
planner (its feature-map proxy) and the same planner with memprobe's measured need, and reports
patch, batch, memprobe's predicted peak of each plan (allocated, reserved, whole need with
context and workspaces), the peak a trace probe of that plan measures, and nnU-Net's proxy.

Each topology is calibrated once on trace (nnU-Net's step, fp16-mixed, deep supervision; no
searches) and kept in benchmarks/nnunet_calibrations.json (``memprobe db export`` format): a
rerun answers from those and calibrates only topologies it has not seen (``--fresh`` calibrates
all again). Only 3d_fullres is planned: nnU-Net's 3d_lowres search (dozens of network builds,
planned after 3d_fullres and without effect on it) is switched off in both planners.

    PYTHONPATH=. python -m benchmarks.nnunet_side_by_side [--datasets spleen] [--fresh] [--no-trace-check]

Needs nnunetv2 (``memprobe[nnunet]``). Writes benchmarks/results/nnunet_side_by_side.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STORED = HERE / "nnunet_calibrations.json"
GIB = 2**30
# name: (spacings of the cases, shapes of the cases, channels, classes)
DATASETS: dict[str, tuple[list[list[float]], list[list[int]], int, int]] = {
    "spleen-like CT (5 x 0.8 x 0.8 mm)": ([[5.0, 0.8, 0.8]] * 8, [[90, 512, 512]] * 8, 1, 2),
    "brain MRI (1 mm, 4 channels, 4 classes)": ([[1.0, 1.0, 1.0]] * 8, [[138, 169, 138]] * 8, 4, 4),
    "abdominal CT (2.5 x 0.8 x 0.8 mm, 16 classes)": ([[2.5, 0.8, 0.8]] * 8, [[160, 512, 512]] * 8, 1, 16),
}
PRESETS = {"default": 8, "resenc-m": 8, "resenc-l": 24}
NAME = "Dataset986_Bench"
STEP: dict[str, Any] = dict(optimizer="sgd", deep_supervision=True, step="nnunet")


def _write_dataset(
    root: Path, spacings: list[list[float]], shapes: list[list[int]], channels: int, classes: int
) -> None:
    from tests.nnunet_dataset import write_dataset

    for folder in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.rmtree(root / folder / NAME, ignore_errors=True)
    write_dataset(root, NAME, spacings, shapes, channels, classes)


class _Calibrations:
    """memprobe's need for a topology, calibrating it on trace the first time it is asked for."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.calibrated: list[tuple[str, float]] = []  # (arch, seconds)

    def need(self, arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int) -> Any:
        from memprobe.api import estimate
        from memprobe.core.errors import DatabaseError, NoCalibrationError

        kwargs: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, db=self.db, device="trace", **STEP
        )
        try:
            return estimate(arch, patch, batch, "fp16-mixed", **kwargs).need
        except (NoCalibrationError, DatabaseError):  # no calibration of it, or none at all yet
            self._calibrate(arch)
            return estimate(arch, patch, batch, "fp16-mixed", **kwargs).need

    def _calibrate(self, arch: str) -> None:
        from memprobe.backends import get_backend
        from memprobe.backends.recorder import MeasurementLog
        from memprobe.calibration_run import calibrate
        from memprobe.core.archs.registry import resolve_arch, smallest_patch
        from memprobe.core.config import make_step_config
        from memprobe.store.database import Database

        print(f"calibrating {arch} on trace ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        base = make_step_config(
            arch,
            smallest_patch(resolve_arch(arch)),
            1,
            precision="fp16-mixed",
            deep_supervision=True,
            step="nnunet",
        )
        with Database.open(self.db) as database:
            log = MeasurementLog(get_backend("trace"), database, 80 * GIB)
            calibrate(log, base, 80 * GIB, search=False)
        self.calibrated.append((arch, time.perf_counter() - started))


def _traced_peak(arch: str, plan: dict[str, Any], channels: int, classes: int) -> float | None:
    """The peak allocated bytes a trace probe measures for the plan's own configuration."""
    from memprobe.api import probe

    measured = probe(
        arch,
        plan["patch_size"],
        plan["batch_size"],
        "fp16-mixed",
        in_channels=channels,
        out_channels=classes,
        device="trace",
        **STEP,
    )
    return measured.peak_allocated_bytes if measured.ok else None


def _row(
    dataset: str, preset: str, who: str, plan: dict[str, Any], need: Any, traced: float | None, proxy: float
) -> dict[str, Any]:
    strides = ".".join("".join(map(str, s)) for s in plan["architecture"]["arch_kwargs"]["strides"][1:])
    return {
        "dataset": dataset,
        "preset": preset,
        "planner": who,
        "patch": "x".join(map(str, plan["patch_size"])),
        "batch": plan["batch_size"],
        "strides": strides,
        "allocated GiB (fit)": round(need.allocated_bytes / GIB, 2),
        "allocated GiB (trace)": None if traced is None else round(traced / GIB, 2),
        "reserved GiB (fit)": round(need.reserved_bytes / GIB, 2),
        "whole need GiB (fit)": round(need.total_bytes / GIB, 2),
        "nnU-Net proxy / its reference": round(proxy, 3),
    }


def _plan(planner: Any) -> dict[str, Any]:
    planner.lowres_creation_threshold = 0.0  # 3d_fullres only: see the module docstring
    with contextlib.redirect_stdout(sys.stderr):
        plans = planner.plan_experiment()
    return dict(plans["configurations"]["3d_fullres"])


def _stored_into(db: str, fresh: bool) -> int:
    """Import the stored calibrations into ``db``; return how many."""
    if fresh or not STORED.is_file():
        return 0
    from memprobe.store.merge import import_into

    import_into(STORED, db)
    return len(json.loads(STORED.read_text()))


def _store(db: str) -> None:
    from memprobe.store.calibration_sources import user_calibrations

    calibrations = sorted(user_calibrations(db), key=lambda c: (c.arch, c.created_at))
    text = json.dumps([c.to_dict() for c in calibrations], indent=1, sort_keys=True) + "\n"
    STORED.write_text(text)


def run(selected: Sequence[str], fresh: bool = False, trace_check: bool = True) -> dict[str, Any]:
    """Plan every selected dataset with every preset, both ways; the rows and how the run went."""
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="memprobe-nnunet-"))
    os.environ.update(
        nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed")
    )
    os.environ.setdefault("nnUNet_results", str(work / "results"))
    os.environ["MEMPROBE_NO_SHIPPED"] = "1"  # only this benchmark's nnU-Net calibrations answer
    from memprobe.integrations.nnunet.planner import measured_planner, planner_base

    db = str(work / "calibrations.sqlite")
    stored = _stored_into(db, fresh)
    calibrations = _Calibrations(db)
    rows = []
    for label, (spacings, shapes, channels, classes) in DATASETS.items():
        if selected and not any(s in label for s in selected):
            continue
        _write_dataset(work, spacings, shapes, channels, classes)
        for preset, gigabytes in PRESETS.items():
            theirs = planner_base(preset)(NAME, gigabytes)
            ours = measured_planner(
                preset, NAME, gigabytes * 10**9, lambda *a: calibrations.need(*a).total_bytes
            )
            for who, planner in (("nnU-Net", theirs), ("memprobe", ours)):
                plan = _plan(planner)
                measures = _measures(plan, theirs, calibrations, channels, classes, trace_check)
                rows.append(_row(label, preset, who, plan, *measures))
    _store(db)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "rows": rows,
        "seconds": round(time.perf_counter() - started),
        "stored": stored,
        "calibrated": [{"arch": a, "seconds": round(s)} for a, s in calibrations.calibrated],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "PYTHONPATH=. python -m benchmarks.nnunet_side_by_side"
        + "".join(f" {flag}" for flag in (["--datasets", *selected] if selected else [])),
    }


def _measures(
    plan: dict[str, Any],
    reference_planner: Any,
    calibrations: _Calibrations,
    channels: int,
    classes: int,
    trace_check: bool,
) -> tuple[Any, float | None, float]:
    from memprobe.integrations.nnunet.planner import topology_arch

    architecture = plan["architecture"]
    arch = topology_arch(architecture["network_class_name"], architecture["arch_kwargs"])
    need = calibrations.need(arch, plan["patch_size"], plan["batch_size"], channels, classes)
    traced = _traced_peak(arch, plan, channels, classes) if trace_check else None
    proxy = type(reference_planner).static_estimate_VRAM_usage(
        plan["patch_size"],
        channels,
        classes,
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
    )
    p = reference_planner
    reference = p.UNet_reference_val_3d * p.UNet_vram_target_GB / p.UNet_reference_val_corresp_GB
    # nnU-Net compares its proxy of a batch of 2 with the reference; scaled here to the plan's batch
    return need, traced, float(proxy) * plan["batch_size"] / 2 / float(reference)


NOTES = """
What each number is (no GPU was used):

- **patch, batch, strides**: the 3d_fullres configuration each planner wrote (strides of each
  stage after the first, axes in nnU-Net's transposed order, out-of-plane axis first).
- **allocated GiB (fit)**: memprobe's prediction of the peak of allocated tensors for one
  training step of that plan (nnU-Net's step: SGD with Nesterov, Dice+CE with deep supervision,
  fp16 autocast), from the topology's calibration, which was fitted to measurements on memprobe's
  **trace** backend (fake tensors, every allocation counted, 512-byte rounding).
- **allocated GiB (trace)**: the same configuration measured on the trace backend (a probe, not
  a prediction): the difference to the fit column is the calibration's error at that plan.
- **reserved GiB (fit)**: allocated plus the caching allocator's reserve, as predicted.
- **whole need GiB (fit)**: reserved plus CUDA context, cuBLAS/cuDNN workspaces and the margin;
  memprobe's planner keeps this within the budget.
- **nnU-Net proxy / its reference**: nnU-Net's feature-map estimate (``compute_conv_feature_map_size``)
  scaled to the plan's batch, divided by the reference it compares it with (1.0 = the proxy's
  budget). It is not in bytes: nnU-Net's planner stops shrinking the patch when it is at most 1.

Budgets: nnU-Net's own targets (default and ResEnc M 8 GB, ResEnc L 24 GB); memprobe plans the
same number of bytes (10^9 each). nnU-Net's batch is at least 2 and covers at most 5% of the
dataset; memprobe's is the largest that fits, capped the same way.
"""


def write(result: dict[str, Any]) -> None:
    from benchmarks.harness import csv_text, table_frame

    rows = result["rows"]
    frame = table_frame(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nnunet_side_by_side.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "nnunet_side_by_side.csv").write_bytes(csv_text(frame).encode("utf-8"))
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join("-" if value is None else str(value) for value in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    calibrated = result["calibrated"]
    run_note = (
        f"\nReproduce: `{result['command']}` (needs `memprobe[nnunet]`). This run: {len(rows)} plans in "
        f"{result['seconds']} s on {result['machine']}; calibrations of topologies: {result['stored']} reused "
        f"from benchmarks/nnunet_calibrations.json, {len(calibrated)} made on trace"
        + (f" ({sum(c['seconds'] for c in calibrated)} s in all)" if calibrated else "")
        + ".\n"
    )
    (RESULTS / "nnunet_side_by_side.md").write_text(
        "# nnU-Net's plans and memprobe's, same budget\n\n"
        + "\n".join(lines)
        + "\n"
        + NOTES
        + _over_budget(rows)
        + run_note
    )


def _over_budget(rows: Sequence[dict[str, Any]]) -> str:
    """The plans whose predicted whole need exceeds their budget, computed from the rows."""
    over = [
        f"{r['planner']} {r['preset']} on {r['dataset']} ({r['whole need GiB (fit)']} GiB of "
        f"{PRESETS[r['preset']] * 10**9 / GIB:.2f})"
        for r in rows
        if r["whole need GiB (fit)"] > PRESETS[r["preset"]] * 10**9 / GIB
    ]
    if not over:
        return "\nEvery plan's predicted whole need is within its budget.\n"
    return "\nPlans whose predicted whole need exceeds their budget: " + "; ".join(over) + ".\n"


def rewrite() -> None:
    """Write the tables again from the last run's JSON (after a change to their wording)."""
    write(json.loads((RESULTS / "nnunet_side_by_side.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="*", default=[], help="substrings of the dataset labels to run")
    parser.add_argument("--fresh", action="store_true", help="calibrate every topology again")
    parser.add_argument("--no-trace-check", action="store_true", help="skip the trace probe of each plan")
    arguments = parser.parse_args()
    write(run(arguments.datasets, arguments.fresh, not arguments.no_trace_check))
    print((RESULTS / "nnunet_side_by_side.md").read_text())


if __name__ == "__main__":
    main()
