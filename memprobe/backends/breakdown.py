"""Where the peak goes: the storages live at the peak, sorted by what they hold.

Used by ``memprobe report``; the normal measuring path does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from memprobe.backends.allocation_tracker import AllocationTracker
from memprobe.training.step import PhaseCallback, TrainingState

CATEGORIES = ("parameters", "gradients", "optimizer_state", "inputs", "activations", "temporaries")


class PeakBreakdown:
    """Collects which storages are gradients and saved activations during a measured step."""

    def __init__(self, tracker: AllocationTracker) -> None:
        self.tracker = tracker
        self.gradient_serials: set[int] = set()
        self.saved_serials: set[int] = set()

    def phase_callback(self, state: TrainingState, inner: PhaseCallback) -> PhaseCallback:
        """Wrap ``inner`` to note the gradients when the optimizer phase begins."""

        def on_phase(name: str | None) -> None:
            if name == "optimizer":
                self.gradient_serials = self._serials(
                    p.grad for p in state.model.parameters() if p.grad is not None
                )
            inner(name)

        return on_phase

    @contextmanager
    def recording_saved_tensors(self) -> Iterator[None]:
        """Note every tensor autograd saves for backward: those are the activations."""

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            serial = self.tracker.serial_of(tensor)
            if serial is not None:
                self.saved_serials.add(serial)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield

    def _serials(self, tensors: Any) -> set[int]:
        return {s for s in (self.tracker.serial_of(t) for t in tensors) if s is not None}

    def classify(self, state: TrainingState) -> dict[str, int]:
        """Bytes of each category among the storages live at the peak."""
        model_tensors = [*state.model.parameters(), *state.model.buffers()]
        optimizer_tensors = [
            v for s in state.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        ]
        owners: list[tuple[str, set[int]]] = [
            ("parameters", self._serials(model_tensors)),
            ("gradients", self.gradient_serials),
            ("optimizer_state", self._serials(optimizer_tensors)),
            ("inputs", self._serials([state.inputs, state.labels])),
            ("activations", self.saved_serials),
        ]
        totals = dict.fromkeys(CATEGORIES, 0)
        for serial, size in self.tracker.peak_storages.items():
            category = next((name for name, serials in owners if serial in serials), "temporaries")
            totals[category] += size
        return totals


def run_with_breakdown(
    tracker: AllocationTracker, state: TrainingState, step: Callable[[TrainingState, PhaseCallback], None]
) -> dict[str, int]:
    """Run the measured step with peak snapshots on, and break the peak down."""
    breakdown = PeakBreakdown(tracker)
    tracker.snapshot_peak = True
    tracker.reset_peak()
    with breakdown.recording_saved_tensors():
        step(state, breakdown.phase_callback(state, tracker.start_phase))
    return breakdown.classify(state)
