"""What ``memprobe report`` shows, computed once: the PNG and the HTML page both draw from it.

- the measured step's timeline: allocated (live tensor storage, as the probe counts it) and
  reserved (the allocator replay) after every allocation and free, with the op and module that
  allocated, the phases, the peak, and what is live there by module and by kind;
- the calibration: the points measured (the calibration's own fit and held-out points where the
  database holds them, and the report's), against the formula's curves, vs batch and vs voxels;
- the plan: every term of the whole need at the largest batch, against the budget, with sources;
- several architectures: memory per voxel and largest batch at one patch, from calibrations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprobe.backends.caching_allocator import FREE, CachingAllocatorModel, round_size
from memprobe.backends.traced_step import TracedStep
from memprobe.calibration_run import design_points, patch_unit
from memprobe.core.archs.registry import ArchSpec, resolve_arch
from memprobe.core.config import StepConfig
from memprobe.core.measurement import Measurement
from memprobe.formula.calibration import Calibration
from memprobe.planning.need import memory_need
from memprobe.reporting.memory_figure import MemoryReport, largest_batch

MAX_TIMELINE_POINTS = 20_000  # a step of MedNeXt 128^3 has fewer events; beyond, every k-th is kept
TOP_MODULES = 15


@dataclass(frozen=True)
class TimelinePoint:
    event: int  # position among the measured step's allocation events
    allocated_bytes: int
    reserved_bytes: int
    op: str
    module: str
    phase: str
    change_bytes: int  # + allocated, - freed by this event


@dataclass(frozen=True)
class StepTimeline:
    """One traced step, event by event."""

    label: str
    points: tuple[TimelinePoint, ...]
    phases: tuple[tuple[str, int, int], ...]  # (name, first event, last event)
    peak_allocated_bytes: int
    peak_event: int
    peak_reserved_bytes: int
    phase_peaks_bytes: dict[str, int]
    by_module: tuple[tuple[str, int], ...]  # live bytes at the peak, by where they were allocated
    by_kind: dict[str, int]  # parameters, gradients, optimizer state, inputs, activations, temporaries


@dataclass(frozen=True)
class CalibrationPoint:
    config: StepConfig
    role: str  # "fit", "held out" or "report"
    allocated_bytes: int
    reserved_bytes: int | None
    predicted_allocated_bytes: float
    predicted_reserved_bytes: float | None


@dataclass(frozen=True)
class CalibrationView:
    """The calibration's measured points against its curves."""

    device: str
    precision: str
    heldout_max_relative_error: float | None
    reserved_heldout_max_relative_error: float | None
    points: tuple[CalibrationPoint, ...]
    batch_curves: tuple[tuple[tuple[int, int, int], tuple[tuple[int, float, float | None], ...]], ...]
    voxel_curve: tuple[tuple[int, float, float | None], ...]  # (voxels, allocated, reserved) at batch 1
    largest: tuple[tuple[tuple[int, int, int], int], ...]  # (patch, largest batch)


@dataclass(frozen=True)
class PlanView:
    """The whole need of the planned configuration, term by term."""

    label: str
    budget_bytes: int
    usable_bytes: float
    terms: tuple[tuple[str, float, str], ...]  # (name, bytes, source)
    alternatives: tuple[tuple[str, str], ...] = ()  # (change, outcome)


@dataclass(frozen=True)
class ArchRow:
    arch: str
    bytes_per_voxel: float
    largest_batch: int
    calibration: str


@dataclass(frozen=True)
class ReportContent:
    """Everything the report shows; ``figure`` is what the PNG draws."""

    figure: MemoryReport
    timeline: StepTimeline | None
    calibration: CalibrationView
    plan: PlanView
    archs: tuple[ArchRow, ...] = field(default=())
    archs_patch: tuple[int, int, int] | None = None
    notes: tuple[str, ...] = field(default=())
    measured_steps: int = 0  # steps the report measured (the traced timeline aside) ...
    reused_steps: int = 0  # ... and those it read from the database

    def to_html(self, path: str | Path) -> Path:
        """Write the report as one self-contained HTML file (whole or not at all)."""
        from memprobe.reporting.html_page import write_html

        return write_html(self, path)


def step_timeline(trace: TracedStep, measurement: Measurement) -> StepTimeline:
    """The measured step of ``trace``, event by event, and what is live at its peak."""
    model = CachingAllocatorModel()
    live: dict[int, tuple[int, str]] = {}  # serial -> (charged bytes, where it was allocated)
    starts = dict(trace.phase_starts)
    modules = trace.modules or {}
    phase, allocated, peak, peak_event, peak_live = "before the step", 0, -1, 0, dict[int, tuple[int, str]]()
    points: list[TimelinePoint] = []
    for index, (serial, nbytes, op) in enumerate(trace.events):
        phase = starts.get(index, phase)
        if nbytes == FREE:
            charged, _ = live.pop(serial, (0, ""))
            allocated -= charged
            model.free(serial)
            change, where, op = -charged, "", "free"
        else:
            charged = round_size(nbytes) if nbytes > 0 else 0  # as the tracker charged it
            where = modules.get(serial) or ("parameters" if op == "parameter" else phase)
            live[serial] = (charged, where)
            allocated += charged
            model.malloc(serial, nbytes)
            change = charged
        if index < trace.measured_from:
            continue
        event = index - trace.measured_from
        points.append(TimelinePoint(event, allocated, model.reserved_bytes, op, where, phase, change))
        if allocated > peak:
            peak, peak_event, peak_live = allocated, event, dict(live)
    return StepTimeline(
        label=measurement.config.label(),
        points=_thin(points, peak_event),
        phases=_phase_spans(trace, len(trace.events) - trace.measured_from),
        peak_allocated_bytes=peak,
        peak_event=peak_event,
        peak_reserved_bytes=max((p.reserved_bytes for p in points), default=0),
        phase_peaks_bytes={k: v for k, v in measurement.phase_peaks_bytes.items() if "." not in k},
        by_module=_by_module(peak_live),
        by_kind=dict(measurement.breakdown_bytes),
    )


def _thin(points: list[TimelinePoint], peak_event: int) -> tuple[TimelinePoint, ...]:
    if len(points) <= MAX_TIMELINE_POINTS:
        return tuple(points)
    step = math.ceil(len(points) / MAX_TIMELINE_POINTS)
    return tuple(p for p in points if p.event % step == 0 or p.event == peak_event)


def _phase_spans(trace: TracedStep, count: int) -> tuple[tuple[str, int, int], ...]:
    starts = [
        (index - trace.measured_from, name)
        for index, name in trace.phase_starts
        if index >= trace.measured_from
    ]
    ends = [start for start, _ in starts[1:]] + [count]
    return tuple((name, start, end - 1) for (start, name), end in zip(starts, ends, strict=True))


def _by_module(live: dict[int, tuple[int, str]]) -> tuple[tuple[str, int], ...]:
    totals: dict[str, int] = {}
    for charged, where in live.values():
        key = ".".join(where.split(".")[:2])  # a block's submodules add up to the block
        totals[key] = totals.get(key, 0) + charged
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    rest = sum(size for _, size in ranked[TOP_MODULES:])
    return tuple(ranked[:TOP_MODULES]) + ((("other", rest),) if rest else ())


def calibration_view(
    figure: MemoryReport, stored: Sequence[Measurement], base: StepConfig
) -> CalibrationView:
    """The calibration's points (its design and held-out ones where stored, and the report's)."""
    calibration, spec = figure.calibration, figure.spec
    points_of = design_points(base, spec)
    roles = {config: "fit" for config in points_of.fit} | {config: "held out" for config in points_of.heldout}
    by_config = {m.config: m for m in stored if m.ok}
    chosen = [(by_config[c], role) for c, role in roles.items() if c in by_config]
    chosen += [
        (m, "report") for curve in figure.curves for m in curve.measured if m.ok and m.config not in roles
    ]
    points = tuple(_point(calibration, spec, m, role) for m, role in chosen)
    unit = patch_unit(spec)
    voxel_curve = tuple(
        (math.prod(patch), *_predict(calibration, spec, base.with_patch(patch).with_batch(1)))
        for patch in ((unit * k,) * 3 for k in range(2, 11))
    )
    batch_curves = tuple(
        (
            curve.patch,
            tuple(
                (b, *_predict(calibration, spec, base.with_patch(curve.patch).with_batch(b)))
                for b in range(1, max(curve.largest_batch, 2) + 3)
            ),
        )
        for curve in figure.curves
    )
    reserved_quality = calibration.reserved_quality
    return CalibrationView(
        device=calibration.device,
        precision=calibration.precision,
        heldout_max_relative_error=calibration.quality.heldout_max_relative_error,
        reserved_heldout_max_relative_error=reserved_quality.heldout_max_relative_error
        if reserved_quality
        else None,
        points=points,
        batch_curves=batch_curves,
        voxel_curve=voxel_curve,
        largest=tuple((curve.patch, curve.largest_batch) for curve in figure.curves),
    )


def _predict(calibration: Calibration, spec: ArchSpec, config: StepConfig) -> tuple[float, float | None]:
    shape = (spec, config.patch, config.batch, config.in_channels, config.out_channels)
    return calibration.predict_peak_bytes(*shape), calibration.predict_reserved_bytes(*shape)


def _point(calibration: Calibration, spec: ArchSpec, m: Measurement, role: str) -> CalibrationPoint:
    allocated, reserved = _predict(calibration, spec, m.config)
    return CalibrationPoint(
        m.config, role, m.peak_allocated_bytes or 0, m.peak_reserved_bytes, allocated, reserved
    )


def plan_view(figure: MemoryReport, base: StepConfig, alternatives: Sequence[Any] = ()) -> PlanView:
    """The whole need at the breakdown's configuration (the largest patch that fits, at its largest batch)."""
    from memprobe.reporting.memory_figure import breakdown_config

    config = breakdown_config(figure.curves, base)
    need = memory_need(figure.calibration, figure.spec, config.patch, config.batch, config.in_channels,
                       config.out_channels)  # fmt: skip
    return PlanView(
        label=config.label(),
        budget_bytes=figure.budget_bytes,
        usable_bytes=figure.usable_bytes,
        terms=tuple(need.terms()),
        alternatives=tuple(_alternative_row(a) for a in alternatives),
    )


def _alternative_row(alternative: Any) -> tuple[str, str]:
    plan = alternative.plan
    if plan is None:
        return alternative.change, f"none: {alternative.unavailable}"
    return alternative.change, f"batch {plan.batch} x {'x'.join(map(str, plan.patch))}"


def arch_rows(
    archs: Sequence[str], patch: tuple[int, int, int], usable_bytes: float,
    choose: Callable[[str], Calibration | None],
) -> tuple[ArchRow, ...]:  # fmt: skip
    """Per architecture: predicted bytes per voxel at batch 1 and the largest batch, from calibrations."""
    rows = []
    for arch in archs:
        calibration = choose(arch)
        if calibration is None:
            continue
        spec = resolve_arch(arch)
        config = StepConfig(arch=spec.name, patch=patch, batch=1)
        allocated, _ = _predict(calibration, spec, config)
        rows.append(ArchRow(spec.name, allocated / math.prod(patch), largest_batch(calibration, spec, config, usable_bytes),
                            f"{calibration.device} ({calibration.source})"))  # fmt: skip
    return tuple(rows)
