"""What a measurement holds, whatever was measured, the machine it was measured on, and a training step's result."""

from __future__ import annotations

from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any, Generic, TypeVar

from memprobe.core.config import StepConfig

ConfigT = TypeVar("ConfigT")


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


# Bump when a change to the measuring code changes what a measurement of the same
# configuration would read: stored measurements of another version are never reused.
MEASUREMENT_CODE_VERSION = 2


@dataclass(frozen=True)
class ReuseKey:
    """What a stored measurement may be reused for besides its configuration and environment.

    ``model_hash`` is a hash of a custom model factory's source file (None for registered
    networks, whose code is pinned by the environment's library versions); ``step_hash`` the
    same for a custom training step's source file.
    """

    code_version: int = MEASUREMENT_CODE_VERSION
    model_hash: str | None = None
    step_hash: str | None = None


@dataclass(frozen=True)
class PeakMeasurement(Generic[ConfigT]):
    """The part every measurement shares: a training step's (``Measurement``) and an inference's.

    ``peak_allocated_bytes`` is what ``torch.cuda.max_memory_allocated`` counts on CUDA; on
    trace and cpu, the live tensor storage, each rounded up to 512 bytes. ``peak_reserved_bytes``
    is the caching allocator's reserve: measured on CUDA, simulated on trace and cpu by
    replaying every allocation through a model of the allocator (``reserved_source`` says
    which), which also gives ``simulated_allocated_bytes`` (blocks after splitting, so unsplit
    tails count). ``phase_peaks_bytes`` and ``reserved_phase_peaks_bytes`` hold the peak of each
    segment (a phase, or on trace a window of one) so the formula can model each.
    ``context_bytes`` is the CUDA context this process holds outside the allocator (CUDA only).
    ``oom`` marks a run out of memory; ``error`` any other failure of an isolated probe.
    """

    config: ConfigT
    environment: Environment
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None = None
    _: KW_ONLY
    phase_peaks_bytes: dict[str, int] = field(default_factory=dict)
    reserved_phase_peaks_bytes: dict[str, int] = field(default_factory=dict)
    oom: bool = False
    error: str | None = None
    parameter_count: int | None = None
    reserved_source: str | None = None  # "measured" (cuda) or "simulated" (trace, cpu)
    simulated_allocated_bytes: int | None = None
    context_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return not self.oom and self.error is None and self.peak_allocated_bytes is not None

    def fits(self, budget_bytes: int | None) -> bool:
        """Whether it ran within ``budget_bytes`` (any budget, if None)."""
        if not self.ok:
            return False
        return budget_bytes is None or (self.peak_allocated_bytes or 0) <= budget_bytes

    def peaks_dict(self) -> dict[str, Any]:
        """The shared fields as JSON-ready values (each kind's ``to_dict`` adds its own)."""
        return {
            "device": self.environment.device_kind,
            "device_name": self.environment.device_name,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "phase_peaks_bytes": dict(self.phase_peaks_bytes),
            "reserved_phase_peaks_bytes": dict(self.reserved_phase_peaks_bytes),
            "oom": self.oom,
            "error": self.error,
            "parameter_count": self.parameter_count,
            "reserved_source": self.reserved_source,
            "simulated_allocated_bytes": self.simulated_allocated_bytes,
            "context_bytes": self.context_bytes,
        }

    @staticmethod
    def peaks_fields(data: dict[str, Any]) -> dict[str, Any]:
        """The shared fields read back from :meth:`peaks_dict` (older records lack some: their defaults)."""
        return {
            "environment": Environment(**data["environment"]),
            "peak_allocated_bytes": data["peak_allocated_bytes"],
            "peak_reserved_bytes": data.get("peak_reserved_bytes"),
            "phase_peaks_bytes": data.get("phase_peaks_bytes", {}),
            "reserved_phase_peaks_bytes": data.get("reserved_phase_peaks_bytes", {}),
            "oom": data.get("oom", False),
            "error": data.get("error"),
            "parameter_count": data.get("parameter_count"),
            "reserved_source": data.get("reserved_source"),
            "simulated_allocated_bytes": data.get("simulated_allocated_bytes"),
            "context_bytes": data.get("context_bytes"),
        }


@dataclass(frozen=True)
class Measurement(PeakMeasurement[StepConfig]):
    """Peak memory of one training step (the second, when optimizer state exists).

    Besides the shared peaks (:class:`PeakMeasurement`): ``phase_peaks_bytes`` are forward
    with loss, backward and optimizer (on trace also windows of each); ``warmup_steps`` the
    steps run before the measured one (until the optimizer had state); ``budget_bytes`` the cap
    the step ran under; ``breakdown_bytes`` what was live at the peak, by kind.
    """

    _: KW_ONLY
    step_seconds: float | None = None
    budget_bytes: int | None = None
    breakdown_bytes: dict[str, int] = field(default_factory=dict)
    warmup_steps: int | None = None

    def __repr__(self) -> str:
        if self.ok:
            outcome = f"allocated {(self.peak_allocated_bytes or 0) / 2**30:.3f} GiB"
        else:
            outcome = "OOM" if self.oom else f"failed: {self.error}"
        return f"Measurement({self.config.label()} on {self.environment.device_name}: {outcome})"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            **self.peaks_dict(),
            "step_seconds": self.step_seconds,
            "budget_bytes": self.budget_bytes,
            "breakdown_bytes": dict(self.breakdown_bytes),
            "warmup_steps": self.warmup_steps,
            "environment": self.environment.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict` (how an isolated probe's child process reports back)."""
        return cls(
            StepConfig.from_dict(data),
            **cls.peaks_fields(data),
            step_seconds=data["step_seconds"],
            budget_bytes=data["budget_bytes"],
            breakdown_bytes=data.get("breakdown_bytes", {}),
            warmup_steps=data.get("warmup_steps"),
        )
