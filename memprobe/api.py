"""memprobe as a library: estimates from calibrations (no torch), and measurement on demand."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from memprobe.core.archs.registry import resolve_arch, smallest_patch
from memprobe.core.checks import (
    check_bool,
    check_db,
    check_fraction,
    check_optional_count,
    check_shape,
    check_spacing,
    check_text,
)
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.errors import InvalidInputError, StandInCalibrationWarning
from memprobe.core.input_files import shown
from memprobe.core.units import parse_bytes
from memprobe.formula.calibration import Calibration
from memprobe.planning.need import MemoryNeed, memory_need
from memprobe.planning.size_search import DEFAULT_SAFETY, BatchPlan, PatchPlan, plan_batch, plan_patch
from memprobe.store.calibration_sources import (
    NO_SHIPPED_VARIABLE,
    Choice,
    all_calibrations,
    choose_calibration,
)

if TYPE_CHECKING:
    from memprobe.backends.recorder import ProgressCallback
    from memprobe.calibration_run import CalibrationReport
    from memprobe.core.gpus import GpuInfo
    from memprobe.core.measurement import Environment, Measurement

DEFAULT_TRACE_BUDGET_BYTES = 24 * 2**30

P = TypeVar("P", BatchPlan, PatchPlan)


@dataclass(frozen=True)
class Estimate:
    """Predicted peak memory of one training step, and which calibration said so."""

    arch: str
    patch: tuple[int, int, int]
    batch: int
    precision: str
    peak_allocated_bytes: int
    calibration: Calibration
    need: MemoryNeed
    warning: str | None = None

    @property
    def peak_reserved_bytes(self) -> int:
        """The allocator's predicted peak reserve (an allowance where the calibration has none)."""
        return round(self.need.reserved_bytes)

    @property
    def total_bytes(self) -> int:
        """Everything the step needs of the GPU: reserve, context, workspaces and margin."""
        return round(self.need.total_bytes)

    @property
    def peak_gib(self) -> float:
        return self.peak_allocated_bytes / 2**30

    def __repr__(self) -> str:
        return (
            f"Estimate({self.arch} {'x'.join(map(str, self.patch))} b{self.batch} {self.precision}: "
            f"allocated {self.peak_allocated_bytes / 2**30:.2f} GiB, total need {self.total_bytes / 2**30:.2f} GiB, "
            f"calibration {self.calibration.device})"
        )


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=8)
def _load(
    db_path: str | None, resolved: str, stamp: tuple[int, int] | None, no_shipped: str
) -> list[Calibration]:
    # ``resolved`` keys the cache by the file actually read: with db=None that is $MEMPROBE_DB,
    # which may change between calls (two missing files would otherwise share one entry).
    return all_calibrations(db_path)


def load_calibrations(db: str | Path | None = None) -> list[Calibration]:
    """User and shipped calibrations, re-read whenever the database file changes."""
    from memprobe.store.database import database_url, default_db_path

    if database_url(None if db is None else str(db)) is not None:
        return all_calibrations(db)  # a server has no file to tell when it changed: read it each time
    path = Path(db) if db is not None else default_db_path()
    no_shipped = os.environ.get(NO_SHIPPED_VARIABLE, "")
    return _load(None if db is None else str(db), str(path), _file_stamp(path), no_shipped)


def resolve_device(device: str | None) -> tuple[str, str | None]:
    """The calibration device to use and the fallback: an explicit name, else the detected GPU, else trace."""
    if device is not None:
        return device, "trace"
    gpu = target_gpu(None)
    return (gpu.name, "trace") if gpu else ("trace", None)


def target_gpu(device: str | None) -> GpuInfo | None:
    """The GPU a plan is for: the detected one by default, one named by ``device``, or none (trace)."""
    from memprobe.core.gpus import GpuInfo, detect_gpu

    if device is None:
        return detect_gpu()
    if device in ("trace", "cpu"):
        return None
    detected = detect_gpu()
    return detected if detected and detected.name == device else GpuInfo(device, 0)


def _choose(config: StepConfig, db: str | Path | None, device: str | None) -> Choice:
    """The calibration for ``config``'s architecture and modes on ``device``; warn on a stand-in."""
    wanted, fallback = resolve_device(device)
    choice = choose_calibration(
        load_calibrations(db),
        config.arch,
        config.precision.value,
        config.optimizer.value,
        config.deep_supervision,
        wanted,
        fallback,
        config.step,
        config.checkpointing,
        config.strategy.value,
        config.world_size,
    )
    if choice.warning:
        warnings.warn(choice.warning, StandInCalibrationWarning, stacklevel=3)
    return choice


def estimate(
    arch: str,
    patch: Sequence[int],
    batch: int,
    precision: str = "fp32",
    *,
    optimizer: str = "adamw",
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    step: str = "memprobe",
    checkpointing: bool = False,
    strategy: str | None = None,
    world_size: int = 1,
    db: str | Path | None = None,
    device: str | None = None,
) -> Estimate:
    """Predict the peak allocated memory of a training step from the calibrations.

    Args:
        arch: a registered architecture, e.g. ``"mednext"``.
        patch: three patch sizes (depth, height, width).
        batch: batch size.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``.
        step: the training step calibrated: ``memprobe``, ``monai`` or ``package.module:function``;
            only a calibration of that step answers.
        strategy: ``ddp`` or ``fsdp`` for one rank of data parallelism over ``world_size`` GPUs
            (default: ddp when ``world_size`` is above 1); only a calibration of that layout
            answers, and ``batch`` is per rank.
        db: the database to read (default: ``$MEMPROBE_DB`` or the user data directory),
            after which the calibrations shipped with memprobe are consulted.
        device: whose calibration to use: ``"trace"`` or a GPU name; default the detected GPU,
            else trace.

    Returns:
        An Estimate with ``peak_allocated_bytes``.

    Raises:
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    db, device = _checked_source(db, device)
    arch = _with_stored_rule(arch, db)
    config = _step_config(
        arch,
        patch,
        batch,
        precision,
        optimizer,
        in_channels,
        out_channels,
        deep_supervision,
        step,
        checkpointing,
        strategy=strategy,
        world_size=world_size,
    )
    choice = _choose(config, db, device)
    need = memory_need(
        choice.calibration,
        resolve_arch(config.arch),
        config.patch,
        config.batch,
        config.in_channels,
        config.out_channels,
        target_gpu(device),
    )
    return Estimate(
        config.arch,
        config.patch,
        config.batch,
        config.precision.value,
        round(need.allocated_bytes),
        choice.calibration,
        need,
        choice.warning,
    )


def max_batch_size(
    arch: str,
    patch: Sequence[int],
    gpu_mem: str | int | float,
    precision: str = "fp32",
    *,
    safety: float = DEFAULT_SAFETY,
    optimizer: str = "adamw",
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    step: str = "memprobe",
    checkpointing: bool = False,
    strategy: str | None = None,
    world_size: int = 1,
    effective_batch: int | None = None,
    db: str | Path | None = None,
    device: str | None = None,
) -> BatchPlan:
    """The largest batch for ``patch`` whose whole need fits ``gpu_mem * safety``.

    The need is the calibrated allocated peak, the allocator's reserve, the CUDA context,
    cuBLAS/cuDNN workspaces and a margin from the calibration's error (``plan.need``).

    Raises:
        NothingFitsError: even batch 1 does not fit.
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    db, device = _checked_source(db, device)
    arch = _with_stored_rule(arch, db)
    safety = check_fraction(safety, "safety")
    effective_batch = check_optional_count(effective_batch, "effective_batch")
    config = _step_config(
        arch,
        patch,
        1,
        precision,
        optimizer,
        in_channels,
        out_channels,
        deep_supervision,
        step,
        checkpointing,
        strategy=strategy,
        world_size=world_size,
    )
    choice = _choose(config, db, device)
    plan = plan_batch(
        choice.calibration,
        resolve_arch(config.arch),
        config.patch,
        parse_bytes(gpu_mem),
        safety=safety,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        effective_batch=effective_batch,
        gpu=target_gpu(device),
    )
    return _with_warning(plan, choice.warning)


def max_patch_size(
    arch: str,
    batch: int,
    gpu_mem: str | int | float,
    precision: str = "fp32",
    *,
    safety: float = DEFAULT_SAFETY,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    optimizer: str = "adamw",
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    step: str = "memprobe",
    checkpointing: bool = False,
    strategy: str | None = None,
    world_size: int = 1,
    db: str | Path | None = None,
    device: str | None = None,
) -> PatchPlan:
    """The largest patch for ``batch`` (shaped by ``spacing``, within ``median_shape``) whose whole need fits.

    Raises:
        NothingFitsError: even the smallest patch the network takes does not fit.
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    db, device = _checked_source(db, device)
    arch = _with_stored_rule(arch, db)
    safety = check_fraction(safety, "safety")
    spacing = check_spacing(spacing)
    median_shape = check_shape(median_shape)
    from memprobe.integrations.nnunet.patch_plan import is_preset, plan_over_topologies

    if is_preset(arch):  # nnU-Net's network changes with the patch: one calibration per topology
        return plan_over_topologies(
            arch,
            spacing,
            median_shape,
            lambda topology_arch: max_patch_size(
                topology_arch,
                batch,
                gpu_mem,
                precision,
                safety=safety,
                spacing=spacing,
                median_shape=median_shape,
                optimizer=optimizer,
                in_channels=in_channels,
                out_channels=out_channels,
                deep_supervision=deep_supervision,
                step=step,
                checkpointing=checkpointing,
                strategy=strategy,
                world_size=world_size,
                db=db,
                device=device,
            ),
        )
    spec = resolve_arch(arch)
    config = _step_config(
        arch,
        smallest_patch(spec),
        batch,
        precision,
        optimizer,
        in_channels,
        out_channels,
        deep_supervision,
        step,
        checkpointing,
        strategy=strategy,
        world_size=world_size,
    )
    choice = _choose(config, db, device)
    plan = plan_patch(
        choice.calibration,
        spec,
        config.batch,
        parse_bytes(gpu_mem),
        safety=safety,
        spacing=spacing,
        median_shape=median_shape,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        gpu=target_gpu(device),
    )
    return _with_warning(plan, choice.warning)


def _with_stored_rule(arch: str, db: str | Path | None) -> str:
    """A custom model named without its shape rule: the name it was calibrated under, with the rule."""
    if not isinstance(arch, str) or ":" not in arch or "[" in arch:
        return arch
    from memprobe.store.calibration_sources import with_stored_shape_rule

    return with_stored_shape_rule(arch, load_calibrations(db))


def _checked_source(db: object, device: object) -> tuple[str | Path | None, str | None]:
    return check_db(db), check_text(device, "device")


def _with_warning(plan: P, warning: str | None) -> P:
    if warning is None:
        return plan
    return replace(plan, warnings=(warning, *plan.warnings))  # type: ignore[call-arg,unused-ignore]


def probe(
    arch: str,
    patch: Sequence[int],
    batch: int,
    precision: str = "fp32",
    *,
    device: str | None = None,
    optimizer: str = "adamw",
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    step: str = "memprobe",
    checkpointing: bool = False,
    strategy: str | None = None,
    world_size: int = 1,
    budget: str | int | None = None,
    isolate: bool = False,
) -> Measurement:
    """Run and measure one real training step (imports torch; seconds to minutes).

    ``device`` is ``cuda``, ``trace`` or ``cpu`` (default: cuda if available, else trace).
    """
    from memprobe.backends import get_backend

    device = check_text(device, "device")
    isolate = check_bool(isolate, "isolate")
    config = _step_config(
        arch,
        patch,
        batch,
        precision,
        optimizer,
        in_channels,
        out_channels,
        deep_supervision,
        step,
        checkpointing,
        strategy=strategy,
        world_size=world_size,
    )
    budget_bytes = parse_bytes(budget) if budget is not None else None
    return get_backend(device, budget_bytes=budget_bytes, isolate=isolate).measure(config)


def calibrate(
    arch: str,
    precision: str = "fp32",
    *,
    device: str | None = None,
    optimizer: str = "adamw",
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    step: str = "memprobe",
    checkpointing: bool = False,
    strategy: str | None = None,
    world_size: int = 1,
    budget: str | int | None = None,
    db: str | Path | None = None,
    isolate: bool = False,
    search: bool = True,
    on_measurement: ProgressCallback | None = None,
) -> CalibrationReport:
    """Measure ``arch``, fit its formula and store measurements and calibration in ``db``.

    Args:
        arch: a registered architecture or ``package.module:factory`` (its shape rule attached).
        device: ``cuda``, ``trace`` or ``cpu`` (default: cuda if available, else trace).
        budget: memory for the limit searches (default: the GPU's memory; 24 GiB on trace).
        isolate: run every probe in a child process; a crash is recorded and skipped.
        search: after the fit, search the largest batch and patch within the budget.
        on_measurement: called with each measurement and whether it was reused from ``db``;
            the CLI draws its progress from it (the library prints nothing).

    Returns:
        The CalibrationReport: the calibration, the measured points and the searches.
    """
    from memprobe.backends import get_backend
    from memprobe.backends.recorder import MeasurementLog
    from memprobe.calibration_run import calibrate as run_calibration
    from memprobe.store.database import Database
    from memprobe.training.named_steps import load_step

    db, device = _checked_source(db, device)
    isolate = check_bool(isolate, "isolate")
    arch = _calibration_arch(arch, in_channels, out_channels, find=not isolate)
    spec = resolve_arch(arch)
    base = _step_config(
        arch,
        smallest_patch(spec),
        1,
        precision,
        optimizer,
        in_channels,
        out_channels,
        deep_supervision,
        step,
        checkpointing,
        strategy=strategy,
        world_size=world_size,
    )
    load_step(base.step)  # a wrong reference is refused before anything runs
    # Every input is checked before the database is opened: a mistake must leave it untouched.
    backend = get_backend(
        device, budget_bytes=parse_bytes(budget) if budget is not None else None, isolate=isolate
    )
    budget_bytes = default_budget_bytes(backend.environment(), budget)
    with Database.open(db) as database:
        log = MeasurementLog(backend, database, budget_bytes)
        if on_measurement is not None:
            log.on_measurement = on_measurement
        report = run_calibration(log, base, budget_bytes, search=search)
        return replace(report, stored_in=str(database.path or database.location))


def _calibration_arch(arch: str, in_channels: int, out_channels: int, *, find: bool) -> str:
    """A custom model's name with its shape rule attached; without ``find``, only a declared rule."""
    if not isinstance(arch, str) or ":" not in arch or "[" in arch:
        return arch
    from memprobe.planning.shape_probe import shape_rule_arch

    if not find:
        from memprobe.core.archs.shape_rules import declared_rule
        from memprobe.training.networks import load_factory

        if declared_rule(load_factory(resolve_arch(arch).factory)) is None:
            return arch  # an isolated run must not try the model in this process
    return shape_rule_arch(arch, in_channels=in_channels, out_channels=out_channels)[0]


def _step_config(
    arch: str,
    patch: Sequence[object],
    batch: object,
    precision: str,
    optimizer: str,
    in_channels: object,
    out_channels: object,
    deep_supervision: bool,
    step: str,
    checkpointing: bool,
    strategy: str | None = None,
    world_size: object = 1,
) -> StepConfig:
    """The validated step configuration every public function starts from.

    A batch is an int (numpy's too): the CLI reads text into one, and ``"2"`` from Python is a
    mistake the way ``2.0`` is.
    """
    return make_step_config(
        arch,
        patch,
        _not_text(batch, "batch size"),
        precision=precision,
        optimizer=optimizer,
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        step=step,
        checkpointing=checkpointing,
        strategy=strategy,
        world_size=world_size,
    )


def _not_text(value: object, name: str) -> object:
    """Refuse a number given as text: the CLI reads text into ints, Python code passes them."""
    if isinstance(value, (str, bytes)):
        raise InvalidInputError(f"{name} must be a whole number (an int), got {shown(repr(value))}")
    return value


def default_budget_bytes(environment: Environment, budget: str | int | None) -> int:
    """The budget given, else the GPU's memory, else 24 GiB (a common card) for trace and cpu."""
    if budget is not None:
        return parse_bytes(budget)
    return environment.total_memory_bytes or DEFAULT_TRACE_BUDGET_BYTES
