"""One calibration for every topology of a network: per-stage terms fitted across topologies.

nnU-Net's networks change their topology with the patch, and each topology is calibrated as
its own architecture. Their memory differs only in where each stage's feature maps are: stage
``s`` of every topology has the same convolutions and width, at voxels that follow the
per-axis strides. So the peak of a step is written with terms per stage,

    peak = max over phases of  c . (constant, parameters, input_voxels, output_voxels)
                               + sum_s e_s * batch * V_s * C_s + sum_{s < S-1} d_s * batch * V_s * C_s

(``e_s`` the encoder's bytes per feature-map voxel at depth ``s``, ``d_s`` the decoder's, which
the bottleneck lacks), and the coefficients are fitted to measurements of several topologies
at once. The segments are those that mean the same ops in every topology: the forward and
optimizer phases, and the backward pass in a few parts (``comparable_segments``).

The family is validated by leaving each topology out: fitted to the others, it predicts the
left-out one's measured peaks. Those errors are the family's held-out quality, so a plan made
from a prediction keeps a margin for them. ``calibration_for`` writes the family as a
calibration of one topology (the per-stage coefficients summed into its ``feature_maps``), and
planning uses it as any calibration.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from memprobe.core.archs.registry import ArchSpec
from memprobe.formula.calibration import Calibration, FitQuality
from memprobe.formula.fit import (
    RESERVED,
    Fittable,
    TermModel,
    fit_phase_coefficients,
    fit_reserved_coefficients,
    has_reserved,
    measured_range,
    relative_errors,
)
from memprobe.formula.terms import stage_voxels, term_values

MAX_STAGES = 9  # nnU-Net's names carry up to 8 strides after the first stage
SHARED_TERMS = ("constant", "parameters", "input_voxels", "output_voxels")
STAGE_TERMS = tuple(f"encoder.{s}" for s in range(MAX_STAGES)) + tuple(
    f"decoder.{s}" for s in range(MAX_STAGES - 1)
)
FAMILY_TERMS = SHARED_TERMS + STAGE_TERMS
# How much more of the feature maps a stage may hold than in any fitted topology: even a
# coefficient off by its whole size moves a prediction by about this share (half a percent).
SHARE_TOLERANCE = 0.005


def stage_term_values(
    spec: ArchSpec, patch: Sequence[int], batch: int, in_channels: int, out_channels: int, parameters: float
) -> dict[str, float]:
    """The family's terms for one configuration of one topology (deep supervision's heads included)."""
    shared = term_values(spec, patch, batch, in_channels, out_channels, parameters, deep_supervision=True)
    values = {term: shared[term] for term in SHARED_TERMS} | dict.fromkeys(STAGE_TERMS, 0.0)
    stages = len(spec.stage_features)
    voxels = stage_voxels(patch, stages, spec.stage_strides)
    for s, (count, width) in enumerate(zip(voxels, spec.stage_features, strict=True)):
        values[f"encoder.{s}"] = float(batch * count * width)
        if s < stages - 1:
            values[f"decoder.{s}"] = float(batch * count * width)
    return values


BACKWARD_PARTS = 6  # the backward pass's windows, grouped into this many consecutive parts


def comparable_segments(peaks: Mapping[str, int]) -> dict[str, int]:
    """Segment peaks that mean the same ops in every topology: whole phases, the backward pass in parts.

    A window of a phase is a fixed share of its ops, which are other ops in another topology;
    the forward and optimizer phases are one segment each. The backward pass's peak moves
    from its start (activations held) to its end (gradients of the parameters) as the patch
    shrinks, which no single linear segment follows: its windows are grouped into
    ``BACKWARD_PARTS`` consecutive parts, each the largest of its windows. Without windows
    (a CUDA measurement) the phases are the segments.

    The number of parts was chosen by the leave-one-topology-out error of the shipped ResEnc
    topologies with 1, 2, 3, 4 and 6 parts (worst 10%, 6.4%, 1.8%, 0.27%, 0.07%; 8 parts fitted
    PlainConvUNet worse); topologies never shipped check the choice in benchmarks/nnunet_plan.py.
    """
    result = {name: peak for name, peak in peaks.items() if "." not in name and name != "backward"}
    windows = sorted(name for name in peaks if name.startswith("backward."))
    if not windows:
        return result | ({"backward": peaks["backward"]} if "backward" in peaks else {})
    for part in range(BACKWARD_PARTS):
        low, high = (
            round(part * len(windows) / BACKWARD_PARTS),
            round((part + 1) * len(windows) / BACKWARD_PARTS),
        )
        if high > low:
            result[f"backward_{part + 1}"] = max(peaks[name] for name in windows[low:high])
    return result


@dataclass(frozen=True)
class _Segmented:
    """A measurement seen through its comparable segments, with its topology's spec."""

    config: Any
    spec: ArchSpec
    ok: bool
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    phase_peaks_bytes: dict[str, int]
    reserved_phase_peaks_bytes: dict[str, int]
    parameter_count: int | None
    context_bytes: int | None = None  # a family is fitted to trace measurements: no CUDA context

    @classmethod
    def of(cls, m: Fittable, spec: ArchSpec) -> _Segmented:
        peaks, reserved = m.phase_peaks_bytes, m.reserved_phase_peaks_bytes
        return cls(
            m.config, spec, m.ok, m.peak_allocated_bytes, m.peak_reserved_bytes,
            comparable_segments(peaks), comparable_segments(reserved), m.parameter_count,
        )  # fmt: skip


def _term_model() -> TermModel:
    def values(m: Any) -> dict[str, float]:
        c = m.config
        return stage_term_values(
            m.spec, c.patch, c.batch, c.in_channels, c.out_channels, float(m.parameter_count or 0)
        )

    # the parameter count of every topology is known exactly, measured or counted: no model of it
    return TermModel(FAMILY_TERMS, values, lambda m, model: values(m))


@dataclass(frozen=True)
class TopologyFamily:
    """Per-stage coefficients shared by the topologies of one network, and how well they generalise.

    ``quality`` holds the errors on the fitted points and, as held-out figures, those of each
    topology predicted by a fit without it; ``leave_one_out`` the worst such error per topology.
    """

    network: str  # "nnunet" or "nnunet-resenc"
    device: str
    precision: str
    optimizer: str
    deep_supervision: bool
    step: str
    phase_coefficients: dict[str, dict[str, float]]
    quality: FitQuality
    topologies: tuple[str, ...]
    stages: tuple[int, int]  # the fewest and most stages among them: the range that was validated
    stage_shares: tuple[
        float, ...
    ]  # per stage, the largest share of the feature maps any of them holds there
    leave_one_out: dict[str, float]
    fit_range: dict[str, list[int]]
    reserved_coefficients: dict[str, dict[str, float]] | None = None
    reserved_quality: FitQuality | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    source: str = "user"

    def __repr__(self) -> str:
        worst = self.quality.heldout_max_relative_error or 0.0
        return (
            f"TopologyFamily({self.network} {self.precision} on {self.device}, {self.source}: "
            f"{len(self.topologies)} topologies, {self.stages[0]}-{self.stages[1]} stages, "
            f"leave-one-topology-out worst {100 * worst:.2f}%)"
        )

    def answers(self, calibration_key: tuple[str, str, str, bool, str]) -> bool:
        """Whether the family is of these modes: (device, precision, optimizer, deep supervision, step)."""
        return calibration_key == (
            self.device,
            self.precision,
            self.optimizer,
            self.deep_supervision,
            self.step,
        )

    def uncovered(self, spec: ArchSpec) -> str | None:
        """Why ``spec``'s topology is outside what the family was validated on; None when inside.

        Inside: as many stages as some fitted topology, and no stage holding a larger share of
        the feature maps than some fitted topology holds there, give or take ``SHARE_TOLERANCE``.
        The per-stage coefficients are pinned down only by the mixes of stages the fitted
        topologies have; a stage weighing more than it ever did (three in-plane poolings where
        two were seen) is an extrapolation.
        """
        low, high = self.stages
        stages = len(spec.stage_features)
        if not low <= stages <= high:
            return f"{spec.name} has {stages} stages, the {self.network} family was validated on {low}-{high}"
        for stage, (share, seen) in enumerate(zip(feature_map_shares(spec), self.stage_shares, strict=False)):
            if share > seen + SHARE_TOLERANCE:
                return (
                    f"stage {stage} of {spec.name} holds {100 * share:.1f}% of its feature maps, more than in any "
                    f"topology the {self.network} family was validated on ({100 * seen:.1f}%)"
                )
        return None

    def calibration_for(self, spec: ArchSpec, parameter_model: Mapping[str, float]) -> Calibration:
        """The family written as a calibration of ``spec``'s topology (its patches divisible by its strides).

        Stage ``s`` holds ``V_0 / R_s`` voxels of width ``C_s`` (``R_s`` the product of the
        strides down to it), so the per-stage terms are fixed shares of ``feature_maps``.
        """
        shares = _term_shares(spec)
        return Calibration(
            arch=spec.name,
            device=self.device,
            precision=self.precision,
            optimizer=self.optimizer,
            deep_supervision=self.deep_supervision,
            phase_coefficients=_collapsed(self.phase_coefficients, shares),
            parameter_model=dict(parameter_model),
            quality=self.quality,
            environment=self.environment,
            created_at=self.created_at,
            source=f"predicted by the {self.network} topology family ({self.source})",
            reserved_coefficients=(
                _collapsed(self.reserved_coefficients, shares) if self.reserved_coefficients else None
            ),
            reserved_quality=self.reserved_quality,
            fit_range=self.fit_range,
            step=self.step,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopologyFamily:
        fields = dict(data)
        fields["quality"] = FitQuality(**fields["quality"])
        if fields.get("reserved_quality"):
            fields["reserved_quality"] = FitQuality(**fields["reserved_quality"])
        fields["topologies"] = tuple(fields["topologies"])
        fields["stage_shares"] = tuple(float(share) for share in fields["stage_shares"])
        low, high = fields["stages"]
        fields["stages"] = (int(low), int(high))
        return cls(**fields)


def feature_map_shares(spec: ArchSpec) -> list[float]:
    """Each stage's share of the feature maps (voxels times width) of a patch divisible by the strides."""
    reduction, weights = 1, []
    for s, width in enumerate(spec.stage_features):
        stride = spec.stage_strides[s] if s < len(spec.stage_strides) else (2, 2, 2)
        reduction *= stride[0] * stride[1] * stride[2]
        weights.append(width / reduction)
    return [weight / sum(weights) for weight in weights]


def _term_shares(spec: ArchSpec) -> dict[str, float]:
    """Each stage term as a share of ``feature_maps`` for this topology."""
    shares = feature_map_shares(spec)
    return {f"encoder.{s}": w for s, w in enumerate(shares)} | {
        f"decoder.{s}": w for s, w in enumerate(shares[:-1])
    }


def _collapsed(
    coefficients: Mapping[str, Mapping[str, float]], shares: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    result = {}
    for segment, values in coefficients.items():
        written = {term: float(values.get(term, 0.0)) for term in SHARED_TERMS}
        written["feature_maps"] = sum(values.get(term, 0.0) * share for term, share in shares.items())
        result[segment] = written
    return result


def fit_family(
    network: str,
    measurements: Sequence[Fittable],
    spec_of: Callable[[str], ArchSpec],
    device: str,
    environment: Mapping[str, Any] | None = None,
) -> TopologyFamily:
    """Fit the per-stage coefficients to measurements of several topologies of ``network``.

    Each topology is also left out once and predicted by a fit to the others: those errors
    are the family's held-out quality and ``leave_one_out``.

    Raises:
        InvalidInputError: fewer than two topologies, or too few usable points to fit.
    """
    from memprobe.core.errors import InvalidInputError

    usable = [_Segmented.of(m, spec_of(m.config.arch)) for m in measurements if m.ok and m.parameter_count]
    topologies = tuple(sorted({m.config.arch for m in usable}))
    fewest = (
        len(usable) - max(sum(m.config.arch == t for m in usable) for t in topologies) if topologies else 0
    )
    if len(topologies) < 2 or fewest < len(FAMILY_TERMS):
        raise InvalidInputError(
            f"a topology family of {network} is fitted without each of its topologies in turn: it needs "
            f"{len(FAMILY_TERMS)} measurements besides any one topology, got {fewest} ({len(topologies)} topologies)"
        )
    allocated, reserved = _fit(network, usable)
    left_out: dict[str, list[float]] = {}
    reserved_left_out: list[float] = []
    for topology in topologies:
        rest = [m for m in usable if m.config.arch != topology]
        own = [m for m in usable if m.config.arch == topology]
        coefficients, reserve = _fit(network, rest)
        left_out[topology] = _errors(network, coefficients, own)
        if reserve is not None:
            reserved_left_out += _errors(network, reserve, own, RESERVED, coefficients)
    first = usable[0]
    return TopologyFamily(
        network=network,
        device=device,
        precision=first.config.precision.value,
        optimizer=first.config.optimizer.value,
        deep_supervision=first.config.deep_supervision,
        step=first.config.step,
        phase_coefficients=allocated,
        quality=_quality(_errors(network, allocated, usable), [e for v in left_out.values() for e in v]),
        topologies=topologies,
        stages=(
            min(len(m.spec.stage_features) for m in usable),
            max(len(m.spec.stage_features) for m in usable),
        ),
        stage_shares=_largest_shares(usable),
        leave_one_out={topology: max(errors) for topology, errors in left_out.items()},
        fit_range=measured_range(usable),
        reserved_coefficients=reserved,
        reserved_quality=(
            _quality(_errors(network, reserved, usable, RESERVED, allocated), reserved_left_out)
            if reserved is not None
            else None
        ),
        environment=dict(environment or {}),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _largest_shares(usable: Sequence[_Segmented]) -> tuple[float, ...]:
    largest = [0.0] * MAX_STAGES
    for m in usable:
        for stage, share in enumerate(feature_map_shares(m.spec)):
            largest[stage] = max(largest[stage], share)
    return tuple(largest)


def _family_spec(network: str, usable: Sequence[_Segmented]) -> ArchSpec:
    """The spec fit.py names in its messages: the family, not one of its topologies."""
    return replace(usable[0].spec, name=f"{network} (all topologies)")


def _fit(
    network: str, usable: Sequence[_Segmented]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]] | None]:
    spec, model = _family_spec(network, usable), _term_model()
    allocated = fit_phase_coefficients(spec, usable, model=model)
    reserved = None
    if has_reserved(usable):
        reserved = fit_reserved_coefficients(spec, usable, allocated, {}, model)
    return allocated, reserved


def _errors(
    network: str,
    coefficients: dict[str, dict[str, float]],
    measurements: Sequence[_Segmented],
    quantity: str = "allocated",
    allocated: dict[str, dict[str, float]] | None = None,
) -> list[float]:
    spec = _family_spec(network, measurements)
    return relative_errors(spec, coefficients, {}, measurements, quantity, allocated, _term_model())


def _quality(fitted: Sequence[float], heldout: Sequence[float]) -> FitQuality:
    return FitQuality(
        points=len(fitted),
        median_relative_error=statistics.median(fitted) if fitted else 0.0,
        max_relative_error=max(fitted, default=0.0),
        heldout_points=len(heldout),
        heldout_median_relative_error=statistics.median(heldout) if heldout else None,
        heldout_max_relative_error=max(heldout) if heldout else None,
    )
