"""The protocol every measuring backend follows (a leaf: it imports no backend).

A backend measures one kind of configuration: a training step (``StepConfig`` ->
``Measurement``: trace, cpu, cuda) or a sliding-window inference (``InferenceConfig`` ->
``InferenceMeasurement``: ``memprobe.backends.sliding_window``). Isolation in a child process
(``memprobe.backends.isolated``) and the measurement log (``memprobe.backends.recorder``) wrap
either kind the same way.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind
from memprobe.core.inference_config import InferenceConfig
from memprobe.core.inference_measurement import InferenceMeasurement
from memprobe.core.measurement import Environment, Measurement

ConfigT = TypeVar("ConfigT", contravariant=True)
MeasurementT = TypeVar("MeasurementT", covariant=True)


class Measures(Protocol[ConfigT, MeasurementT]):
    """Measures the peak memory of one configuration."""

    kind: DeviceKind

    def environment(self) -> Environment:
        """The device and software this backend measures on."""
        ...

    def measure(self, config: ConfigT) -> MeasurementT:
        """Run the configuration and return its measurement; running out of memory is a result."""
        ...


Backend = Measures[StepConfig, Measurement]  # a training step's
InferenceBackend = Measures[InferenceConfig, InferenceMeasurement]  # a sliding-window inference's
