"""Accuracy: peaks of held-out configurations against memprobe's fit and three baselines.

Fit vs trace: each architecture's shipped trace calibration (fp32, AdamW, no deep supervision;
fitted here when none is shipped) predicts the held-out configurations of ``design_points``,
which this run traces afresh. That compares the fitted formula with the backend it was fitted
on, not with a GPU. The baselines: nnU-Net's feature-map volume with scale and intercept fitted
by least squares on the same design points ("fair fit"), the same volume scaled to one
measured reference step ("nnU-Net proxy"), and the seed planner's analytic formula. A second
table compares the reserve fit with the allocator replay's simulated reserve.

Fit vs GPU: committed GPU measurements in ``benchmarks/cuda_measurements/*.json`` (the output
of ``memprobe probe --device cuda --json``), when there are any, in a table of their own.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.baselines import (
    FeatureMapModel,
    fit_feature_map_model,
    nnunet_proxy_bytes,
    seed_estimate_bytes,
)
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
from memprobe.calibration_run import design_points
from memprobe.core.archs.registry import ArchSpec, get_arch
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.measurement import Measurement
from memprobe.formula.calibration import Calibration

CUDA_DIR = Path(__file__).resolve().parent / "cuda_measurements"
REFERENCE_PATCH = (128, 128, 128)  # the nnU-Net proxy's one reference step, at batch 1
# (key, label): memprobe first, then the baselines from the strongest to the weakest.
METHODS = (("memprobe", "memprobe"), ("fair", "fair fit"), ("proxy", "nnU-Net proxy"), ("seed", "seed"))
# Bounds set with the issue, before the held-out configurations were measured.
MEDIAN_BOUND, WORST_BOUND = 0.03, 0.05  # memprobe's absolute relative error, fit vs trace
SEED_MARGIN = 10.0  # memprobe's median error must be this many times smaller than the seed's
FAIR_MARGIN = 2.0  # ... and this many times smaller than the fair fit's
# Medians of a handful of rows (one network has 4 held-out configurations) are too coarse to
# compare two methods by a factor: below this many rows the margins are reported, not asserted.
MIN_ROWS_FOR_MARGINS = 12


@dataclass(frozen=True)
class Row:
    """One held-out step and what each method predicted for it."""

    spec: ArchSpec
    measurement: Measurement
    calibration: Calibration
    calibration_origin: str
    reference: Measurement
    fair: FeatureMapModel | None  # None: too few design points measured on this device

    @property
    def measured(self) -> float:
        return float(self.measurement.peak_allocated_bytes or 0)

    def estimates(self) -> dict[str, float | None]:
        c = self.measurement.config
        reference = self.reference.config
        return {
            "memprobe": self.calibration.predict_peak_bytes(
                self.spec, c.patch, c.batch, c.in_channels, c.out_channels
            ),
            "fair": self.fair.predict_bytes(self.spec, c.patch, c.batch) if self.fair else None,
            "proxy": nnunet_proxy_bytes(
                self.spec,
                c.patch,
                c.batch,
                reference_patch=reference.patch,
                reference_batch=reference.batch,
                reference_bytes=float(self.reference.peak_allocated_bytes or 0),
            ),
            "seed": seed_estimate_bytes(
                c.patch,
                c.batch,
                c.in_channels,
                c.out_channels,
                deep_supervision=c.deep_supervision,
                mixed_precision=c.precision.value != "fp32",
            ),
        }

    def errors(self) -> dict[str, float | None]:
        return {key: _error(value, self.measured) for key, value in self.estimates().items()}

    @property
    def reserved(self) -> float | None:
        return float(self.measurement.peak_reserved_bytes) if self.measurement.peak_reserved_bytes else None

    def reserved_estimate(self) -> float | None:
        c = self.measurement.config
        return self.calibration.predict_reserved_bytes(
            self.spec, c.patch, c.batch, c.in_channels, c.out_channels
        )

    def reserved_error(self) -> float | None:
        return _error(self.reserved_estimate(), self.reserved)


def _error(estimate: float | None, measured: float | None) -> float | None:
    return None if estimate is None or not measured else (estimate - measured) / measured


def _fair_model(spec: ArchSpec, measured: Sequence[Measurement]) -> FeatureMapModel | None:
    points = [(m.config.patch, m.config.batch, float(m.peak_allocated_bytes or 0)) for m in measured if m.ok]
    try:
        return fit_feature_map_model(spec, points)
    except ValueError:
        return None


def trace_rows(measurements: SessionMeasurements, calibrations: Calibrations) -> list[Row]:
    """Held-out steps of every selected architecture, with the baselines fitted on its design points."""
    rows = []
    for arch in selected_archs():
        spec = get_arch(arch)
        sourced = calibrations.get(arch)
        points = design_points(base_config(arch), spec)
        fair = _fair_model(spec, [measurements.calibration_step(config) for config in points.fit])
        reference = measurements.calibration_step(make_step_config(arch, REFERENCE_PATCH, 1))
        for config in points.heldout:
            measured = measurements.measure(config)
            if measured.ok:
                rows.append(Row(spec, measured, sourced.calibration, sourced.origin, reference, fair))
    return rows


def committed_cuda_measurements(directory: Path = CUDA_DIR) -> list[Measurement]:
    """GPU measurements committed as ``memprobe probe --json`` output (one object or a list per file)."""
    found = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        found += [Measurement.from_dict(item) for item in (data if isinstance(data, list) else [data])]
    return [m for m in found if m.ok and m.environment.device_kind == "cuda"]


def _shape(config: StepConfig) -> tuple[Any, ...]:
    return (config.patch, config.batch, config.in_channels, config.out_channels)


def cuda_rows(measurements: list[Measurement]) -> list[Row]:
    """Rows for committed GPU steps: that GPU's calibration, else the trace one (as planning would).

    The step the nnU-Net proxy is scaled to is left out: the proxy is exact there by construction;
    so are the design points, which the fair fit (and a GPU calibration) were fitted to.
    """
    from memprobe.core.errors import NoCalibrationError
    from memprobe.store.calibration_sources import choose_calibration, shipped_calibrations

    shipped = shipped_calibrations()
    rows = []
    for m in measurements:
        c = m.config
        spec = get_arch(c.arch)
        same_gpu = [
            o
            for o in measurements
            if o.config.arch == c.arch and o.environment.device_name == m.environment.device_name
        ]
        reference = next(
            (o for o in same_gpu if o.config.patch == REFERENCE_PATCH and o.config.batch == 1), same_gpu[0]
        )
        fit_shapes = {_shape(p) for p in design_points(c, spec).fit}
        if m is reference or _shape(c) in fit_shapes:
            continue
        try:
            choice = choose_calibration(shipped, c, m.environment.device_name, "trace")
        except NoCalibrationError:
            continue
        origin = "shipped" if choice.calibration.device != "trace" else "shipped trace (stand-in)"
        fair = _fair_model(spec, [o for o in same_gpu if _shape(o.config) in fit_shapes])
        rows.append(Row(spec, m, choice.calibration, origin, reference, fair))
    return rows


def _configuration(c: StepConfig) -> str:
    channels = "" if (c.in_channels, c.out_channels) == (1, 2) else f" c{c.in_channels}->{c.out_channels}"
    return f"{patch_text(c.patch)} b{c.batch}{channels}"


def _display(row: Row, measured_label: str) -> dict[str, str]:
    c = row.measurement.config
    estimates, errors = row.estimates(), row.errors()
    shown = {"arch": c.arch, "held-out configuration": _configuration(c), measured_label: gib(row.measured)}
    for key, label in METHODS:
        shown |= {f"{label} GiB": gib(estimates[key]), f"{label} err": percent(errors[key])}
    return shown


def _record(row: Row) -> dict[str, Any]:
    c = row.measurement.config
    estimates, errors = row.estimates(), row.errors()
    record: dict[str, Any] = {
        "arch": c.arch,
        "device": row.measurement.environment.calibration_device,
        "patch": patch_text(c.patch),
        "batch": c.batch,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "precision": c.precision.value,
        "measured_bytes": row.measurement.peak_allocated_bytes,
    }
    for key, _ in METHODS:
        record[f"{key}_bytes"] = None if estimates[key] is None else round(estimates[key] or 0)
        record[f"{key}_error"] = _rounded(errors[key])
    reserved = row.reserved_estimate()
    return record | {
        "reserved_bytes": row.measurement.peak_reserved_bytes,
        "reserved_source": row.measurement.reserved_source,
        "memprobe_reserved_bytes": None if reserved is None else round(reserved),
        "memprobe_reserved_error": _rounded(row.reserved_error()),
        "calibration": row.calibration_origin,
        "calibration_device": row.calibration.device,
        "proxy_reference": f"{patch_text(row.reference.config.patch)} b{row.reference.config.batch}",
        "fair_scale_bytes": row.fair.scale_bytes if row.fair else None,
        "fair_intercept_bytes": round(row.fair.intercept_bytes) if row.fair else None,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def summary(errors: dict[str, list[float | None]]) -> dict[str, dict[str, float | None]]:
    """Median and worst absolute relative error of each method (None where it made no estimate)."""
    stats: dict[str, dict[str, float | None]] = {}
    for key, values in errors.items():
        known = [abs(v) for v in values if v is not None]
        stats[key] = {
            "median": statistics.median(known) if known else None,
            "worst": max(known, default=None),
        }
    return stats


def method_summary(rows: list[Row]) -> dict[str, dict[str, float | None]]:
    return summary({key: [r.errors()[key] for r in rows] for key, _ in METHODS})


def _summary_rows(
    stats: dict[str, dict[str, float | None]], columns: dict[str, str], blank: Sequence[str]
) -> list[dict[str, str]]:
    return [
        {
            "arch": f"**{kind} abs error**",
            **dict.fromkeys(blank, ""),
            **{column: percent(stats[key][kind], sign="") for key, column in columns.items()},
        }
        for kind in ("median", "worst")
    ]


def _table(rows: list[Row], measured_label: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    stats = method_summary(rows)
    display = [_display(r, measured_label) for r in rows]
    blank = [k for k in display[0] if k != "arch" and not k.endswith(" err")] if display else []
    display += _summary_rows(stats, {key: f"{label} err" for key, label in METHODS}, blank)
    return display, stats


def _method_notes(measured: str) -> list[str]:
    return [
        f"err = (estimate - measured) / measured; measured = {measured}",
        "memprobe: the architecture's shipped calibration, or one fitted in this run where noted below "
        "(fitted on the design points: other sizes and channel counts; these configurations share no "
        "patch with them).",
        "fair fit: nnU-Net's feature-map volume (sum over stages of voxels x channels, times batch) as "
        "intercept + scale x volume, both fitted by least squares (weighted by 1/peak, as memprobe's "
        "fit is) on the design points memprobe fits to, measured on the same device.",
        f"nnU-Net proxy: the same volume scaled so that it equals the measured {patch_text(REFERENCE_PATCH)} "
        "batch-1 step of the same architecture (one reference step, as nnU-Net plans).",
        "seed: the replaced planner's estimate_gpu_memory_required (mixed_precision=False), "
        "benchmarks.baselines.seed_estimate_bytes.",
    ]


def _fitted_here_note(rows: list[Row]) -> list[str]:
    fitted_here = sorted({r.spec.name for r in rows if r.calibration_origin != "shipped"})
    return [f"no calibration shipped, so fitted in this run: {', '.join(fitted_here)}"] if fitted_here else []


def test_accuracy_table(measurements: SessionMeasurements, calibrations: Calibrations) -> None:
    rows = trace_rows(measurements, calibrations)
    display, stats = _table(rows, "traced GiB")
    cuda = cuda_rows(committed_cuda_measurements())
    notes = _method_notes(
        "peak allocated bytes of a full fp32 training step (forward, Dice+CE, backward, AdamW step), "
        "freshly traced in this run: the fit against the backend it was fitted on, not against a GPU."
    )
    notes += [
        "Held-out configurations (memprobe.calibration_run.design_points): an anisotropic patch, a cube "
        "between design sizes at batch 3, a 3x5x7-unit patch with other channel counts, and a patch "
        "beyond the fitted range; chosen before any result was seen.",
        f"Asserted: memprobe's median <= {MEDIAN_BOUND:.0%} and worst <= {WORST_BOUND:.0%}; its median "
        f"{FAIR_MARGIN:g}x below the fair fit's and {SEED_MARGIN:g}x below the seed's, its worst below "
        "the fair fit's.",
        *(
            [
                f"Only {len(rows)} rows (fewer than {MIN_ROWS_FOR_MARGINS}): the margins over the fair fit and the "
                "seed are reported, not asserted; the bounds on memprobe's own error are."
            ]
            if len(rows) < MIN_ROWS_FOR_MARGINS
            else []
        ),
        "Fit vs GPU: "
        + (
            "in its own table (accuracy_gpu)."
            if cuda
            else "no GPU rows yet (commit `memprobe probe --device cuda --json` output to "
            "benchmarks/cuda_measurements/)."
        ),
        *_fitted_here_note(rows),
        measurements.store_note(),
    ]
    title = "Accuracy, fit vs trace: peak allocated memory of held-out configurations"
    write_results(
        ResultTable("accuracy", title, display, [_record(r) for r in rows], tuple(notes), {"summary": stats})
    )
    if cuda:
        _write_gpu_table(cuda)
    _assert_bounds(stats, len(rows))


def _assert_bounds(stats: dict[str, dict[str, float | None]], rows: int) -> None:
    memprobe, fair, seed = stats["memprobe"], stats["fair"], stats["seed"]
    median, worst = memprobe["median"] or 0.0, memprobe["worst"] or 0.0
    assert median <= MEDIAN_BOUND, f"memprobe's median error {median:.2%} is above {MEDIAN_BOUND:.0%}"
    assert worst <= WORST_BOUND, f"memprobe's worst error {worst:.2%} is above {WORST_BOUND:.0%}"
    if rows < MIN_ROWS_FOR_MARGINS:
        return  # the table says the margins were not asserted (see its notes)
    assert median * SEED_MARGIN <= (seed["median"] or 0.0), f"not {SEED_MARGIN:g}x below the seed's median"
    assert fair["median"] is not None and fair["worst"] is not None
    assert median * FAIR_MARGIN <= fair["median"], (
        f"memprobe's median error {median:.2%} is not {FAIR_MARGIN:g}x below the fair fit's "
        f"{fair['median']:.2%}"
    )
    assert worst <= fair["worst"], f"memprobe's worst {worst:.2%} is above the fair fit's {fair['worst']:.2%}"


def _write_gpu_table(rows: list[Row]) -> None:
    display, stats = _table(rows, "measured GiB")
    devices = [r.measurement.environment.device_name for r in rows]
    display = [
        {"arch": shown["arch"], "device": device, **shown}
        for shown, device in zip(display, devices + [""] * 2, strict=True)
    ]
    notes = _method_notes("peak allocated bytes (max_memory_allocated) of a training step on the GPU.")
    notes[1] = (
        "memprobe: the GPU's own calibration where one is shipped, else the trace calibration "
        "(as planning would choose); the design points and the proxy's reference step are left out."
    )
    notes.append("Reported, not asserted: GPU rows depend on the GPUs measurements were committed from.")
    title = "Accuracy, fit vs GPU: peak allocated memory of committed GPU steps"
    write_results(
        ResultTable(
            "accuracy_gpu", title, display, [_record(r) for r in rows], tuple(notes), {"summary": stats}
        )
    )


def _reserved_display(row: Row) -> dict[str, str]:
    c = row.measurement.config
    return {
        "arch": c.arch,
        "held-out configuration": _configuration(c),
        "simulated reserve GiB": gib(row.reserved),
        "memprobe GiB": gib(row.reserved_estimate()),
        "memprobe err": percent(row.reserved_error()),
        "allocated fit err": percent(row.errors()["memprobe"]),
    }


def test_reserved_accuracy_table(measurements: SessionMeasurements, calibrations: Calibrations) -> None:
    rows = trace_rows(measurements, calibrations)
    assert all(r.measurement.reserved_source == "simulated" for r in rows)
    stats = summary({"memprobe": [r.reserved_error() for r in rows]})
    columns = {"memprobe": "memprobe err"}
    blank = ("held-out configuration", "simulated reserve GiB", "memprobe GiB", "allocated fit err")
    display = [_reserved_display(r) for r in rows] + _summary_rows(stats, columns, blank)
    without = sorted({r.spec.name for r in rows if r.reserved_estimate() is None})
    notes = [
        "err = (estimate - simulated) / simulated; simulated = peak reserved bytes of the traced step's "
        "allocations replayed through the model of PyTorch's caching allocator (reserved_source "
        "'simulated'): the reserve fit against the replay it was fitted on, not against a GPU.",
        "memprobe: Calibration.predict_reserved_bytes of the same calibration as the allocated table; "
        "allocated fit err repeats that table's memprobe column for comparison.",
        "Reported, not asserted: a 3% median / 5% worst bound did not hold comfortably on the "
        "development runs (SegResNet's small steps are off by up to 18%; MedNeXt's within 1%).",
        *_fitted_here_note(rows),
    ]
    if without:
        notes.append(f"no reserve fit in the calibration ('-'): {', '.join(without)}")
    title = "Accuracy, fit vs trace (simulated reserve): peak reserved memory of held-out configurations"
    records = [_record(r) for r in rows]
    write_results(ResultTable("accuracy_reserved", title, display, records, tuple(notes), {"summary": stats}))
