"""``memprobe.report()``: measure, predict and trace what ``memprobe report`` shows, as one value.

The command draws the result as a PNG (``memory_figure.draw_report``) or an HTML page
(``ReportContent.to_html``); the computation lives here, once, for both and for Python users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memprobe.core.config import Setup
from memprobe.core.measurement import Measurement
from memprobe.core.units import DEFAULT_GPU_MEM_BYTES
from memprobe.formula.calibration import Calibration
from memprobe.planning.size_search import DEFAULT_SAFETY
from memprobe.reporting.content import ReportContent, arch_rows, calibration_view, plan_view, step_timeline

Progress = Callable[[str, bool], None]  # (item, done): done False announces what starts


def report(
    arch: str | Setup = "mednext",
    *,
    patches: Sequence[Sequence[int]] = (),
    gpu_mem: int | str = DEFAULT_GPU_MEM_BYTES,
    safety: float = DEFAULT_SAFETY,
    precision: str | None = None,
    device: str = "trace",
    db: str | Path | None = None,
    compare: Sequence[str] = (),
    options: bool = False,
    progress: Progress | None = None,
    **setup: Any,
) -> ReportContent:
    """Measure ``arch`` at a few patches, trace one step event by event, and plan it.

    Args:
        arch: the architecture shown in detail, or a Setup.
        patches: patches to measure (default cubes of 4, 6 and 8 units of its divisor).
        gpu_mem: the memory planned for, as in ``suggest`` (``budget`` is its old name).
        safety: the share of it the whole need may use, as in ``suggest``.
        precision: default bf16-mixed, fp16-mixed on a GPU without bf16 (the default rule).
        device: the backend that measures (trace, cpu or cuda); the step timeline is always traced.
        db: the benchmark database (stored steps are reused, new ones stored).
        compare: more architectures to set side by side (memory per voxel, largest batch), from calibrations.
        options: also plan the alternatives ``suggest --options`` lists.
        progress: called with each step measured.
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``, ``world_size``).

    Returns:
        A ``ReportContent``: ``.figure`` for the PNG, ``.to_html(path)`` for the page.
    """
    from memprobe.backends import get_backend
    from memprobe.backends.recorder import MeasurementLog
    from memprobe.backends.trace_backend import TraceBackend
    from memprobe.core.archs.registry import resolve_arch, smallest_patch_size
    from memprobe.core.checks import renamed_argument
    from memprobe.core.config import validate_patch
    from memprobe.core.gpus import measuring_gpu
    from memprobe.core.units import parse_bytes
    from memprobe.reporting.memory_figure import default_patches, find_or_calibrate, memory_report
    from memprobe.store.database import Database

    gpu_mem = renamed_argument(setup, "budget", "gpu_mem", gpu_mem, DEFAULT_GPU_MEM_BYTES)
    budget_bytes = parse_bytes(gpu_mem)
    given = {} if precision is None and isinstance(arch, Setup) else {"precision": precision}
    chosen_setup = Setup.of(arch, gpu=measuring_gpu(device), **{**setup, **given})
    spec = resolve_arch(chosen_setup.arch)
    base = chosen_setup.at((smallest_patch_size(spec),) * 3, 1)
    precision = chosen_setup.precision.value
    chosen = [validate_patch(p, spec) for p in patches] or default_patches(spec)
    backend = get_backend(device, budget_bytes=budget_bytes)
    tracer = TraceBackend(breakdown=True)
    tracer.record_trace = True
    say = progress or (lambda item, done: None)
    with Database.open(db) as database:

        def traced(config: Any) -> Measurement:
            say(f"{config.label()} (traced event by event)", False)
            measured = tracer.measure(config)
            say(f"{config.label()} (traced event by event)", True)
            return measured

        counts = {True: 0, False: 0}  # reused? -> steps

        def measured(m: Measurement, reused: bool) -> None:
            counts[reused] += 1
            say(f"{m.config.label()}{' (stored)' if reused else ''}", True)

        log = MeasurementLog(backend, database, budget_bytes, on_measurement=measured)
        calibration = find_or_calibrate(log, base, budget_bytes)
        figure = memory_report(log, calibration, spec, base, chosen, budget_bytes, safety, traced)
        stored = database.measurements(
            arch=spec.name, device=calibration.device, precision=calibration.precision
        )
    timeline = None
    if figure.breakdown is not None and tracer.last_trace is not None:
        timeline = step_timeline(tracer.last_trace, figure.breakdown)
    found = _alternatives(spec.name, figure, base, precision, db) if options else ()
    largest_patch = max(chosen, key=lambda p: p[0] * p[1] * p[2])
    rows = arch_rows([spec.name, *compare], largest_patch, figure.usable_bytes,
                     lambda name: _calibration_of(name, precision, calibration, db)) if compare else ()  # fmt: skip
    shown = {row.arch for row in rows}
    missing = [name for name in compare if name not in shown]
    notes = (
        (f"no {precision} calibration on {calibration.device} to compare: {', '.join(missing)}",)
        if missing
        else ()
    )
    return ReportContent(figure, timeline, calibration_view(figure, stored, base), plan_view(figure, base, found),
                         rows, largest_patch if compare else None, notes, counts[False], counts[True])  # fmt: skip


def _alternatives(arch: str, figure: Any, base: Any, precision: str, db: str | Path | None) -> list[Any]:
    from memprobe.alternatives import alternatives
    from memprobe.reporting.memory_figure import breakdown_config

    config = breakdown_config(figure.curves, base)
    return alternatives(arch, config.patch, figure.budget_bytes, precision, db=db, safety=figure.safety,
                        device=figure.calibration.device)  # fmt: skip


def _calibration_of(
    arch: str, precision: str, shown: Calibration, db: str | Path | None
) -> Calibration | None:
    """The calibration another architecture is compared with: same precision and device as ``shown``."""
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.core.config import Setup
    from memprobe.core.errors import NoCalibrationError
    from memprobe.store.calibration_sources import all_calibrations, choose_calibration

    if resolve_arch(arch).name == shown.arch:
        return shown
    try:
        wanted = Setup.of(arch, precision=precision, optimizer=shown.optimizer)
        return choose_calibration(
            all_calibrations(db), wanted, shown.device, fallback_device=None
        ).calibration
    except NoCalibrationError:
        return None
