"""Measure configurations through a backend, reusing and recording them in the database.

One log serves both kinds of measurement: a training step's (``StepConfig``) and a
sliding-window inference's (``InferenceConfig``); the store keeps each kind in its own table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from memprobe.backends.base import Measures
from memprobe.core.bisection import Outcome
from memprobe.core.config import StepConfig
from memprobe.core.inference_config import InferenceConfig
from memprobe.core.inference_measurement import INFERENCE_CODE_VERSION
from memprobe.core.measurement import Environment, Measurement, PeakMeasurement, ReuseKey

ConfigT = TypeVar("ConfigT", StepConfig, InferenceConfig)
MeasurementT = TypeVar("MeasurementT", bound=PeakMeasurement[Any])
ProgressCallback = Callable[[Measurement, bool], None]


class MeasurementStore(Protocol):
    """Where measurements and calibrations are kept (``memprobe.store.database.Database``): a log needs only this.

    Each method takes either kind: a training step's or an inference's.
    """

    def find_measurement(
        self, config: Any, environment: Environment, budget_bytes: int | None, reuse_key: ReuseKey
    ) -> Any: ...

    def add_measurement(self, measurement: Any, reuse_key: ReuseKey) -> int: ...

    def add_calibration(self, calibration: Any, environment: Environment | None = None) -> int: ...


def _ignore(measurement: Any, reused: bool) -> None:
    """Default progress callback."""


@dataclass
class MeasurementLog(Generic[ConfigT, MeasurementT]):
    """Measures through ``backend``; each new measurement is committed to ``db`` at once.

    A configuration already measured on the same environment is taken from the database
    instead (a re-run resumes where an interrupted one stopped).
    """

    backend: Measures[ConfigT, MeasurementT]
    db: MeasurementStore | None = None
    budget_bytes: int | None = None
    on_measurement: Callable[[MeasurementT, bool], None] = _ignore
    taken: list[MeasurementT] = field(default_factory=list)
    reused: int = 0

    def measure(self, config: ConfigT) -> MeasurementT:
        environment = self.backend.environment()
        reuse_key = reuse_key_for(config)
        stored: MeasurementT | None = (
            self.db.find_measurement(config, environment, self.budget_bytes, reuse_key) if self.db else None
        )
        if stored is not None:
            self.reused += 1
            self.on_measurement(stored, True)
            return stored
        measurement = self.backend.measure(config)
        if self.db is not None:
            self.db.add_measurement(measurement, reuse_key)
        self.taken.append(measurement)
        self.on_measurement(measurement, False)
        return measurement

    def outcome(self, config: ConfigT) -> Outcome:
        """Measure and judge against the budget: the probe searches use."""
        measurement = self.measure(config)
        return Outcome(measurement.fits(self.budget_bytes), measurement.peak_allocated_bytes)


def reuse_key_for(config: StepConfig | InferenceConfig) -> ReuseKey:
    """A registered network and a built-in step are pinned by the environment; custom ones also by their source files.

    An inference has no training step; its measuring code has its own version.
    """
    from memprobe.core.archs.registry import resolve_arch

    inference = isinstance(config, InferenceConfig)
    code_version = INFERENCE_CODE_VERSION if inference else ReuseKey().code_version
    step_hash = None
    if isinstance(config, StepConfig):
        from memprobe.training.named_steps import step_source_hash

        step_hash = step_source_hash(config.step)
    if ":" not in config.arch:
        return ReuseKey(code_version, step_hash=step_hash)
    from memprobe.training.networks import factory_source_hash

    return ReuseKey(code_version, factory_source_hash(resolve_arch(config.arch)), step_hash)
