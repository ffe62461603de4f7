"""A calibrated memory formula for one (architecture, device, precision, optimizer, deep supervision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.config import Setup
from memprobe.core.enums import OptimizerName, Precision, Strategy
from memprobe.formula.terms import evaluate, evaluate_reserved, predict_parameter_count, term_values


@dataclass(frozen=True)
class FitQuality:
    """How well the formula matches measurements: on its own points and on held-out ones."""

    points: int
    median_relative_error: float
    max_relative_error: float
    heldout_points: int = 0
    heldout_median_relative_error: float | None = None
    heldout_max_relative_error: float | None = None


@dataclass(frozen=True)
class Calibration:
    """Fitted coefficients (bytes per unit of each term, per phase) and their quality."""

    arch: str
    device: str  # "trace", "cpu", or the GPU's name
    precision: str
    optimizer: str
    deep_supervision: bool
    phase_coefficients: dict[str, dict[str, float]]
    parameter_model: dict[str, float]
    quality: FitQuality
    environment: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    source: str = "user"  # "user" (a database) or "shipped" (the package's defaults)
    # The allocator's reserve, fitted like the allocated peak (None: a calibration from before
    # memprobe replayed or read the reserve; plans then name the missing term).
    reserved_coefficients: dict[str, dict[str, float]] | None = None
    reserved_quality: FitQuality | None = None
    # The measured range the fit saw: {"batch": [lo, hi], "voxels": [...], "in_channels": [...],
    # "out_channels": [...]}; plans beyond twice it are extrapolations and say so.
    fit_range: dict[str, list[int]] | None = None
    context_bytes: int | None = None  # CUDA context measured with a CUDA calibration
    step: str = "memprobe"  # the training step measured (shipped calibrations have none: memprobe's)
    checkpointing: bool = False  # measured with activation checkpointing
    strategy: str = "single"  # one GPU, or one rank of "ddp" or "fsdp" ...
    world_size: int = 1  # ... out of this many: a plan's batch is per rank
    # Not stored: a trace calibration's gap to real GPUs when the user's own imported snapshots
    # of this architecture measure it (memprobe.store.snapshot_evidence); None: the published evidence.
    trace_gap: float | None = None
    trace_gap_source: str | None = None

    def __repr__(self) -> str:
        modes = [self.precision, self.optimizer]
        modes += ["ds"] if self.deep_supervision else []
        modes += ["checkpointing"] if self.checkpointing else []
        modes += [] if self.step == "memprobe" else [f"step {self.step}"]
        return (
            f"Calibration({self.arch} {' '.join(modes)} on {self.device}, {self.source}: "
            f"{len(self.phase_coefficients)} segments, held-out median error "
            f"{100 * (self.quality.heldout_median_relative_error or 0):.2f}%)"
        )

    @property
    def measured_step(self) -> str:
        """What ran, in a word, as plans and listings show it: the training step (``memprobe``,
        ``nnunet``, a user's); an inference calibration says its sliding window's predictor."""
        return self.step

    @property
    def measured_on_gpu(self) -> bool:
        return self.device not in ("trace", "cpu")

    def _terms(
        self, spec: ArchSpec, patch: Sequence[int], batch: int, in_channels: int, out_channels: int
    ) -> dict[str, float]:
        parameters = predict_parameter_count(self.parameter_model, spec, patch, in_channels, out_channels)
        return term_values(spec, patch, batch, in_channels, out_channels, parameters, self.deep_supervision)

    def predict_peak_bytes(
        self, spec: ArchSpec, patch: Sequence[int], batch: int, in_channels: int = 1, out_channels: int = 2
    ) -> float:
        """Predicted peak allocated bytes of a training step."""
        return evaluate(self.phase_coefficients, self._terms(spec, patch, batch, in_channels, out_channels))

    def predict_reserved_bytes(
        self, spec: ArchSpec, patch: Sequence[int], batch: int, in_channels: int = 1, out_channels: int = 2
    ) -> float | None:
        """Predicted peak reserved bytes (never below the allocated peak); None if not calibrated."""
        if not self.reserved_coefficients:
            return None
        terms = self._terms(spec, patch, batch, in_channels, out_channels)
        return evaluate_reserved(self.reserved_coefficients, self.phase_coefficients, terms)

    def peak_segment(
        self, spec: ArchSpec, patch: Sequence[int], batch: int, in_channels: int = 1, out_channels: int = 2
    ) -> str:
        """The segment of the step (phase, or window of a phase) predicted to hold the peak."""
        parameters = predict_parameter_count(self.parameter_model, spec, patch, in_channels, out_channels)
        terms = term_values(spec, patch, batch, in_channels, out_channels, parameters, self.deep_supervision)
        return max(
            self.phase_coefficients,
            key=lambda segment: sum(
                self.phase_coefficients[segment].get(t, 0.0) * v for t, v in terms.items()
            ),
        )

    @property
    def setup(self) -> Setup:
        """What this calibration answers for (its channels span every count, so they are the defaults)."""
        return Setup(
            arch=self.arch,
            precision=Precision(self.precision),
            optimizer=OptimizerName(self.optimizer),
            deep_supervision=self.deep_supervision,
            step=self.step,
            checkpointing=self.checkpointing,
            strategy=Strategy(self.strategy),
            world_size=self.world_size,
        )

    def answers(self, setup: Setup) -> bool:
        """Whether this calibration answers for ``setup`` (on its own device): the same Setup but channels."""
        return self.setup == replace(setup.setup, in_channels=1, out_channels=2)

    @property
    def key(self) -> tuple[str, str, str, str, bool, str, bool, str, int]:
        """A Setup (less channels) and a device: the calibration store keeps one per key."""
        return (
            self.arch,
            self.device,
            self.precision,
            self.optimizer,
            self.deep_supervision,
            self.step,
            self.checkpointing,
            self.strategy,
            self.world_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        fields = dict(data)
        fields["quality"] = FitQuality(**fields["quality"])
        if fields.get("reserved_quality"):
            fields["reserved_quality"] = FitQuality(**fields["reserved_quality"])
        return cls(**fields)
