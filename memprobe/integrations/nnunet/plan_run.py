"""``memprobe nnunet plan`` as one library call: plan a dataset, calibrating what is missing.

nnU-Net's own planner runs with memprobe's need in place of its proxy
(``memprobe.integrations.nnunet.planner``); every topology it visits is answered by
``TopologyCalibrations``: its own calibration, its network's topology family, or a
calibration made on the spot. When the chosen topology was predicted for a size beyond what
its family measured, that topology is calibrated and the plan made again, so a plan never
rests on an extrapolated prediction while measuring is allowed.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.core.archs.nnunet_topology import parse_arch_name
from memprobe.core.errors import InvalidInputError, MemprobeError, NothingFitsError
from memprobe.core.units import format_bytes, parse_bytes
from memprobe.integrations.nnunet.dataset_files import check_configuration, check_dataset, dataset_argument
from memprobe.integrations.nnunet.fingerprint import EXTRACT_HINT
from memprobe.integrations.nnunet.planner import (
    REFERENCE_BATCH,
    measured_planner,
    memprobe_plans_name,
    planner_base,
    topology_arch,
)
from memprobe.integrations.nnunet.topology_sources import (
    CalibrationStep,
    Figure,
    StepCallback,
    TopologyAnswer,
    TopologyCalibrations,
)
from memprobe.planning.need import MemoryNeed, extrapolation_warnings


@dataclass(frozen=True)
class NnunetPlan:
    """nnU-Net's plan of one configuration, made with measured need, and where each figure came from."""

    dataset: str
    preset: str
    configuration: str
    plans_name: str
    plans_file: str
    patch: tuple[int, ...]
    batch: int
    network: str  # nnU-Net's class name, e.g. PlainConvUNet
    arch: str  # memprobe's name of the chosen topology
    transpose_forward: tuple[int, ...]
    budget_bytes: int
    need: MemoryNeed  # of the planned patch and batch
    topologies: tuple[TopologyAnswer, ...]  # every topology the planner visited, in order
    steps_measured: int
    seconds: float
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        figures = {figure: sum(a.figure is figure for a in self.topologies) for figure in Figure}
        counts = ", ".join(f"{n} {figure.value}" for figure, n in figures.items() if n)
        return (
            f"NnunetPlan({self.plans_name} {self.configuration}: {'x'.join(map(str, self.patch))} "
            f"b{self.batch} with {self.arch}, need {self.need.total_bytes / 2**30:.2f} of "
            f"{self.budget_bytes / 2**30:.2f} GiB; topologies {counts}; {self.steps_measured} steps measured)"
        )

    @property
    def calibrated(self) -> tuple[str, ...]:
        return tuple(a.arch for a in self.topologies if a.figure is Figure.CALIBRATED)


def plan_dataset(
    dataset: str | int,
    gpu_mem: str | int,
    preset: str = "default",
    configuration: str = "3d_fullres",
    *,
    device: str | None = None,
    db: str | Path | None = None,
    calibrate: bool = True,
    on_step: StepCallback | None = None,
) -> NnunetPlan:
    """Run nnU-Net's planner for ``preset`` with measured need and write its plans file.

    Args:
        dataset: the dataset's id or name; its dataset.json (nnUNet_raw) and fingerprint
            (nnUNet_preprocessed) are read, the plans written beside nnU-Net's as
            ``<plans>_memprobe.json``.
        gpu_mem: the memory to plan for, e.g. ``"24GiB"``.
        preset: ``default``, ``resenc-m``, ``resenc-l`` or ``resenc-xl``.
        device: whose calibrations answer and what calibrates: default the GPU present, else
            trace; ``trace``, ``cpu``, ``cuda`` or a GPU's name.
        calibrate: calibrate each topology with neither a calibration nor a validated
            prediction; without it such topologies raise ``MissingCalibrationsError`` (exit 3).
        on_step: called with each step a calibration measures, for a progress display.

    Raises:
        InvalidInputError: the dataset, configuration or preset cannot be planned (exit 2).
        MissingCalibrationsError: topologies are missing and ``calibrate`` is off (exit 3).
        NothingFitsError: no topology fits ``gpu_mem`` (exit 3).
    """
    started = time.perf_counter()
    check_configuration(configuration)
    planner_base(preset)  # nnunetv2 missing: named before anything is read
    name = check_dataset(dataset_argument(str(dataset)))
    budget_bytes = parse_bytes(gpu_mem)
    sources = TopologyCalibrations(db, device, calibrate=calibrate, on_step=_outside_the_planner(on_step))
    plans, planner = _plan(preset, name, budget_bytes, configuration, sources)
    chosen, arch = _chosen(plans, configuration)
    channels, classes = _channels(planner)
    if calibrate and sources.answers[arch].figure is Figure.PREDICTED:
        beyond = extrapolation_warnings(
            sources.calibration(arch), chosen["patch_size"], chosen["batch_size"], channels, classes
        )
        if beyond:  # the prediction is for sizes its family never measured: measure this topology
            sources.calibrate(arch)
            plans, planner = _plan(preset, name, budget_bytes, configuration, sources)
            chosen, arch = _chosen(plans, configuration)
    if sources.missing:
        raise sources.missing_error()
    patch, batch = tuple(int(p) for p in chosen["patch_size"]), int(chosen["batch_size"])
    calibration = sources.calibration(arch)
    warnings = [*sources.warnings, *extrapolation_warnings(calibration, patch, batch, channels, classes)]
    return NnunetPlan(
        dataset=name,
        preset=preset,
        configuration=configuration,
        plans_name=memprobe_plans_name(preset),
        plans_file=_plans_file(planner),
        patch=patch,
        batch=batch,
        network=chosen["architecture"]["network_class_name"].rsplit(".", 1)[-1],
        arch=arch,
        transpose_forward=tuple(int(axis) for axis in plans["transpose_forward"]),
        budget_bytes=budget_bytes,
        need=sources.need(arch, patch, batch, channels, classes),
        topologies=tuple(sources.answers.values()),
        steps_measured=sources.steps_measured,
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
    )


def _plan(
    preset: str, dataset: str, budget_bytes: int, configuration: str, sources: TopologyCalibrations
) -> tuple[dict[str, Any], Any]:
    """nnU-Net's plans (written to its plans file) and the planner that made them."""
    need = _need_function(sources, budget_bytes)
    planner = _with_dataset_errors(
        lambda: measured_planner(preset, dataset, budget_bytes, need, configuration)
    )
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its progress; the library does not
        plans: dict[str, Any] = planner.plan_experiment()
    return plans, planner


def _outside_the_planner(on_step: StepCallback | None) -> StepCallback | None:
    """The callback with the caller's stdout, which nnU-Net's prints are kept out of meanwhile."""
    if on_step is None:
        return None
    stdout = sys.stdout

    def shown(step: CalibrationStep) -> None:
        with contextlib.redirect_stdout(stdout):
            on_step(step)

    return shown


def _need_function(sources: TopologyCalibrations, budget_bytes: int) -> Any:
    """memprobe's need for nnU-Net's planner; one line naming the topology where nothing can fit."""
    smallest: list[tuple[float, str, Sequence[int]]] = []  # the smallest need asked for yet

    def need(arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int) -> float:
        if parse_arch_name(arch) is None:  # nnU-Net shrank the patch below any pooling
            raise _no_pooling(arch, patch, budget_bytes, smallest)
        found = sources.need(arch, patch, batch, in_channels, out_channels)
        if found.fixed_bytes >= budget_bytes:
            raise NothingFitsError(
                f"nothing fits {format_bytes(budget_bytes)}: {arch} needs {format_bytes(found.fixed_bytes)} "
                "for the CUDA context and workspaces alone, before any tensor: plan for a larger --gpu-mem"
            )
        if batch == REFERENCE_BATCH and (not smallest or found.total_bytes < smallest[0][0]):
            smallest[:] = [(found.total_bytes, arch, tuple(patch))]
        return found.total_bytes

    return need


def _no_pooling(
    arch: str, patch: Sequence[int], budget_bytes: int, smallest: Sequence[tuple[float, str, Sequence[int]]]
) -> MemprobeError:
    """nnU-Net asks for a network without pooling: nothing fitted above it, or the data is too small."""
    size = "x".join(map(str, patch))
    if not smallest:
        return InvalidInputError(
            f"nnU-Net's planner chose {arch}, a network without pooling, for a {size} patch: every axis of the "
            "median shape is below 8 voxels, and dynamic-network-architectures builds such a UNet without any "
            "output; plan a dataset with larger images"
        )
    total, reached, at = smallest[0]
    return NothingFitsError(
        f"nothing fits {format_bytes(budget_bytes)}: the smallest network nnU-Net's planner reached, {reached} "
        f"at {'x'.join(map(str, at))} with batch {REFERENCE_BATCH}, needs {format_bytes(total)}; "
        "plan for a larger --gpu-mem"
    )


def _chosen(plans: dict[str, Any], configuration: str) -> tuple[dict[str, Any], str]:
    """The configuration planned with measured need, and memprobe's name of its topology."""
    chosen = plans["configurations"].get(configuration)
    if chosen is None:
        raise InvalidInputError(
            f"nnU-Net planned no {configuration!r} for this dataset: choose one of {', '.join(plans['configurations'])}"
        )
    architecture = chosen["architecture"]
    return dict(chosen), topology_arch(architecture["network_class_name"], architecture["arch_kwargs"])


def _channels(planner: Any) -> tuple[int, int]:
    """The input channels and classes nnU-Net's planner read from dataset.json."""
    data = planner.dataset_json
    return len(data.get("channel_names", data.get("modality", {"0": ""}))), len(data["labels"])


def _plans_file(planner: Any) -> str:
    import nnunetv2.paths as paths

    return str(
        Path(str(paths.nnUNet_preprocessed)) / planner.dataset_name / f"{planner.plans_identifier}.json"
    )


def _with_dataset_errors(make: Any) -> Any:
    """nnU-Net's own errors for a missing dataset or fingerprint, as one line with the fix."""
    try:
        return make()
    except RuntimeError as error:
        if "ingerprint" in str(error):
            raise InvalidInputError(f"the dataset has no fingerprint: {EXTRACT_HINT}") from error
        raise InvalidInputError(f"nnU-Net cannot plan this dataset: {error}") from error
    except (FileNotFoundError, KeyError, TypeError) as error:
        raise InvalidInputError(
            f"nnU-Net cannot find the dataset ({type(error).__name__}: {error}): check nnUNet_raw and "
            "nnUNet_preprocessed"
        ) from error
