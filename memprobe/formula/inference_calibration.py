"""A calibrated inference formula for one (architecture, device, precision): no torch needed to use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.inference_config import InferenceConfig, Predictor
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.formula.inference_terms import buffered_peak, inference_term_values
from memprobe.formula.terms import evaluate, evaluate_reserved, predict_parameter_count

INFERENCE = "inference"  # what an inference calibration has in place of a training optimizer and step


@dataclass(frozen=True)
class InferenceCalibration(Calibration):
    """Fitted coefficients of sliding-window inference (segments ``forward`` and ``stitch``).

    A Calibration with ``optimizer`` and ``step`` set to ``inference`` and no deep supervision,
    so a plan's overheads and margin (``memprobe.planning.overheads``) are charged exactly as
    for training; predict with the ``inference_*`` methods, never the training ones.
    ``predictor`` names the sliding window measured (MONAI's or nnU-Net's: their aggregation
    differs).
    """

    step: str = INFERENCE
    predictor: Predictor = Predictor.MONAI

    @property
    def key(self) -> tuple[str, str, str, str, str]:  # type: ignore[override]
        """What the store keeps one of: architecture, device, precision and predictor."""
        return self.arch, self.device, self.precision, INFERENCE, self.predictor.value

    @property
    def measured_step(self) -> str:
        """The sliding window's predictor (``monai`` or ``nnunet``): what an inference calibration measured."""
        return self.predictor.value

    def answers_inference(self, arch: str, precision: str, predictor: Predictor) -> bool:
        """Whether this calibration answers for an inference of ``arch`` by ``predictor`` at ``precision``."""
        return (self.arch, self.precision, self.predictor) == (arch, precision, predictor)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "predictor": self.predictor.value}

    def _inference_terms(self, spec: ArchSpec, config: InferenceConfig) -> dict[str, float]:
        parameters = predict_parameter_count(
            self.parameter_model, spec, config.roi, config.in_channels, config.out_channels
        )
        return inference_term_values(spec, config, parameters)

    def inference_peak_bytes(self, spec: ArchSpec, config: InferenceConfig) -> float:
        """Predicted peak allocated bytes of the whole inference, MONAI's ``buffer_steps`` buffer included."""
        terms = self._inference_terms(spec, config)
        segments = {name: evaluate({name: c}, terms) for name, c in self.phase_coefficients.items()}
        return buffered_peak(segments, config)

    def inference_buffer_bytes(self, spec: ArchSpec, config: InferenceConfig) -> float:
        """What MONAI's ``buffer_steps`` buffer adds to the predicted peak (0 without it)."""
        if not config.buffer_steps:
            return 0.0
        unbuffered = evaluate(self.phase_coefficients, self._inference_terms(spec, config))
        return self.inference_peak_bytes(spec, config) - unbuffered

    def inference_reserved_bytes(self, spec: ArchSpec, config: InferenceConfig) -> float | None:
        """Predicted peak reserve (never below the allocated peak); None when not fitted.

        The ``buffer_steps`` buffer is one allocation of its own: it adds its bytes to the reserve.
        """
        if not self.reserved_coefficients:
            return None
        terms = self._inference_terms(spec, config)
        reserved = evaluate_reserved(self.reserved_coefficients, self.phase_coefficients, terms)
        return reserved + self.inference_buffer_bytes(spec, config)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceCalibration:
        """Inverse of :meth:`to_dict`; a record from before ``predictor`` was a field named it as its ``step``."""
        fields = dict(data)
        fields["quality"] = FitQuality(**fields["quality"])
        if fields.get("reserved_quality"):
            fields["reserved_quality"] = FitQuality(**fields["reserved_quality"])
        return cls(**with_predictor(fields))


def with_predictor(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with ``predictor`` a Predictor and ``step`` ``inference``, also from a record that kept its predictor as its step."""
    step = str(fields.get("step", INFERENCE))
    predictor = fields.get("predictor") or (step if step in set(Predictor) else Predictor.MONAI.value)
    return {**fields, "step": INFERENCE, "predictor": Predictor(predictor)}
