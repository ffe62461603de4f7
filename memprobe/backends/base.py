"""The Backend protocol every measuring backend follows (a leaf: it imports no backend)."""

from __future__ import annotations

from typing import Protocol

from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind
from memprobe.core.measurement import Environment, Measurement


class Backend(Protocol):
    """Measures the peak memory of one training step."""

    kind: DeviceKind

    def environment(self) -> Environment:
        """The device and software this backend measures on."""
        ...

    def measure(self, config: StepConfig) -> Measurement:
        """Run the step and return its measurement; running out of memory is a result."""
        ...
