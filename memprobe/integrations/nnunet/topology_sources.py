"""The calibration of each nnU-Net topology a plan visits: stored, predicted, or calibrated now.

nnU-Net's planner changes the network's topology as it shrinks the patch, and each topology
is calibrated as its own architecture. ``TopologyCalibrations`` answers for each one, in
this order:

1. **measured**: its own calibration, from the user's database, then those shipped with memprobe;
2. **predicted**: its network's topology family (``memprobe.formula.topology_family``) when the
   topology is inside the range the family was validated on, leaving topologies out;
3. **calibrated**: measured now on the best device present (or the one asked for), stored in
   the database as soon as it is fitted; its measurements are stored one by one, so an
   interrupted plan resumes where it stopped.

Without calibrating, a topology that neither answers is listed as missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from memprobe.core.archs.nnunet_specs import PLAIN, RESENC
from memprobe.core.archs.nnunet_topology import parse_arch_name
from memprobe.core.archs.registry import ArchSpec, resolve_arch, smallest_patch
from memprobe.core.config import Setup, StepConfig, make_step_config
from memprobe.core.errors import (
    DeviceUnavailableError,
    InvalidInputError,
    MemprobeError,
    NoCalibrationError,
    TerminatedError,
)
from memprobe.core.gpus import GpuInfo, detect_gpu
from memprobe.core.measurement import Measurement
from memprobe.formula.calibration import Calibration
from memprobe.formula.topology_family import TopologyFamily, comparable_segments
from memprobe.integrations.nnunet.parameters import parameter_model
from memprobe.planning.need import MemoryNeed, memory_need
from memprobe.store.calibration_sources import (
    all_calibrations,
    choose_calibration,
    shipped_topology_families,
)

# nnU-Net's training step, as every nnU-Net calibration is made
PRECISION, OPTIMIZER, STEP = "fp16-mixed", "sgd", "nnunet"
TRACE_BUDGET_BYTES = 80 * 2**30  # no search runs: the budget only keeps a GPU's out-of-memory results apart
CALIBRATE_FLAGS = f"--precision {PRECISION} --optimizer {OPTIMIZER} --deep-supervision --step {STEP}"


class Figure(StrEnum):
    """Where a topology's figures come from."""

    MEASURED = "measured"  # its own calibration, made before this plan (yours or shipped)
    CALIBRATED = "calibrated"  # its own calibration, made by this plan
    PREDICTED = "predicted"  # its network's topology family: this topology was never measured


@dataclass(frozen=True)
class TopologyAnswer:
    """Which calibration answered for one topology, and how it came to be."""

    arch: str
    figure: Figure
    source: str

    def __repr__(self) -> str:
        return f"TopologyAnswer({self.arch}: {self.figure.value}, {self.source})"


@dataclass(frozen=True)
class CalibrationStep:
    """One step measured by a calibration inside a plan: what a progress display shows."""

    topology: str
    number: int  # the plan's first, second, ... calibration
    expected_steps: int  # the steps a calibration of this topology takes
    measurement: Measurement
    reused: bool  # taken from the database (an interrupted run measured it)


StepCallback = Callable[[CalibrationStep], None]


class MissingCalibrationsError(NoCalibrationError):
    """Topologies the plan visits have no calibration and none was to be made (exit code 3)."""

    exit_code = 3


class PlanInterruptedError(MemprobeError):
    """Ctrl-C or SIGTERM while a topology was calibrated: what was finished is kept, a re-run resumes."""


@dataclass(frozen=True)
class MeasuringDevice:
    """Whose calibrations answer (``name``), the backend that calibrates here, and the GPU planned for."""

    name: str
    backend: str | None  # "cuda", "trace" or "cpu"; None when that device is not on this machine
    gpu: GpuInfo | None

    @classmethod
    def of(cls, device: str | None) -> MeasuringDevice:
        """None: the GPU present, else trace; ``trace``, ``cpu``, ``cuda`` (the GPU present) or a GPU's name."""
        if device in ("trace", "cpu"):
            return cls(device, device, None)
        present = detect_gpu()
        if device is None:
            return cls(present.name, "cuda", present) if present else cls("trace", "trace", None)
        if device == "cuda":
            if present is None:
                raise DeviceUnavailableError(
                    "no CUDA GPU is available here: use --device trace to calibrate without a GPU"
                )
            return cls(present.name, "cuda", present)
        if present is not None and present.name == device:
            return cls(device, "cuda", present)
        return cls(device, None, GpuInfo(device, 0))


class TopologyCalibrations:
    """Answer for each nnU-Net topology with a calibration: measured, predicted or calibrated now.

    Args:
        db: the database to read and to store new calibrations in (default: ``$MEMPROBE_DB``).
        device: see ``MeasuringDevice.of``.
        calibrate: calibrate a topology nothing else answers for; without it, it is missing.
        on_step: called with every step a calibration measures (the library prints nothing).
    """

    def __init__(
        self,
        db: str | Path | None = None,
        device: str | None = None,
        *,
        calibrate: bool = True,
        on_step: StepCallback | None = None,
    ) -> None:
        self.db = db
        self.device = MeasuringDevice.of(device)
        self.calibrate_missing = calibrate
        self.on_step = on_step
        self.answers: dict[str, TopologyAnswer] = {}
        self.missing: list[str] = []
        self.steps_measured = 0
        self._stored = all_calibrations(db)
        self._families = shipped_topology_families()
        self._calibrations: dict[str, Calibration] = {}
        self.warnings: list[str] = []

    @property
    def calibrated(self) -> list[str]:
        return [a.arch for a in self.answers.values() if a.figure is Figure.CALIBRATED]

    def calibration(self, arch: str) -> Calibration:
        """The calibration that answers for ``arch`` (an ``nnunet[...]`` or ``nnunet-resenc[...]`` name)."""
        if arch not in self._calibrations:
            self._calibrations[arch] = self._answer(arch)
        return self._calibrations[arch]

    def need(
        self, arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int
    ) -> MemoryNeed:
        """The whole need of ``batch`` x ``patch`` with ``arch``, as its calibration predicts it."""
        calibration = self.calibration(arch)
        return memory_need(
            calibration, resolve_arch(arch), patch, batch, in_channels, out_channels, self.device.gpu
        )

    def family(self, arch: str) -> TopologyFamily | None:
        """The topology family of ``arch``'s network in nnU-Net's modes, for this device or trace."""
        network = _network(arch)
        for device in dict.fromkeys((self.device.name, "trace")):
            for family in self._families:
                key = (device, PRECISION, OPTIMIZER, True, STEP)
                if family.network == network and family.answers(key):
                    return family
        return None

    def _answer(self, arch: str) -> Calibration:
        stored = self._stored_calibration(arch)
        if stored is not None:
            self._record(arch, Figure.MEASURED, _described(stored))
            return stored
        family = self.family(arch)
        spec = resolve_arch(arch)
        outside = family.uncovered(spec) if family else f"no topology family of {_network(arch)}"
        if family is not None and outside is None:
            if family.device != self.device.name:
                self.warnings.append(
                    f"{arch} has no calibration for {self.device.name}: predicted from the {family.device} family, "
                    "which counts tensors only; the plan charges trace's allowances for the rest"
                )
            self._record(arch, Figure.PREDICTED, _family_words(family))
            return family.calibration_for(spec, _parameter_model(arch))
        if self.calibrate_missing:
            return self.calibrate(arch)
        self.missing.append(arch)
        if family is None:  # nothing can stand in for it: the planner cannot go on
            raise self.missing_error()
        self.warnings.append(f"{arch} is missing ({outside}); the planner went on with an extrapolation")
        return family.calibration_for(spec, _parameter_model(arch))

    def _stored_calibration(self, arch: str) -> Calibration | None:
        setup = Setup.of(arch, precision=PRECISION, optimizer=OPTIMIZER, deep_supervision=True, step=STEP)
        fallback = "trace" if self.device.name != "trace" else None
        try:
            choice = choose_calibration(self._stored, setup, self.device.name, fallback)
        except NoCalibrationError:
            return None
        if choice.warning and choice.warning not in self.warnings:
            self.warnings.append(choice.warning)
        return choice.calibration

    def missing_error(self) -> MissingCalibrationsError:
        """The one-line error naming every missing topology and how to calibrate them."""
        names = ", ".join(self.missing)
        return MissingCalibrationsError(
            f"no calibration of {len(self.missing)} topolog{'y' if len(self.missing) == 1 else 'ies'} "
            f"nnU-Net's planner visits ({names}): run the plan without --no-calibrate to calibrate them, "
            f"or `memprobe calibrate --arch {self.missing[0]} {CALIBRATE_FLAGS} --device "
            f"{self.device.backend or 'cuda'} --no-search` for each"
        )

    def calibrate(self, arch: str) -> Calibration:
        """Calibrate ``arch`` now (no limit searches) and store it; it answers from then on."""
        from memprobe.backends import get_backend
        from memprobe.backends.recorder import MeasurementLog
        from memprobe.calibration_run import design_points, measure_or_record
        from memprobe.store.database import Database

        if self.device.backend is None:
            raise DeviceUnavailableError(
                f"{arch} has no calibration for {self.device.name}, which is not this machine's GPU: "
                "plan on that machine, or with --device trace"
            )
        spec, base = resolve_arch(arch), design_base(arch)
        points = design_points(base, spec)
        number, expected = len(self.calibrated) + 1, len(points.fit) + len(points.heldout)
        backend = get_backend(self.device.backend)
        environment = backend.environment()
        budget = environment.total_memory_bytes or TRACE_BUDGET_BYTES

        def step(measurement: Measurement, reused: bool) -> None:
            self.steps_measured += 0 if reused else 1
            if self.on_step is not None:
                self.on_step(CalibrationStep(arch, number, expected, measurement, reused))

        with Database.open(self.db) as database:
            log = MeasurementLog(backend, database, budget, on_measurement=step)
            try:
                fitted = [measure_or_record(log, config) for config in points.fit]
                heldout = [measure_or_record(log, config) for config in points.heldout]
            except (KeyboardInterrupt, TerminatedError) as stop:
                raise PlanInterruptedError(
                    f"interrupted while calibrating {arch} ({len(log.taken) + log.reused} of its {expected} steps "
                    f"kept); {number - 1} calibration{'' if number == 2 else 's'} finished and kept in "
                    f"{database.location}: run the same command to resume"
                ) from stop
            failed = next((m for m in (*fitted, *heldout) if m.error is not None), None)
            if failed is not None:
                raise InvalidInputError(
                    f"{arch}, a topology nnU-Net's planner chose, cannot be measured: {failed.error} "
                    f"(patch {'x'.join(map(str, failed.config.patch))})"
                )
            calibration = fit_topology(
                spec, base, environment.calibration_device, fitted, heldout, environment.to_dict()
            )
            database.add_calibration(calibration, environment)
        self._stored.insert(0, calibration)
        self._record(arch, Figure.CALIBRATED, _described(calibration))
        self._calibrations[arch] = calibration
        return calibration

    def _record(self, arch: str, figure: Figure, source: str) -> None:
        self.answers[arch] = TopologyAnswer(arch, figure, source)


def design_base(arch: str) -> StepConfig:
    """The configuration every calibration of an nnU-Net topology starts from: nnU-Net's step."""
    return make_step_config(
        arch, smallest_patch(resolve_arch(arch)), 1, precision=PRECISION, optimizer=OPTIMIZER,
        deep_supervision=True, step=STEP,
    )  # fmt: skip


def fit_topology(
    spec: ArchSpec,
    base: StepConfig,
    device: str,
    fitted: Sequence[Measurement],
    heldout: Sequence[Measurement],
    environment: dict[str, object],
) -> Calibration:
    """A topology's calibration: the better, on its held-out points, of two fits to its design points.

    One is any network's (``fit_calibration``: windows, phases or the whole step); the other
    fits the segments its topology family uses (``comparable_segments``). The windows of a
    5-stage PlainConvUNet are not linear in the terms (about 1% worst error on its own points,
    and 2% at a plan), its backward parts are (0.001%).
    """
    from dataclasses import replace

    from memprobe.calibration_run import fit_calibration

    def segmented(measurements: Sequence[Measurement]) -> list[Measurement]:
        return [
            replace(
                m,
                phase_peaks_bytes=comparable_segments(m.phase_peaks_bytes),
                reserved_phase_peaks_bytes=comparable_segments(m.reserved_phase_peaks_bytes),
            )
            for m in measurements
        ]

    candidates = [
        fit_calibration(spec, base, device, list(fitted), list(heldout), environment),
        fit_calibration(spec, base, device, segmented(fitted), segmented(heldout), environment),
    ]
    return min(candidates, key=_heldout_error)  # the first on a tie


def _heldout_error(calibration: Calibration) -> float:
    quality = calibration.quality
    return quality.heldout_max_relative_error if quality.heldout_max_relative_error is not None else 1.0


def _network(arch: str) -> str:
    parsed = parse_arch_name(arch)
    if parsed is None:
        raise InvalidInputError(f"{arch!r} is not an nnU-Net topology (e.g. nnunet[122.222.222.222])")
    return RESENC if parsed[0].startswith(RESENC) else PLAIN


def _parameter_model(arch: str) -> dict[str, float]:
    parsed = parse_arch_name(arch)
    assert parsed is not None
    return parameter_model(_network(arch), parsed[1])


def _described(calibration: Calibration) -> str:
    where = "shipped with memprobe" if calibration.source == "shipped" else "your database"
    return f"{calibration.device}, {where}, created {calibration.created_at[:19]}"


def _family_words(family: TopologyFamily) -> str:
    worst = family.quality.heldout_max_relative_error or 0.0
    return (
        f"{family.network} topology family on {family.device} ({len(family.topologies)} topologies, "
        f"{family.stages[0]}-{family.stages[1]} stages; worst error leaving one out {100 * worst:.2f}%)"
    )
