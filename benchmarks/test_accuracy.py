"""Accuracy: measured peaks of held-out configurations against memprobe and two baselines.

Each architecture's shipped trace calibration (fp32, AdamW, no deep supervision; fitted here
when none is shipped) predicts the held-out configurations of ``design_points``, which this
run measures afresh on the trace backend. The baselines are the seed planner's analytic
formula and nnU-Net's feature-map proxy scaled to one measured reference step. CUDA rows
come from committed GPU measurements in ``benchmarks/cuda_measurements/*.json`` (the
output of ``memprobe probe --device cuda --json``), when there are any.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Calibrations,
    ResultTable,
    SessionMeasurements,
    base_config,
    gib,
    patch_text,
    percent,
    selected_archs,
    write_results,
)
from memprobe.archs.registry import ArchSpec, get_arch
from memprobe.baselines import nnunet_proxy_bytes, seed_estimate_bytes
from memprobe.calibration import Calibration
from memprobe.calibrator import design_points
from memprobe.config import make_step_config
from memprobe.measurement import Measurement

CUDA_DIR = Path(__file__).resolve().parent / "cuda_measurements"
REFERENCE_PATCH = (128, 128, 128)  # the nnU-Net proxy's one reference step, at batch 1
METHODS = (("memprobe", "memprobe"), ("seed formula", "seed"), ("nnU-Net proxy", "nnunet"))
REQUIRED_IMPROVEMENT = 10.0  # memprobe's median error must be this many times smaller than the seed's


@dataclass(frozen=True)
class Row:
    spec: ArchSpec
    measurement: Measurement
    calibration: Calibration
    calibration_origin: str
    reference: Measurement

    @property
    def measured(self) -> float:
        return float(self.measurement.peak_allocated_bytes or 0)

    def estimates(self) -> dict[str, float]:
        c = self.measurement.config
        reference = self.reference.config
        return {
            "memprobe": self.calibration.predict_peak_bytes(
                self.spec, c.patch, c.batch, c.in_channels, c.out_channels
            ),
            "seed": seed_estimate_bytes(
                c.patch,
                c.batch,
                c.in_channels,
                c.out_channels,
                deep_supervision=c.deep_supervision,
                mixed_precision=c.precision.value != "fp32",
            ),
            "nnunet": nnunet_proxy_bytes(
                self.spec,
                c.patch,
                c.batch,
                reference_patch=reference.patch,
                reference_batch=reference.batch,
                reference_bytes=float(self.reference.peak_allocated_bytes or 0),
            ),
        }

    def errors(self) -> dict[str, float]:
        return {name: (value - self.measured) / self.measured for name, value in self.estimates().items()}


def trace_rows(measurements: SessionMeasurements, calibrations: Calibrations) -> list[Row]:
    rows = []
    for arch in selected_archs():
        spec = get_arch(arch)
        sourced = calibrations.get(arch)
        reference = measurements.measure(make_step_config(arch, REFERENCE_PATCH, 1))
        for config in design_points(base_config(arch), spec).heldout:
            measured = measurements.measure(config)
            if measured.ok:
                rows.append(Row(spec, measured, sourced.calibration, sourced.origin, reference))
    return rows


def committed_cuda_measurements(directory: Path = CUDA_DIR) -> list[Measurement]:
    """GPU measurements committed as ``memprobe probe --json`` output (one object or a list per file)."""
    found = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        found += [Measurement.from_dict(item) for item in (data if isinstance(data, list) else [data])]
    return [m for m in found if m.ok and m.environment.device_kind == "cuda"]


def cuda_rows(measurements: list[Measurement]) -> list[Row]:
    """Rows for committed GPU steps: that GPU's calibration, else the trace one (as planning would).

    The step the nnU-Net proxy is scaled to is left out: the proxy is exact there by construction.
    """
    from memprobe.errors import NoCalibrationError
    from memprobe.sources import choose_calibration, shipped_calibrations

    shipped = shipped_calibrations()
    rows = []
    for m in measurements:
        c = m.config
        same_gpu = [
            o
            for o in measurements
            if o.config.arch == c.arch and o.environment.device_name == m.environment.device_name
        ]
        reference = next(
            (o for o in same_gpu if o.config.patch == REFERENCE_PATCH and o.config.batch == 1), same_gpu[0]
        )
        if m is reference:
            continue
        try:
            choice = choose_calibration(
                shipped,
                c.arch,
                c.precision.value,
                c.optimizer.value,
                c.deep_supervision,
                m.environment.device_name,
                "trace",
            )
        except NoCalibrationError:
            continue
        origin = "shipped" if choice.calibration.device != "trace" else "shipped trace (stand-in)"
        rows.append(Row(get_arch(c.arch), m, choice.calibration, origin, reference))
    return rows


def _display(row: Row) -> dict[str, str]:
    c = row.measurement.config
    estimates, errors = row.estimates(), row.errors()
    channels = "" if (c.in_channels, c.out_channels) == (1, 2) else f" c{c.in_channels}->{c.out_channels}"
    return {
        "arch": c.arch,
        "device": row.measurement.environment.calibration_device,
        "held-out configuration": f"{patch_text(c.patch)} b{c.batch}{channels}",
        "measured GiB": gib(row.measured),
        "memprobe GiB": gib(estimates["memprobe"]),
        "memprobe err": percent(errors["memprobe"]),
        "seed GiB": gib(estimates["seed"]),
        "seed err": percent(errors["seed"]),
        "nnU-Net proxy GiB": gib(estimates["nnunet"]),
        "proxy err": percent(errors["nnunet"]),
    }


def _record(row: Row) -> dict[str, Any]:
    c = row.measurement.config
    estimates, errors = row.estimates(), row.errors()
    return {
        "arch": c.arch,
        "device": row.measurement.environment.calibration_device,
        "patch": patch_text(c.patch),
        "batch": c.batch,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "precision": c.precision.value,
        "measured_bytes": row.measurement.peak_allocated_bytes,
        "memprobe_bytes": round(estimates["memprobe"]),
        "seed_bytes": round(estimates["seed"]),
        "nnunet_proxy_bytes": round(estimates["nnunet"]),
        **{
            f"{name}_error": float(f"{errors[key]:.4g}")
            for name, key in (("memprobe", "memprobe"), ("seed", "seed"), ("nnunet_proxy", "nnunet"))
        },
        "calibration": row.calibration_origin,
        "calibration_device": row.calibration.device,
        "proxy_reference": f"{patch_text(row.reference.config.patch)} b{row.reference.config.batch}",
    }


def summary(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Median and worst absolute relative error of each method."""
    absolute = {key: [abs(r.errors()[key]) for r in rows] for _, key in METHODS}
    return {
        key: {"median": statistics.median(values), "worst": max(values)} for key, values in absolute.items()
    }


def _summary_rows(label: str, stats: dict[str, dict[str, float]]) -> list[dict[str, str]]:
    columns = {"memprobe": "memprobe err", "seed": "seed err", "nnunet": "proxy err"}
    blank = dict.fromkeys(
        ("held-out configuration", "measured GiB", "memprobe GiB", "seed GiB", "nnU-Net proxy GiB"), ""
    )
    return [
        {
            "arch": f"**{kind} abs error**",
            "device": label,
            **blank,
            **{columns[key]: percent(stats[key][kind], sign="") for key in columns},
        }
        for kind in ("median", "worst")
    ]


def test_accuracy_table(measurements: SessionMeasurements, calibrations: Calibrations) -> None:
    trace = trace_rows(measurements, calibrations)
    cuda = cuda_rows(committed_cuda_measurements())
    stats = {"trace": summary(trace)} | ({"cuda": summary(cuda)} if cuda else {})
    display = [_display(r) for r in trace + cuda]
    for device, device_stats in stats.items():
        display += _summary_rows(device, device_stats)
    fitted_here = sorted({r.spec.name for r in trace if r.calibration_origin != "shipped"})
    notes = [
        "err = (estimate - measured) / measured; measured = peak allocated bytes of a full fp32 training "
        "step (forward, Dice+CE, backward, AdamW step), freshly traced in this run.",
        "memprobe: the shipped trace calibration (fitted on other sizes and channel counts; these "
        "configurations are held out from the fit).",
        "seed formula: the replaced planner's estimate_gpu_memory_required (mixed_precision=False), "
        "memprobe.baselines.seed_estimate_bytes.",
        f"nnU-Net proxy: feature-map volume (sum over stages of voxels x channels, times batch), scaled so "
        f"that it equals the measured {patch_text(REFERENCE_PATCH)} batch-1 step of the same architecture.",
        "CUDA rows: "
        + (
            "committed GPU measurements in benchmarks/cuda_measurements/."
            if cuda
            else "none yet (commit `memprobe probe --device cuda --json` output to "
            "benchmarks/cuda_measurements/)."
        ),
    ]
    if fitted_here:
        notes.append(f"no calibration shipped, so fitted in this run: {', '.join(fitted_here)}")
    write_results(
        ResultTable(
            "accuracy",
            "Accuracy: peak memory of held-out configurations",
            display,
            [_record(r) for r in trace + cuda],
            tuple(notes),
            {"summary": stats},
        )
    )
    memprobe, seed = stats["trace"]["memprobe"]["median"], stats["trace"]["seed"]["median"]
    assert memprobe * REQUIRED_IMPROVEMENT <= seed, (
        f"memprobe's median error {memprobe:.2%} is not {REQUIRED_IMPROVEMENT:g}x smaller than "
        f"the seed's {seed:.2%}"
    )
