"""nnU-Net's plans next to memprobe's for the same budget (#12): three dataset fingerprints.

For each dataset and preset (default 8 GB, ResEnc M 8 GB, ResEnc L 24 GB) it runs nnU-Net's own
planner (its feature-map proxy) and the same planner with memprobe's measured need, and reports
patch, batch, memprobe's predicted peak of each plan (allocated, reserved, whole need with
context and workspaces) and nnU-Net's proxy. Topologies without a calibration are calibrated on
trace first (nnU-Net's step, fp16-mixed, deep supervision; no searches).

    PYTHONPATH=.:/path/to/nnunetv2 python -m benchmarks.nnunet_side_by_side [--datasets spleen]

Needs nnunetv2 (``memprobe[nnunet]``). Writes benchmarks/results/nnunet_side_by_side.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30
# name: (spacings of the cases, shapes of the cases, channels, classes)
DATASETS: dict[str, tuple[list[list[float]], list[list[int]], int, int]] = {
    "spleen-like CT (5 x 0.8 x 0.8 mm)": ([[5.0, 0.8, 0.8]] * 8, [[90, 512, 512]] * 8, 1, 2),
    "brain MRI (1 mm, 4 channels, 4 classes)": ([[1.0, 1.0, 1.0]] * 8, [[138, 169, 138]] * 8, 4, 4),
    "abdominal CT (2.5 x 0.8 x 0.8 mm, 16 classes)": ([[2.5, 0.8, 0.8]] * 8, [[160, 512, 512]] * 8, 1, 16),
}
PRESETS = {"default": 8, "resenc-m": 8, "resenc-l": 24}
NAME = "Dataset986_Bench"


def _write_dataset(
    root: Path, spacings: list[list[float]], shapes: list[list[int]], channels: int, classes: int
) -> None:
    raw, preprocessed = root / "nnUNet_raw" / NAME, root / "nnUNet_preprocessed" / NAME
    raw.mkdir(parents=True)
    preprocessed.mkdir(parents=True)
    cases = {
        f"c{i}": {
            "images": [f"imagesTr/c{i}_{c:04d}.nii.gz" for c in range(channels)],
            "label": f"labelsTr/c{i}.nii.gz",
        }
        for i in range(len(spacings))
    }
    dataset = {
        "channel_names": {str(c): f"MRI{c}" for c in range(channels)},
        "labels": {"background": 0, **{f"c{i}": i for i in range(1, classes)}},
        "numTraining": len(spacings),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        "dataset": cases,
    }
    (raw / "dataset.json").write_text(json.dumps(dataset))
    stats = {
        "mean": 0.0,
        "median": 0.0,
        "std": 1.0,
        "min": -1.0,
        "max": 1.0,
        "percentile_99_5": 1.0,
        "percentile_00_5": -1.0,
    }
    fingerprint = {
        "spacings": spacings,
        "shapes_after_crop": shapes,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {str(c): stats for c in range(channels)},
    }
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))


class _Calibrations:
    """memprobe's need for a topology, calibrating it on trace the first time it is asked for."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.calibrated: list[str] = []

    def need(self, arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int) -> Any:
        from memprobe.api import estimate
        from memprobe.errors import DatabaseError, NoCalibrationError

        kwargs: dict[str, Any] = dict(
            optimizer="sgd",
            in_channels=in_channels,
            out_channels=out_channels,
            deep_supervision=True,
            step="nnunet",
            db=self.db,
            device="trace",
        )
        try:
            return estimate(arch, patch, batch, "fp16-mixed", **kwargs).need
        except (NoCalibrationError, DatabaseError):  # no calibration of it, or none at all yet
            self._calibrate(arch)
            return estimate(arch, patch, batch, "fp16-mixed", **kwargs).need

    def _calibrate(self, arch: str) -> None:
        from memprobe.archs.registry import resolve_arch, smallest_patch
        from memprobe.backends import get_backend
        from memprobe.calibration_run import calibrate
        from memprobe.config import make_step_config
        from memprobe.db import Database
        from memprobe.measurement_log import MeasurementLog

        print(f"calibrating {arch} on trace ...", file=sys.stderr, flush=True)
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
        self.calibrated.append(arch)


def _row(
    dataset: str, preset: str, who: str, plan: dict[str, Any], need: Any, proxy: float, reference: float
) -> dict[str, Any]:
    strides = ".".join("".join(map(str, s)) for s in plan["architecture"]["arch_kwargs"]["strides"][1:])
    return {
        "dataset": dataset,
        "preset": preset,
        "planner": who,
        "patch": "x".join(map(str, plan["patch_size"])),
        "batch": plan["batch_size"],
        "strides": strides,
        "allocated GiB": round(need.allocated_bytes / GIB, 2),
        "reserved GiB": round(need.reserved_bytes / GIB, 2),
        "whole need GiB": round(need.total_bytes / GIB, 2),
        "nnU-Net proxy / reference": round(proxy / reference, 3),
    }


def _plan(planner: Any) -> dict[str, Any]:
    with contextlib.redirect_stdout(sys.stderr):
        plans = planner.plan_experiment()
    return dict(plans["configurations"]["3d_fullres"])


def run(selected: Sequence[str]) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="memprobe-nnunet-"))
    os.environ.update(
        nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed")
    )
    os.environ.setdefault("nnUNet_results", str(work / "results"))
    from memprobe.nnunet.planner import measured_planner, planner_base, topology_arch

    calibrations = _Calibrations(os.environ.get("MEMPROBE_BENCH_DB", str(work / "calibrations.sqlite")))
    rows = []
    for label, (spacings, shapes, channels, classes) in DATASETS.items():
        if selected and not any(s in label for s in selected):
            continue
        for folder in ("nnUNet_raw", "nnUNet_preprocessed"):
            path = work / folder / NAME
            if path.exists():
                import shutil

                shutil.rmtree(path)
        _write_dataset(work, spacings, shapes, channels, classes)
        for preset, gigabytes in PRESETS.items():
            base = planner_base(preset)
            theirs = base(NAME, gigabytes)
            plan = _plan(theirs)
            rows.append(
                _row(
                    label,
                    preset,
                    "nnU-Net",
                    plan,
                    *_measures(plan, theirs, calibrations, channels, classes, topology_arch),
                )
            )
            ours = measured_planner(
                preset, NAME, gigabytes * 10**9, lambda *a: calibrations.need(*a).total_bytes
            )
            plan = _plan(ours)
            rows.append(
                _row(
                    label,
                    preset,
                    "memprobe",
                    plan,
                    *_measures(plan, theirs, calibrations, channels, classes, topology_arch),
                )
            )
    return rows


def _measures(
    plan: dict[str, Any],
    reference_planner: Any,
    calibrations: _Calibrations,
    channels: int,
    classes: int,
    topology_arch: Any,
) -> tuple[Any, float, float]:
    architecture = plan["architecture"]
    arch = topology_arch(architecture["network_class_name"], architecture["arch_kwargs"])
    need = calibrations.need(arch, plan["patch_size"], plan["batch_size"], channels, classes)
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
    return need, float(proxy) * plan["batch_size"] / 2, float(reference)


def write(rows: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nnunet_side_by_side.json").write_text(json.dumps(rows, indent=1))
    with open(RESULTS / "nnunet_side_by_side.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    notes = (
        "\nBudgets: nnU-Net's own targets (default and ResEnc M 8 GB, ResEnc L 24 GB); memprobe plans the same "
        "number of bytes. Peaks are memprobe's trace calibrations (nnU-Net's step, fp16-mixed, deep supervision): "
        "allocated tensors, the caching allocator's reserve, and the whole need with CUDA context, cuBLAS/cuDNN "
        "workspaces and the calibration's margin. The proxy is nnU-Net's feature-map estimate scaled to the batch, "
        "as a share of its reference (1.0 = its budget). nnU-Net's batch is at least 2 and covers at most 5% of the "
        f"dataset (the default preset). {len(rows)} plans.\n"
    )
    (RESULTS / "nnunet_side_by_side.md").write_text(
        "# nnU-Net's plans and memprobe's, same budget\n\n" + "\n".join(lines) + "\n" + notes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="*", default=[], help="substrings of the dataset labels to run")
    rows = run(parser.parse_args().datasets)
    write(rows)
    print((RESULTS / "nnunet_side_by_side.md").read_text())


if __name__ == "__main__":
    main()
