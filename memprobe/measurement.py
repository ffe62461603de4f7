"""The result of measuring one training step, and the machine it was measured on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from memprobe.config import StepConfig


@dataclass(frozen=True)
class Environment:
    """Where a measurement was taken: enough to tell two GPUs and software stacks apart."""

    device_kind: str  # cuda, trace or cpu
    device_name: str  # GPU name for cuda; "trace" / "cpu" otherwise
    total_memory_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    torch_version: str | None = None
    monai_version: str | None = None
    memprobe_version: str | None = None
    host: str | None = None

    @property
    def calibration_device(self) -> str:
        """The name calibrations are keyed by: the GPU name on CUDA, else the backend."""
        return self.device_name if self.device_kind == "cuda" else self.device_kind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Measurement:
    """Peak memory of one training step (the second, when optimizer state exists).

    ``peak_allocated_bytes`` is what ``torch.cuda.max_memory_allocated`` counts (tensor blocks,
    rounded up to 512 bytes); ``peak_reserved_bytes`` is the caching allocator's reserve, known
    only on CUDA. ``phase_peaks_bytes`` holds the peak of each phase of the step (forward with
    loss, backward, optimizer) so the formula can model each. ``oom`` marks a step that ran out
    of memory; ``error`` records any other failure of an isolated probe.
    """

    config: StepConfig
    environment: Environment
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None = None
    phase_peaks_bytes: dict[str, int] = field(default_factory=dict)
    step_seconds: float | None = None
    oom: bool = False
    error: str | None = None
    budget_bytes: int | None = None
    parameter_count: int | None = None
    breakdown_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.oom and self.error is None and self.peak_allocated_bytes is not None

    def fits(self, budget_bytes: int | None) -> bool:
        """Whether the step ran within ``budget_bytes`` (any budget, if None)."""
        if not self.ok:
            return False
        return budget_bytes is None or (self.peak_allocated_bytes or 0) <= budget_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "device": self.environment.device_kind,
            "device_name": self.environment.device_name,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "phase_peaks_bytes": dict(self.phase_peaks_bytes),
            "step_seconds": self.step_seconds,
            "oom": self.oom,
            "error": self.error,
            "budget_bytes": self.budget_bytes,
            "parameter_count": self.parameter_count,
            "breakdown_bytes": dict(self.breakdown_bytes),
            "environment": self.environment.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict` (how an isolated probe's child process reports back)."""
        from memprobe.enums import OptimizerName, Precision

        config = StepConfig(
            arch=data["arch"],
            patch=tuple(data["patch"]),
            batch=data["batch"],  # type: ignore[arg-type]
            precision=Precision(data["precision"]),
            optimizer=OptimizerName(data["optimizer"]),
            in_channels=data["in_channels"],
            out_channels=data["out_channels"],
            deep_supervision=data["deep_supervision"],
        )
        return cls(
            config=config,
            environment=Environment(**data["environment"]),
            peak_allocated_bytes=data["peak_allocated_bytes"],
            peak_reserved_bytes=data["peak_reserved_bytes"],
            phase_peaks_bytes=data["phase_peaks_bytes"],
            step_seconds=data["step_seconds"],
            oom=data["oom"],
            error=data["error"],
            budget_bytes=data["budget_bytes"],
            parameter_count=data["parameter_count"],
            breakdown_bytes=data.get("breakdown_bytes", {}),
        )
