"""The ``memprobe report`` figure: peak memory against batch size, and where the memory goes.

:func:`memory_report` measures a few (patch, batch) points through a MeasurementLog (stored
ones are reused), predicts each patch's line with a calibration and traces one step with the
peak broken down; :func:`draw_report` renders that as a PNG with matplotlib's Agg canvas.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from memprobe.backends.recorder import MeasurementLog
from memprobe.calibration_run import patch_unit
from memprobe.core.archs.registry import ArchSpec
from memprobe.core.bisection import largest_at_most
from memprobe.core.checks import MAX_BATCH_SIZE
from memprobe.core.config import StepConfig
from memprobe.core.errors import InvalidInputError, NoCalibrationError
from memprobe.core.measurement import Measurement
from memprobe.core.output_paths import write_atomically
from memprobe.core.units import GIB, MIB, format_shape
from memprobe.formula.calibration import Calibration
from memprobe.planning.need import memory_need
from memprobe.planning.size_search import DEFAULT_SAFETY, largest_batch_rule

if TYPE_CHECKING:
    from memprobe.store.database import Database

MEASURED_BATCHES = (1, 2)
BREAKDOWN_ORDER = ("parameters", "gradients", "optimizer_state", "inputs", "activations", "temporaries")
_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_PART_COLOURS = {
    "parameters": "tab:blue",
    "gradients": "tab:cyan",
    "optimizer_state": "tab:purple",
    "inputs": "tab:olive",
    "activations": "tab:orange",
    "temporaries": "tab:gray",
}
_LINEAR_UP_TO = 24  # batches shown on a linear axis; beyond, log scale


@dataclass(frozen=True)
class PatchCurve:
    """One patch: its measured steps, the formula's line and the largest batch that fits."""

    patch: tuple[int, int, int]
    measured: tuple[Measurement, ...]
    predicted: tuple[tuple[int, float], ...]  # (batch, predicted peak bytes)
    largest_batch: int  # 0 when not even batch 1 fits
    largest_peak_bytes: float


@dataclass(frozen=True)
class MemoryReport:
    """Everything the figure shows."""

    spec: ArchSpec
    calibration: Calibration
    budget_bytes: int
    safety: float
    curves: tuple[PatchCurve, ...]
    breakdown: Measurement | None = None

    @property
    def usable_bytes(self) -> float:
        return self.budget_bytes * self.safety


def default_patches(spec: ArchSpec) -> list[tuple[int, int, int]]:
    """Isotropic patches of 4, 6 and 8 units, as calibrated (64, 96, 128 for a divisor of 16)."""
    unit = patch_unit(spec)
    return [(unit * k,) * 3 for k in (4, 6, 8)]


def find_or_calibrate(log: MeasurementLog, base: StepConfig, budget_bytes: int) -> Calibration:
    """The calibration for ``base`` on the log's device (the database's, else shipped), else a new one."""
    from memprobe.calibration_run import calibrate
    from memprobe.store.calibration_sources import choose_calibration, shipped_calibrations

    device = log.backend.environment().calibration_device
    own = cast("Database", log.db).calibrations() if log.db is not None else []
    keys = {c.key for c in own}
    candidates = own + [c for c in shipped_calibrations() if c.key not in keys]
    try:
        return choose_calibration(candidates, base, device, fallback_device=None).calibration
    except NoCalibrationError:
        return calibrate(log, base, budget_bytes, search=False).calibration


def largest_batch(calibration: Calibration, spec: ArchSpec, config: StepConfig, usable_bytes: float) -> int:
    """The largest batch whose whole need is within ``usable_bytes`` (0 if none): the rule of ``suggest``.

    The figure's lines are the allocated peak the formula predicts (what is measured); the star
    sits on the line at the batch whose need (reserve, context, workspaces, margin added) fits.
    """
    need = lambda b: (
        memory_need(calibration, spec, config.patch, b, config.in_channels, config.out_channels).total_bytes
    )
    if need(1) > usable_bytes:
        return 0
    return largest_at_most(need, usable_bytes, 1, MAX_BATCH_SIZE)


def patch_curve(
    log: MeasurementLog,
    calibration: Calibration,
    spec: ArchSpec,
    config: StepConfig,
    largest: int,
    shown: int,
) -> PatchCurve:
    """Measure batches 1, 2 and the predicted largest; predict the line up to batch ``shown``."""
    batches = sorted({*MEASURED_BATCHES, *([largest] if largest else [])})
    measured = tuple(log.measure(config.with_batch(b)) for b in batches)
    predict = lambda b: calibration.predict_peak_bytes(
        spec, config.patch, b, config.in_channels, config.out_channels
    )
    predicted = tuple((b, predict(b)) for b in range(1, max(shown, *batches) + 1))
    return PatchCurve(config.patch, measured, predicted, largest, predict(max(largest, 1)))


def breakdown_config(curves: Sequence[PatchCurve], base: StepConfig) -> StepConfig:
    """The largest patch that fits at some batch, at its largest batch (else the smallest at batch 1)."""
    fitting = [c for c in curves if c.largest_batch]
    if not fitting:
        return base.with_patch(min(curves, key=lambda c: math.prod(c.patch)).patch).with_batch(1)
    chosen = max(fitting, key=lambda c: (math.prod(c.patch), c.largest_batch))
    return base.with_patch(chosen.patch).with_batch(chosen.largest_batch)


def memory_report(
    log: MeasurementLog,
    calibration: Calibration,
    spec: ArchSpec,
    base: StepConfig,
    patches: Sequence[tuple[int, int, int]],
    budget_bytes: int,
    safety: float = DEFAULT_SAFETY,
    breakdown_measure: Callable[[StepConfig], Measurement] | None = None,
) -> MemoryReport:
    """Measure and predict each patch's curve; break the peak down at one configuration.

    ``breakdown_measure`` runs a step with the peak broken down (a ``TraceBackend(breakdown=True)``'s
    ``measure``); without it the figure has no breakdown panel.
    """
    largest = [largest_batch(calibration, spec, base.with_patch(p), budget_bytes * safety) for p in patches]
    shown = max(*largest, 2) + 2
    curves = tuple(
        patch_curve(log, calibration, spec, base.with_patch(p), n, shown)
        for p, n in zip(patches, largest, strict=True)
    )
    breakdown = breakdown_measure(breakdown_config(curves, base)) if breakdown_measure else None
    return MemoryReport(spec, calibration, budget_bytes, safety, curves, breakdown)


def _patch_label(patch: Sequence[int]) -> str:
    return f"{patch[0]}³" if len(set(patch)) == 1 else format_shape(patch)


def draw_report(report: MemoryReport, out: str | Path, *, dpi: int = 120) -> Path:
    """Render the report to a PNG at ``out`` and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    figure = Figure(figsize=(13, 5.8), layout=ConstrainedLayoutEngine(rect=(0, 0.06, 1, 0.94)))
    FigureCanvasAgg(figure)
    if report.breakdown is not None:
        left, right = figure.subplots(1, 2, width_ratios=(1.45, 1))
        _draw_breakdown(right, report.breakdown)
    else:
        left = figure.subplots()
    _draw_curves(left, report)
    c = report.calibration
    figure.suptitle(
        f"memprobe report: {report.spec.name}, {report.spec.description}; {c.precision}, "
        f"{c.optimizer}, measured on {c.device}",
        fontsize=12,
    )
    figure.text(0.01, 0.008, _caption(report), fontsize=8, color="0.3")
    path = Path(out)
    image = io.BytesIO()
    figure.savefig(image, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    try:
        write_atomically(path, image.getvalue())  # a full disk leaves no half-written image
    except OSError as error:
        raise InvalidInputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _caption(report: MemoryReport) -> str:
    c = report.calibration
    error = c.quality.heldout_median_relative_error
    origin = "shipped with memprobe" if c.source == "shipped" else "from your database"
    held_out = f", held-out median error {100 * error:.2f}%" if error is not None else ""
    return (
        "Peak allocated memory of a full training step (forward, Dice+CE loss, backward, optimizer "
        "step); the breakdown is traced on fake tensors.\n"
        f"Lines: the calibrated formula ({c.device} calibration {origin}{held_out}); dots: measured "
        f"steps; stars: the {largest_batch_rule(report.budget_bytes, report.safety)}."
    )


def _draw_curves(ax: Any, report: MemoryReport) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    scale, unit = _unit(report.budget_bytes)
    handles = []
    for index, curve in enumerate(report.curves):
        colour = _COLOURS[index % len(_COLOURS)]
        batches = [b for b, _ in curve.predicted]
        ax.plot(batches, [p / scale for _, p in curve.predicted], color=colour, lw=1.8)
        if curve.largest_batch:
            star = (curve.largest_batch, curve.largest_peak_bytes / scale)
            ax.scatter(*star, marker="*", s=300, color=colour, edgecolor="black", linewidth=0.8, zorder=3)
            near_right = curve.largest_batch > 0.6 * curve.predicted[-1][0]
            ax.annotate(
                f"batch {curve.largest_batch}",
                star,
                textcoords="offset points",
                xytext=(-12, 6) if near_right else (10, -4),
                ha="right" if near_right else "left",
                va="bottom" if near_right else "top",
                fontsize=9,
                color=colour,
                weight="bold",
            )
        ok = [m for m in curve.measured if m.ok]
        ax.scatter(
            [m.config.batch for m in ok],
            [(m.peak_allocated_bytes or 0) / scale for m in ok],
            color=colour,
            s=30,
            zorder=4,
            edgecolor="black",
            linewidth=0.6,
        )
        handles.append(Line2D([], [], color=colour, lw=1.8, label=_patch_label(curve.patch)))
    budget, usable = report.budget_bytes / scale, report.usable_bytes / scale
    ax.axhline(budget, color="tab:red", ls="--", lw=1.5)
    handles.append(Line2D([], [], color="tab:red", ls="--", label=f"budget {budget:g} {unit}"))
    if report.safety < 1:
        ax.axhline(usable, color="tab:orange", ls=":", lw=1.5)
        label = f"usable: {report.safety:.0%} of budget"
        handles.append(Line2D([], [], color="tab:orange", ls=":", label=label))
    marker: dict[str, Any] = dict(color="0.3", ls="", markeredgecolor="black")
    handles += [
        Line2D([], [], color="0.3", lw=1.8, label="calibrated formula"),
        Line2D([], [], marker="o", label="measured step", **marker),
        Line2D([], [], marker="*", ms=13, label="largest batch", **marker),
    ]
    measured_top = max((m.peak_allocated_bytes or 0) / scale for c in report.curves for m in c.measured)
    top = max(budget * 1.3, measured_top * 1.08)
    shown = max(b for c in report.curves for b, _ in c.predicted)
    if shown > _LINEAR_UP_TO:  # a wide batch range: log-log keeps every patch readable, lines stay straight
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlim(0.85, shown * 1.15)
        ax.set_ylim(min(p for c in report.curves for _, p in c.predicted) / scale / 1.3, top)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        ax.set_xlim(0.5, shown + 0.5)
        ax.set_ylim(0, top)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("batch size" + (" (log scale)" if shown > _LINEAR_UP_TO else ""))
    ax.set_ylabel(f"peak allocated memory ({unit}" + (", log scale)" if shown > _LINEAR_UP_TO else ")"))
    ax.set_title("Peak memory against batch size, per patch")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, ncols=2, loc="lower right")


def _draw_breakdown(ax: Any, measurement: Measurement) -> None:
    parts = measurement.breakdown_bytes
    scale, unit = _unit(measurement.peak_allocated_bytes or 0)
    names = [n for n in BREAKDOWN_ORDER if n in parts] + [n for n in parts if n not in BREAKDOWN_ORDER]
    values = [parts[n] / scale for n in names]
    total = sum(parts.values()) or 1
    positions = list(range(len(names)))[::-1]
    ax.barh(positions, values, color=[_PART_COLOURS.get(n, "tab:gray") for n in names])
    for y, name, value in zip(positions, names, values, strict=True):
        ax.text(value, y, f"  {value:.2f} {unit} ({parts[name] / total:.0%})", va="center", fontsize=9)
    ax.set_yticks(positions, [n.replace("_", " ") for n in names])
    ax.set_xlim(0, max(values, default=1) * 1.45)
    ax.set_xlabel(f"{unit} live at the peak")
    config = measurement.config
    ax.set_title(
        f"Where the peak goes: {_patch_label(config.patch)} batch {config.batch}, "
        f"{(measurement.peak_allocated_bytes or 0) / scale:.2f} {unit}"
    )
    ax.grid(axis="x", alpha=0.3)


def _unit(size_bytes: float) -> tuple[int, str]:
    """GiB for sizes of a few GiB and more, MiB below."""
    return (GIB, "GiB") if size_bytes >= 2 * GIB else (MIB, "MiB")
