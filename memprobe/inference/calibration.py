"""A calibrated inference formula for one (architecture, device, precision): no torch needed to use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memprobe.archs.registry import ArchSpec
from memprobe.calibrated_formula import Calibration, FitQuality
from memprobe.formula import evaluate, evaluate_reserved, predict_parameter_count
from memprobe.inference.config import InferenceConfig, Predictor
from memprobe.inference.formula import inference_term_values

INFERENCE = "inference"  # what an inference calibration has in place of a training optimizer


@dataclass(frozen=True)
class InferenceCalibration(Calibration):
    """Fitted coefficients of sliding-window inference (segments ``forward`` and ``stitch``).

    A Calibration with ``optimizer`` set to ``inference`` and no deep supervision, so a plan's
    overheads and margin (``memprobe.overheads``) are charged exactly as for training; predict
    with the ``inference_*`` methods, never the training ones. ``step`` names the predictor
    measured (``monai`` or ``nnunet``: their aggregation differs), read as ``predictor``.
    """

    @property
    def predictor(self) -> Predictor:
        return Predictor.NNUNET if self.step == Predictor.NNUNET.value else Predictor.MONAI

    def _inference_terms(self, spec: ArchSpec, config: InferenceConfig) -> dict[str, float]:
        parameters = predict_parameter_count(
            self.parameter_model, spec, config.roi, config.in_channels, config.out_channels
        )
        return inference_term_values(spec, config, parameters)

    def inference_peak_bytes(self, spec: ArchSpec, config: InferenceConfig) -> float:
        """Predicted peak allocated bytes of the whole inference."""
        return evaluate(self.phase_coefficients, self._inference_terms(spec, config))

    def inference_reserved_bytes(self, spec: ArchSpec, config: InferenceConfig) -> float | None:
        """Predicted peak reserve (never below the allocated peak); None when not fitted."""
        if not self.reserved_coefficients:
            return None
        terms = self._inference_terms(spec, config)
        return evaluate_reserved(self.reserved_coefficients, self.phase_coefficients, terms)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceCalibration:
        fields = dict(data)
        fields["quality"] = FitQuality(**fields["quality"])
        if fields.get("reserved_quality"):
            fields["reserved_quality"] = FitQuality(**fields["reserved_quality"])
        return cls(**fields)
