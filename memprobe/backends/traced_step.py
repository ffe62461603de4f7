"""A traced step's allocation history, as the trace and cpu backends hand it to the exporter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from memprobe.backends.caching_allocator import Event


@dataclass(frozen=True)
class TracedStep:
    """What the trace backend recorded: events, where the measured step begins, and labels."""

    events: Sequence[Event]
    measured_from: int
    phase_starts: Sequence[tuple[int, str]] = ()
    modules: Mapping[int, str] | None = None  # allocation serial -> module path
    description: str = ""
