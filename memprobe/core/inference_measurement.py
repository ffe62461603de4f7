"""The result of measuring one sliding-window inference over a whole image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memprobe.core.inference_config import InferenceConfig
from memprobe.core.measurement import Environment


@dataclass(frozen=True)
class InferenceMeasurement:
    """Peak GPU memory of one ``sliding_window_inference`` call, network and image included.

    ``peak_allocated_bytes`` counts what would live on the GPU from the call's start to its end:
    the network's parameters, the importance map, the window batches and the network's
    activations and outputs, and, when stitching on the GPU, the input image, the whole-image
    output and the count map. ``phase_peaks_bytes`` holds the peak while the network runs on a
    window batch (``forward``) and outside it (``stitch``: padding, aggregation, the division by
    the count map); the formula fits each. ``peak_reserved_bytes`` is the caching allocator's
    reserve, measured on CUDA or simulated from the tracked allocations (``reserved_source``).
    """

    config: InferenceConfig
    environment: Environment
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None = None
    phase_peaks_bytes: dict[str, int] = field(default_factory=dict)
    reserved_phase_peaks_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None
    oom: bool = False
    error: str | None = None
    parameter_count: int | None = None
    reserved_source: str | None = None
    simulated_allocated_bytes: int | None = None
    context_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return not self.oom and self.error is None and self.peak_allocated_bytes is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "mode": "inference",
            "windows": self.config.windows(),
            "padded_shape": list(self.config.padded_shape),
            "device": self.environment.device_kind,
            "device_name": self.environment.device_name,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "phase_peaks_bytes": dict(self.phase_peaks_bytes),
            "reserved_phase_peaks_bytes": dict(self.reserved_phase_peaks_bytes),
            "seconds": self.seconds,
            "oom": self.oom,
            "error": self.error,
            "parameter_count": self.parameter_count,
            "reserved_source": self.reserved_source,
            "simulated_allocated_bytes": self.simulated_allocated_bytes,
            "context_bytes": self.context_bytes,
            "sliding_window_inference": None if self.config.nnunet else self.config.sliding_window_kwargs(),
            "nnunet_predictor": self.config.nnunet_predictor_kwargs() if self.config.nnunet else None,
            "environment": self.environment.to_dict(),
        }
