"""memprobe as a library: estimates from calibrations (no torch), and measurement on demand."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from memprobe.core.archs.registry import resolve_arch, smallest_patch
from memprobe.core.checks import (
    check_bool,
    check_db,
    check_fraction,
    check_optional_count,
    check_shape,
    check_spacing,
    check_text,
    renamed_argument,
)
from memprobe.core.config import Setup, StepConfig
from memprobe.core.errors import InvalidInputError, NoCalibrationError, StandInCalibrationWarning
from memprobe.core.gpus import measuring_gpu, target_gpu
from memprobe.core.input_files import shown
from memprobe.core.units import DEFAULT_GPU_MEM_BYTES, parse_bytes
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
    from memprobe.backends.distributed import RankMeasurement
    from memprobe.backends.recorder import ProgressCallback
    from memprobe.calibration_run import CalibrationReport
    from memprobe.core.measurement import Environment, Measurement

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


def choose_on_device(pick: Callable[[str, str | None], Choice], device: str | None, depth: int = 0) -> Choice:
    """``pick(wanted, fallback)`` for ``device`` (``resolve_device``); warn on a stand-in.

    Training's and inference's calibrations are chosen by this one rule. The warning points at
    the caller's line: ``depth`` is how many private frames lie between.
    """
    wanted, fallback = resolve_device(device)
    choice = pick(wanted, fallback)
    if choice.warning:
        warnings.warn(choice.warning, StandInCalibrationWarning, stacklevel=3 + depth)
    return choice


def _choose(setup: Setup, db: str | Path | None, device: str | None, depth: int = 0) -> Choice:
    """The calibration that answers for ``setup`` on ``device``; warn on a stand-in."""
    calibrations = load_calibrations(db)
    return choose_on_device(
        lambda wanted, fallback: choose_calibration(calibrations, setup, wanted, fallback), device, depth + 1
    )


def estimate(
    arch: str | Setup,
    patch: Sequence[int],
    batch: int,
    precision: str | None = None,
    *,
    db: str | Path | None = None,
    device: str | None = None,
    **setup: Any,
) -> Estimate:
    """Predict the peak allocated memory of a training step from the calibrations.

    Args:
        patch: three patch sizes (depth, height, width).
        batch: batch size.
        db: the database to read (default: ``$MEMPROBE_DB`` or the user data directory),
            after which the calibrations shipped with memprobe are consulted.
        device: whose calibration to use: ``"trace"`` or a GPU name; default the detected GPU,
            else trace.
        arch: an architecture (``"mednext"``, ``package.module:factory``) or a Setup.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``; default by the GPU's bf16
            support (``memprobe.core.config.default_precision``), or the Setup's own.
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``, ``world_size``);
            only a calibration of the same Setup answers, and a batch is one rank's.

    Returns:
        An Estimate with ``peak_allocated_bytes``.

    Raises:
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    db, device = _checked_source(db, device)
    config = _setup(arch, precision, setup, db, device).at(patch, _not_text(batch, "batch size"))
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
    arch: str | Setup,
    patch: Sequence[int],
    gpu_mem: str | int | float,
    precision: str | None = None,
    *,
    safety: float = DEFAULT_SAFETY,
    effective_batch: int | None = None,
    db: str | Path | None = None,
    device: str | None = None,
    **setup: Any,
) -> BatchPlan:
    """The largest batch for ``patch`` whose whole need fits ``gpu_mem * safety``.

    The need is the calibrated allocated peak, the allocator's reserve, the CUDA context,
    cuBLAS/cuDNN workspaces and a margin from the calibration's error (``plan.need``).

    Args:
        arch: an architecture (``"mednext"``, ``package.module:factory``) or a Setup.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``; default by the GPU's bf16
            support (``memprobe.core.config.default_precision``), or the Setup's own.
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``, ``world_size``);
            only a calibration of the same Setup answers, and a batch is one rank's.

    Raises:
        NothingFitsError: even batch 1 does not fit.
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    db, device = _checked_source(db, device)
    safety = check_fraction(safety, "safety")
    effective_batch = check_optional_count(effective_batch, "effective_batch")
    budget_bytes = parse_bytes(gpu_mem)  # every input is checked before a calibration is looked up
    config = _setup(arch, precision, setup, db, device).at(patch, 1)
    choice = _choose(config, db, device)
    plan = plan_batch(
        choice.calibration,
        resolve_arch(config.arch),
        config.patch,
        budget_bytes,
        safety=safety,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        effective_batch=effective_batch,
        gpu=target_gpu(device),
    )
    return _with_warning(plan, choice.warning)


def max_patch_size(
    arch: str | Setup,
    batch: int,
    gpu_mem: str | int | float,
    precision: str | None = None,
    *,
    safety: float = DEFAULT_SAFETY,
    spacing: Sequence[float] | None = None,
    median_shape: Sequence[int] | None = None,
    db: str | Path | None = None,
    device: str | None = None,
    **setup: Any,
) -> PatchPlan:
    """The largest patch for ``batch`` (shaped by ``spacing``, within ``median_shape``) whose whole need fits.

    Args:
        arch: an architecture (``"mednext"``, ``package.module:factory``) or a Setup.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``; default by the GPU's bf16
            support (``memprobe.core.config.default_precision``), or the Setup's own.
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``, ``world_size``);
            only a calibration of the same Setup answers, and a batch is one rank's.

    Raises:
        NothingFitsError: even the smallest patch the network takes does not fit.
        InvalidInputError: an argument of the wrong type or without meaning.
    """
    db, device = _checked_source(db, device)
    safety = check_fraction(safety, "safety")
    spacing = check_spacing(spacing)
    median_shape = check_shape(median_shape)
    budget_bytes = parse_bytes(gpu_mem)
    from memprobe.integrations.nnunet.patch_plan import is_preset, plan_over_topologies

    name = arch.arch if isinstance(arch, Setup) else arch
    batch = _not_text(batch, "batch size")  # type: ignore[assignment]
    geometry = (spacing, median_shape)
    if is_preset(name):  # nnU-Net's network changes with the patch: one calibration per topology
        chosen = _setup(arch, precision, setup, db, device, check_arch=False)
        planner = _topology_planner(chosen, batch, budget_bytes, safety, geometry, db, device)
        return plan_over_topologies(name, spacing, median_shape, planner)
    return _patch_plan(
        _setup(arch, precision, setup, db, device), batch, budget_bytes, safety, geometry, db, device
    )


def _patch_plan(
    setup: Setup,
    batch: int,
    budget_bytes: int,
    safety: float,
    geometry: tuple[Sequence[float] | None, Sequence[int] | None],
    db: str | Path | None,
    device: str | None,
    calibration: Calibration | None = None,
) -> PatchPlan:
    """The largest patch for ``setup`` at ``batch``: from ``calibration``, else the one that answers."""
    spec = resolve_arch(setup.arch)
    config = setup.at(smallest_patch(spec), batch)
    choice = _choose(config, db, device, depth=1) if calibration is None else Choice(calibration)
    plan = plan_patch(
        choice.calibration,
        spec,
        config.batch,
        budget_bytes,
        safety=safety,
        spacing=geometry[0],
        median_shape=geometry[1],
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        gpu=target_gpu(device),
    )
    return _with_warning(plan, choice.warning)


def _topology_planner(
    setup: Setup,
    batch: int,
    budget_bytes: int,
    safety: float,
    geometry: tuple[Sequence[float] | None, Sequence[int] | None],
    db: str | Path | None,
    device: str | None,
) -> Callable[[str], PatchPlan]:
    """Plan one nnU-Net topology: from its own calibration; else, in nnU-Net's own training modes,
    from the topology family's prediction where it was validated (``memprobe nnunet plan``
    calibrates the rest). Nothing is measured here: an estimate never imports torch.
    """
    sources: Any = None  # the topology sources, read once for every topology the plan visits

    def planned(topology_arch: str) -> PatchPlan:
        nonlocal sources
        topology = Setup.of(replace(setup, arch=topology_arch))
        try:
            return _patch_plan(topology, batch, budget_bytes, safety, geometry, db, device)
        except NoCalibrationError:
            from memprobe.integrations.nnunet import topology_sources

            modes = (topology_sources.STEP, topology_sources.PRECISION, topology_sources.OPTIMIZER)
            if (setup.step, setup.precision.value, setup.optimizer.value) != modes:
                raise
            if sources is None:
                sources = topology_sources.TopologyCalibrations(db, device, calibrate=False)
        calibration = sources.calibration(topology_arch)  # raises, naming `memprobe nnunet plan`, if not
        found = _patch_plan(topology, batch, budget_bytes, safety, geometry, db, device, calibration)
        answer = sources.answers[topology_arch]
        return replace(
            found, reasons=(*found.reasons, f"{topology_arch}: {answer.figure.value} ({answer.source})")
        )

    return planned


def _setup(
    arch: str | Setup,
    precision: str | None,
    overrides: dict[str, Any],
    db: str | Path | None,
    device: str | None,
    *,
    check_arch: bool = True,
) -> Setup:
    """The checked Setup a planning function answers for; a custom model gets its stored shape rule.

    Without ``check_arch`` (an nnU-Net preset, which names a family of topologies) the name is
    kept as given once its fields are checked.
    """
    named = replace(arch, arch=with_stored_rule(arch.arch, db)) if isinstance(arch, Setup) else arch
    if isinstance(named, str):
        named = with_stored_rule(named, db)
    checked = Setup.of(named, gpu=target_gpu(device), **_given(arch, precision, overrides))
    if check_arch:
        return checked
    return replace(checked, arch=named.arch if isinstance(named, Setup) else named)


def with_stored_rule(arch: str, db: str | Path | None) -> str:
    """A custom model named without its shape rule: the name it was calibrated under, with the rule."""
    if not isinstance(arch, str) or ":" not in arch or "[" in arch:
        return arch  # nothing to look up: the calibrations are not read
    from memprobe.store.calibration_sources import with_stored_shape_rule

    return with_stored_shape_rule(arch, load_calibrations(db))


def _checked_source(db: object, device: object) -> tuple[str | Path | None, str | None]:
    return check_db(db), check_text(device, "device")


def _with_warning(plan: P, warning: str | None) -> P:
    if warning is None:
        return plan
    return replace(plan, warnings=(warning, *plan.warnings))  # type: ignore[call-arg,unused-ignore]


def probe(
    arch: str | Setup,
    patch: Sequence[int],
    batch: int,
    precision: str | None = None,
    *,
    device: str | None = None,
    gpu_mem: str | int | None = None,
    isolate: bool = False,
    snapshot: str | Path | None = None,
    on_start: Callable[[StepConfig, str], None] | None = None,
    **setup: Any,
) -> Measurement:
    """Run and measure one real training step (imports torch; seconds to minutes).

    Args:
        device: ``cuda``, ``trace`` or ``cpu`` (default: cuda if available, else trace).
        gpu_mem: cap CUDA memory at this size (emulates a smaller GPU); ``budget`` is its old name.
        isolate: run the step in a child process; a crash becomes a result.
        snapshot: write the step as a PyTorch memory snapshot (``.pickle`` or ``.json``): on
            trace and cpu the simulated allocator's, on cuda the real one recorded.
        on_start: called with the checked configuration and the device kind once every input
            is checked, just before the step runs (the CLI says what it measures).
        arch: an architecture (``"mednext"``, ``package.module:factory``) or a Setup.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``; default by the GPU's bf16
            support (``memprobe.core.config.default_precision``), or the Setup's own.
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``); one rank of several GPUs is
            ``probe_ranks``.
    """
    from memprobe.backends import get_backend
    from memprobe.training.named_steps import load_step

    device = check_text(device, "device")
    isolate = check_bool(isolate, "isolate")
    gpu_mem = renamed_argument(setup, "budget", "gpu_mem", gpu_mem)
    config = _measured_setup(arch, precision, setup, device).at(patch, _not_text(batch, "batch size"))
    if config.world_size > 1:
        raise InvalidInputError("one rank of several GPUs is measured by probe_ranks (--gpus N on the CLI)")
    load_step(config.step)  # a wrong reference is refused before anything runs
    budget_bytes = parse_bytes(gpu_mem) if gpu_mem is not None else None
    backend = get_backend(device, budget_bytes=budget_bytes, isolate=isolate)  # refuses a bad device first
    if snapshot is not None:
        _prepare_snapshot(backend, snapshot, isolate)
    if on_start is not None:
        on_start(config, backend.kind.value)
    measurement = backend.measure(config)
    if snapshot is not None and measurement.ok and getattr(backend, "last_trace", None) is not None:
        from memprobe.snapshots.export import snapshot_from_trace, write_snapshot

        write_snapshot(str(snapshot), snapshot_from_trace(backend.last_trace))  # type: ignore[attr-defined]
    return measurement


def probe_ranks(
    arch: str | Setup,
    patch: Sequence[int],
    batch: int,
    precision: str | None = None,
    *,
    device: str | None = None,
    bucket_cap_mb: float = 25.0,
    gradient_as_bucket_view: bool = False,
    on_start: Callable[[StepConfig, str], None] | None = None,
    **setup: Any,
) -> RankMeasurement:
    """Measure one rank of data-parallel training (``world_size`` GPUs, ``strategy`` ddp or fsdp).

    On trace and cpu one process stands in for every rank (a fake process group); on cuda the
    ranks are launched, one per GPU, and the worst is reported. ``bucket_cap_mb`` and
    ``gradient_as_bucket_view`` are DDP's. The batch is one rank's.
    """
    from memprobe.backends import default_device_kind
    from memprobe.backends.distributed import DistributedOptions, measure_per_rank
    from memprobe.core.enums import Strategy
    from memprobe.training.named_steps import load_step

    device = check_text(device, "device") or default_device_kind().value
    config = _measured_setup(arch, precision, setup, device).at(patch, _not_text(batch, "batch size"))
    if check_bool(gradient_as_bucket_view, "gradient_as_bucket_view") and config.strategy is not Strategy.DDP:
        raise InvalidInputError("--gradient-as-bucket-view is DDP's: add --gpus N (N of 2 or more)")
    if config.strategy is Strategy.SINGLE:
        raise InvalidInputError("give world_size=N (2 or more) for ranks of data parallelism (--gpus N)")
    load_step(config.step)
    options = DistributedOptions(config.strategy, config.world_size, bucket_cap_mb, gradient_as_bucket_view)
    if on_start is not None:
        on_start(config, device)
    return measure_per_rank(config, options, device)


def _prepare_snapshot(backend: Any, path: str | Path, isolate: bool) -> None:
    """Check the snapshot's file and ask the backend to keep what it needs, before measuring."""
    from memprobe.core.output_paths import check_output_path

    check_output_path(path, "--snapshot", suffixes=(".pickle", ".pkl", ".json"))
    if isolate:
        raise InvalidInputError("--snapshot records in this process: drop --isolate")
    if hasattr(backend, "record_trace"):
        backend.record_trace = True
    else:
        backend.snapshot_path = str(path)


def calibrate(
    arch: str | Setup,
    precision: str | None = None,
    *,
    device: str | None = None,
    gpu_mem: str | int | None = None,
    db: str | Path | None = None,
    isolate: bool = False,
    search: bool = True,
    on_measurement: ProgressCallback | None = None,
    **setup: Any,
) -> CalibrationReport:
    """Measure ``arch``, fit its formula and store measurements and calibration in ``db``.

    Args:
        device: ``cuda``, ``trace`` or ``cpu`` (default: cuda if available, else trace).
        gpu_mem: memory for the limit searches (default: the GPU's memory; 24 GiB on trace);
            ``budget`` is its old name.
        isolate: run every probe in a child process; a crash is recorded and skipped.
        search: after the fit, search the largest batch and patch within the budget.
        on_measurement: called with each measurement and whether it was reused from ``db``;
            the CLI draws its progress from it (the library prints nothing).
        arch: an architecture (``"mednext"``, ``package.module:factory``) or a Setup.
        precision: ``fp32``, ``fp16-mixed`` or ``bf16-mixed``; default by the GPU's bf16
            support (``memprobe.core.config.default_precision``), or the Setup's own.
        **setup: other fields of a Setup (``optimizer``, ``in_channels``, ``out_channels``,
            ``deep_supervision``, ``step``, ``checkpointing``, ``strategy``, ``world_size``);
            only a calibration of the same Setup answers, and a batch is one rank's.

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
    gpu_mem = renamed_argument(setup, "budget", "gpu_mem", gpu_mem)
    chosen = _measured_setup(arch, precision, setup, device)
    chosen = replace(
        chosen,
        arch=with_found_shape_rule(chosen.arch, chosen.in_channels, chosen.out_channels, find=not isolate),
    )
    spec = resolve_arch(chosen.arch)
    base = chosen.at(smallest_patch(spec), 1)
    load_step(base.step)  # a wrong reference is refused before anything runs
    # Every input is checked before the database is opened: a mistake must leave it untouched.
    backend = get_backend(
        device, budget_bytes=parse_bytes(gpu_mem) if gpu_mem is not None else None, isolate=isolate
    )
    try:
        budget_bytes = default_budget_bytes(backend.environment(), gpu_mem)
        with Database.open(db) as database:
            log = MeasurementLog(backend, database, budget_bytes)
            if on_measurement is not None:
                log.on_measurement = on_measurement
            report = run_calibration(log, base, budget_bytes, search=search)
            return replace(report, stored_in=str(database.path or database.location))
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()  # stops the pool of ranks of a --gpus N calibration on CUDA


def _measured_setup(
    arch: str | Setup, precision: str | None, setup: dict[str, Any], device: str | None
) -> Setup:
    """The checked Setup a measurement on ``device`` runs: its default precision is that device's GPU's."""
    return Setup.of(arch, gpu=measuring_gpu(device), **_given(arch, precision, setup))


def _given(arch: str | Setup, precision: str | None, setup: dict[str, Any]) -> dict[str, Any]:
    """The Setup fields a caller gave: a precision of None on a Setup keeps the Setup's own."""
    return setup if precision is None and isinstance(arch, Setup) else {**setup, "precision": precision}


def with_found_shape_rule(arch: str, in_channels: int, out_channels: int, *, find: bool) -> str:
    """A custom model's name with its shape rule attached, as a calibration stores it; without
    ``find`` (an isolated run, whose model may crash this process), only a declared rule."""
    if not isinstance(arch, str) or ":" not in arch or "[" in arch:
        return arch
    from memprobe.planning.shape_probe import shape_rule_arch

    if not find:
        from memprobe.core.archs.shape_rules import declared_rule
        from memprobe.training.networks import load_factory

        if declared_rule(load_factory(resolve_arch(arch).factory)) is None:
            return arch  # an isolated run must not try the model in this process
    return shape_rule_arch(arch, in_channels=in_channels, out_channels=out_channels)[0]


def _not_text(value: object, name: str) -> object:
    """Refuse a number given as text: the CLI reads text into ints, Python code passes them."""
    if isinstance(value, (str, bytes)):
        raise InvalidInputError(f"{name} must be a whole number (an int), got {shown(repr(value))}")
    return value


def default_budget_bytes(environment: Environment, budget: str | int | None) -> int:
    """The budget given, else the GPU's memory, else 24 GiB (a common card) for trace and cpu."""
    if budget is not None:
        return parse_bytes(budget)
    return environment.total_memory_bytes or DEFAULT_GPU_MEM_BYTES
