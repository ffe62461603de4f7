"""Predicting nnU-Net topologies never measured (#28): parameter counts, topology families, shipped files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from memprobe.core.archs.nnunet_topology import parse_arch_name
from memprobe.core.archs.registry import resolve_arch
from memprobe.core.config import StepConfig, make_step_config
from memprobe.formula.topology_family import (
    BACKWARD_PARTS,
    TopologyFamily,
    comparable_segments,
    fit_family,
    stage_term_values,
)
from memprobe.integrations.nnunet.parameters import parameter_count, parameter_model

TOPOLOGIES = (
    "nnunet[222.222.222.222]",
    "nnunet[122.222.222.222.222]",
    "nnunet[122.122.222.222.222.122]",
    "nnunet[222.222.222.222.221]",
    "nnunet[122.222.222.222.222.222.222]",
)
WINDOWS = {"forward": 8, "backward": 24, "optimizer": 2}


@pytest.mark.parametrize(
    "name",
    ["nnunet[122.222.222]", "nnunet[222.222.222.222.221]", "nnunet-resenc[122.122.222.222.222.222.122]"],
)
def test_the_parameter_count_is_the_built_networks(name: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("dynamic_network_architectures")
    from memprobe.training.networks import build_model

    network, topology = parse_arch_name(name)  # type: ignore[misc]
    for channels, classes in ((1, 2), (4, 16)):
        with torch.device("meta"):
            model = build_model(resolve_arch(name), channels, classes, deep_supervision=True)
        built = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counted = parameter_count(network.split("-m")[0], topology, channels, classes)
        assert counted == built
        model_count = parameter_model(network.split("-m")[0], topology)
        linear = model_count["constant"] + channels * model_count["in_channels"]
        assert linear + classes * model_count["out_channels"] == built


@dataclass(frozen=True)
class _Step:
    """A measurement as a fit reads it, its peaks made by a model of the family's own form."""

    config: StepConfig
    phase_peaks_bytes: dict[str, int]
    parameter_count: int
    reserved_phase_peaks_bytes: dict[str, int] = field(default_factory=dict)
    ok: bool = True
    peak_reserved_bytes: int | None = None

    @property
    def peak_allocated_bytes(self) -> int:
        return self.phase_peaks_bytes["step"]


def _coefficients(part: int) -> dict[str, float]:
    """Bytes per unit of each family term in a segment: stages deeper cost less, as in a UNet."""
    stages = {f"encoder.{s}": 6.0 / (1 + s) + part for s in range(9)}
    stages |= {f"decoder.{s}": 4.0 / (1 + s) + 0.5 * part for s in range(8)}
    return {"constant": 3e8, "parameters": 4.0 + part, "input_voxels": 2.0, "output_voxels": 5.0} | stages


def _modelled(arch: str, patch: Sequence[int], batch: int, channels: int = 1, classes: int = 2) -> _Step:
    """Window peaks: in each comparable segment the first window holds the segment's peak."""
    network, topology = parse_arch_name(arch)  # type: ignore[misc]
    parameters = parameter_count(network, topology, channels, classes)
    terms = stage_term_values(resolve_arch(arch), patch, batch, channels, classes, parameters)
    peaks: dict[str, int] = {}
    for phase, count in WINDOWS.items():
        for window in range(count):
            part = window * BACKWARD_PARTS // count if phase == "backward" else 7 + len(phase)
            value = sum(_coefficients(part)[t] * v for t, v in terms.items())
            first = phase != "backward" or window * BACKWARD_PARTS % count == 0
            peaks[f"{phase}.{window:02d}"] = round(value * (1.0 if first else 0.97))
        peaks[phase] = max(v for k, v in peaks.items() if k.startswith(phase + "."))
    peaks["step"] = max(peaks[phase] for phase in WINDOWS)
    config = make_step_config(
        arch, patch, batch, precision="fp16-mixed", in_channels=channels, out_channels=classes,
        deep_supervision=True, step="nnunet",
    )  # fmt: skip
    return _Step(config, peaks, parameters)


def _design(arch: str) -> list[_Step]:
    divisors = resolve_arch(arch).divisors or (1, 1, 1)
    steps = [_modelled(arch, [k * d for d in divisors], b) for k in (2, 3, 4, 5, 6) for b in (1, 2)]
    return [*steps, _modelled(arch, [4 * d for d in divisors], 1, 4, 8)]


def test_the_family_is_written_as_a_calibration_of_each_topology() -> None:
    """Peaks of the family's own form are fitted exactly, and each topology's calibration repeats them."""
    steps = [s for arch in TOPOLOGIES for s in _design(arch)]
    family = fit_family("nnunet", steps, resolve_arch, "trace")
    assert set(family.leave_one_out) == set(TOPOLOGIES) and family.stages == (5, 8)
    assert family.quality.max_relative_error < 1e-6
    for arch in TOPOLOGIES:
        spec = resolve_arch(arch)
        calibration = family.calibration_for(spec, parameter_model("nnunet", parse_arch_name(arch)[1]))  # type: ignore[index]
        for step in _design(arch):
            c = step.config
            predicted = calibration.predict_peak_bytes(spec, c.patch, c.batch, c.in_channels, c.out_channels)
            assert predicted == pytest.approx(step.peak_allocated_bytes, rel=1e-6)
        assert "predicted by the nnunet topology family" in calibration.source


def test_a_topology_never_measured_with_the_stages_of_a_fitted_one_is_predicted() -> None:
    """nnunet[222.222.222.222.221] pools like nnunet[222.222.222.222.122] along other axes: same stage shares."""
    twin, unseen = "nnunet[222.222.222.222.122]", "nnunet[222.222.222.222.221]"
    fitted = [a for a in TOPOLOGIES if a != unseen] + [twin]
    family = fit_family("nnunet", [s for arch in fitted for s in _design(arch)], resolve_arch, "trace")
    spec = resolve_arch(unseen)
    assert unseen not in family.topologies and family.uncovered(spec) is None
    calibration = family.calibration_for(spec, parameter_model("nnunet", parse_arch_name(unseen)[1]))  # type: ignore[index]
    for step in _design(unseen):
        c = step.config
        predicted = calibration.predict_peak_bytes(spec, c.patch, c.batch, c.in_channels, c.out_channels)
        assert predicted == pytest.approx(step.peak_allocated_bytes, rel=1e-6)


def test_a_topology_off_the_family_shows_in_its_leave_one_out_error() -> None:
    """One of two twins 5% above the family's form: leaving either out predicts it 5% off."""
    twin, odd = "nnunet[222.222.222.222.122]", "nnunet[222.222.222.222.221]"
    steps = []
    for arch in (*TOPOLOGIES, twin):
        scale = 1.05 if arch == odd else 1.0
        for step in _design(arch):
            peaks = {k: round(v * scale) for k, v in step.phase_peaks_bytes.items()}
            steps.append(replace(step, phase_peaks_bytes=peaks))
    family = fit_family("nnunet", steps, resolve_arch, "trace")
    assert family.leave_one_out[odd] > 0.04 and family.leave_one_out[twin] > 0.04
    assert family.quality.heldout_max_relative_error == max(family.leave_one_out.values())


def test_the_segments_mean_the_same_ops_in_every_topology() -> None:
    peaks = {f"backward.{w:02d}": w for w in range(24)} | {"backward": 23, "forward": 5, "forward.00": 5}
    segments = comparable_segments(peaks)
    assert segments == {"forward": 5} | {f"backward_{p + 1}": 4 * p + 3 for p in range(BACKWARD_PARTS)}
    assert comparable_segments({"forward": 1, "backward": 2, "optimizer": 3}) == {
        "forward": 1, "optimizer": 3, "backward": 2,
    }  # fmt: skip


def test_a_family_answers_only_inside_what_it_was_validated_on() -> None:
    steps = [s for arch in TOPOLOGIES[:3] for s in _design(arch)]
    family = fit_family("nnunet", steps, resolve_arch, "trace")
    assert family.stages == (5, 7)
    assert family.uncovered(resolve_arch("nnunet[122.222.222.222.222]")) is None
    assert "4 stages" in (family.uncovered(resolve_arch("nnunet[222.222.222]")) or "")
    assert "8 stages" in (family.uncovered(resolve_arch("nnunet[122.222.222.222.222.222.222]")) or "")
    # three in-plane poolings first: stage 3 holds more of the feature maps than it ever did
    assert "stage 3 of" in (family.uncovered(resolve_arch("nnunet[122.122.122.222.222]")) or "")
    assert TopologyFamily.from_dict(json.loads(json.dumps(family.to_dict()))) == family


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)


def test_the_shipped_topologies_and_families_load(shipped: None) -> None:
    from memprobe.store.calibration_sources import shipped_calibrations, shipped_topology_families

    topologies = [c for c in shipped_calibrations() if c.step == "nnunet"]
    families = shipped_topology_families()
    assert {f.network for f in families} == {"nnunet", "nnunet-resenc"}
    shipped_names = {c.arch for c in topologies}
    for family in families:
        assert set(family.topologies) <= shipped_names and family.source == "shipped"
        # the bar: a topology left out is predicted within 2% of its trace peaks
        assert max(family.leave_one_out.values()) < 0.02, family.leave_one_out


def test_a_bad_shipped_family_is_skipped_with_a_warning(
    shipped: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import resources

    from memprobe.store import calibration_sources

    good = json.loads(resources.files("memprobe.data").joinpath("nnunet_families.json").read_text())[0]
    bad = dict(good, phase_coefficients={"forward": {"constant": "lots"}})
    (tmp_path / "nnunet_families.json").write_text(json.dumps([bad, good, {"network": "nnunet"}]))
    warned: list[Any] = []
    monkeypatch.setattr(calibration_sources, "resources", SimpleNamespace(files=lambda package: tmp_path))
    monkeypatch.setattr(calibration_sources, "warn_bad_row", lambda *arguments: warned.append(arguments))
    families = calibration_sources.shipped_topology_families()
    assert [f.network for f in families] == [good["network"]]
    assert [w[2] for w in warned] == [0, 2] and all("topology family" in w[1] for w in warned)


def test_max_patch_size_with_a_preset_predicts_a_topology_it_has_no_calibration_of(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    """`suggest`/`plan` with an nnU-Net preset, in nnU-Net's own modes: a validated family prediction
    answers where no topology calibration exists, and the plan says so; nothing is measured."""
    import memprobe

    monkeypatch.delenv("MEMPROBE_NO_SHIPPED", raising=False)
    monkeypatch.setattr("memprobe.store.calibration_sources.shipped_calibrations", lambda: [])
    plan = memprobe.max_patch_size(
        "nnunet-resenc-l", 2, "24GiB", "fp16-mixed", spacing=(1.0, 1.0, 1.0), median_shape=(160, 160, 160),
        step="nnunet", deep_supervision=True, db=db_path, device="trace",
    )  # fmt: skip
    assert any("predicted" in reason for reason in plan.reasons), plan.reasons
    assert plan.need.total_bytes <= 24 * 2**30
