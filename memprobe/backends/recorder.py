"""Measure configurations through a backend, reusing and recording them in the database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from memprobe.backends.base import Backend
from memprobe.core.bisection import Outcome
from memprobe.core.config import StepConfig
from memprobe.core.measurement import Environment, Measurement, ReuseKey

ProgressCallback = Callable[[Measurement, bool], None]


class MeasurementStore(Protocol):
    """Where measurements are kept (``memprobe.store.database.Database``): backends need only this."""

    def find_measurement(
        self, config: StepConfig, environment: Environment, budget_bytes: int | None, reuse_key: ReuseKey
    ) -> Measurement | None: ...

    def add_measurement(self, measurement: Measurement, reuse_key: ReuseKey) -> int: ...


def _ignore(measurement: Measurement, reused: bool) -> None:
    """Default progress callback."""


@dataclass
class MeasurementLog:
    """Measures through ``backend``; each new measurement is committed to ``db`` at once.

    A configuration already measured on the same environment is taken from the database
    instead (a re-run resumes where an interrupted one stopped).
    """

    backend: Backend
    db: MeasurementStore | None = None
    budget_bytes: int | None = None
    on_measurement: ProgressCallback = _ignore
    taken: list[Measurement] = field(default_factory=list)
    reused: int = 0

    def measure(self, config: StepConfig) -> Measurement:
        environment = self.backend.environment()
        reuse_key = reuse_key_for(config)
        stored = (
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

    def outcome(self, config: StepConfig) -> Outcome:
        """Measure and judge against the budget: the probe searches use."""
        measurement = self.measure(config)
        return Outcome(measurement.fits(self.budget_bytes), measurement.peak_allocated_bytes)


def reuse_key_for(config: StepConfig) -> ReuseKey:
    """A registered network and a built-in step are pinned by the environment; custom ones also by their source files."""
    from memprobe.training.named_steps import step_source_hash

    step_hash = step_source_hash(config.step)
    if ":" not in config.arch:
        return ReuseKey(step_hash=step_hash)
    from memprobe.core.archs.registry import resolve_arch
    from memprobe.training.networks import factory_source_hash

    return ReuseKey(model_hash=factory_source_hash(resolve_arch(config.arch)), step_hash=step_hash)
