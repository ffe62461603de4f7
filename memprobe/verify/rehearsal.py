"""A rehearsal of `memprobe verify` on the CPU: the same flow and files, none of it GPU truth.

The "CUDA" side executes the step for real on the CPU (the cpu backend), runs out of memory
above the budget like a capped GPU, and records its allocations into a snapshot shaped like
PyTorch's, so that every part of the run, resume included, is exercised without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from memprobe.backends.allocation_tracker import AllocationTracker, cuda_block_size
from memprobe.backends.caching_allocator import FREE
from memprobe.backends.trace_backend import CpuBackend, TraceBackend
from memprobe.core.config import StepConfig
from memprobe.core.enums import DeviceKind
from memprobe.core.measurement import Environment, Measurement
from memprobe.verify.extras import Snapshot
from memprobe.verify.history import trace_allocations
from memprobe.verify.results import ContextSize
from memprobe.verify.run import VerifyTools
from memprobe.verify.safety import suggest_from_calibrations

REHEARSAL_DEVICE = "rehearsal on cpu (not a GPU)"


class RehearsalBackend:
    """The cpu backend standing in for CUDA: a peak above the budget counts as out of memory."""

    kind = DeviceKind.CPU

    def __init__(self, budget_bytes: int | None) -> None:
        self.budget_bytes = budget_bytes
        self._cpu = CpuBackend()

    def environment(self) -> Environment:
        return replace(self._cpu.environment(), device_name=REHEARSAL_DEVICE)

    def measure(self, config: StepConfig) -> Measurement:
        measurement = self._cpu.measure(config)
        peak = measurement.peak_allocated_bytes
        if self.budget_bytes is not None and peak is not None and peak > self.budget_bytes:
            return replace(measurement, peak_allocated_bytes=None, oom=True, budget_bytes=self.budget_bytes)
        return replace(measurement, budget_bytes=self.budget_bytes)


class RehearsalExtras:
    """No context to measure; the memory history is the cpu step's own allocations."""

    def available(self) -> bool:
        return True

    def context_size(self) -> ContextSize:
        return ContextSize(
            total_bytes=0, used_before_bytes=None, used_after_init_bytes=0, reserved_after_init_bytes=0
        )

    def record_history(self, run: Callable[[], object]) -> Snapshot:
        recorder = AllocationTracker()
        with recorder:
            run()
        events: list[dict[str, Any]] = [
            {
                "action": "alloc",
                "size": cuda_block_size(nbytes),
                "frames": [{"filename": "cpu", "line": 0, "name": op}],
            }
            for _, nbytes, op in recorder.events
            if nbytes != FREE
        ]
        return {"segments": [], "device_traces": [events]}

    @contextlib.contextmanager
    def cudnn_benchmark(self, enabled: bool) -> Iterator[None]:
        yield


def rehearsal_tools(db: Any = None) -> VerifyTools:
    """Collaborators that run the whole verify flow on the CPU."""
    return VerifyTools(
        device=REHEARSAL_DEVICE,
        cuda_backend=lambda budget, three_steps: RehearsalBackend(budget),
        trace_backend=TraceBackend(),
        extras=RehearsalExtras(),
        trace_allocations=trace_allocations,
        suggest=lambda case, budget: suggest_from_calibrations(case, budget, db),
        rehearsal=True,
    )
