"""The result of measuring one sliding-window inference over a whole image."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

from memprobe.core.inference_config import InferenceConfig
from memprobe.core.measurement import PeakMeasurement

# Bump when a change to the inference measuring code changes what a measurement would read:
# stored inference measurements of another version are never reused.
INFERENCE_CODE_VERSION = 2  # 2: an eval-mode dropout is the identity on trace, as on a GPU


@dataclass(frozen=True)
class InferenceMeasurement(PeakMeasurement[InferenceConfig]):
    """Peak GPU memory of one ``sliding_window_inference`` call, network and image included.

    ``peak_allocated_bytes`` counts what would live on the GPU from the call's start to its end:
    the network's parameters, the importance map, the window batches and the network's
    activations and outputs, and, when stitching on the GPU, the input image, the whole-image
    output and the count map. ``phase_peaks_bytes`` holds the peak while the network runs on a
    window batch (``forward``) and outside it (``stitch``: padding, aggregation, the division by
    the count map); the formula fits each. The rest is shared with a training step's
    measurement (:class:`memprobe.core.measurement.PeakMeasurement`).
    """

    _: KW_ONLY
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "mode": "inference",
            "windows": self.config.windows(),
            "padded_shape": list(self.config.padded_shape),
            **self.peaks_dict(),
            "seconds": self.seconds,
            "sliding_window_inference": None if self.config.nnunet else self.config.sliding_window_kwargs(),
            "nnunet_predictor": self.config.nnunet_predictor_kwargs() if self.config.nnunet else None,
            "environment": self.environment.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceMeasurement:
        """Inverse of :meth:`to_dict` (how an isolated probe's child process reports back)."""
        return cls(InferenceConfig.from_dict(data), **cls.peaks_fields(data), seconds=data.get("seconds"))
