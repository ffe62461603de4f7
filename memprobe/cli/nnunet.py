"""``memprobe nnunet plan``: nnU-Net's planner with memprobe's measured estimate."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from memprobe.cli.options import BYTES, db_option, emit, json_option
from memprobe.cli.render import Report
from memprobe.core.units import format_bytes


@click.group()
def nnunet() -> None:
    """nnU-Net v2: plan its configurations with measured memory (needs memprobe[nnunet])."""


@nnunet.command("plan")
@click.option(
    "-d", "--dataset", required=True, help="Dataset name or id, as nnUNetv2_plan_and_preprocess takes it."
)
@click.option(
    "-c",
    "--configuration",
    default="3d_fullres",
    show_default=True,
    help="Configuration planned with measurements.",
)
@click.option("--gpu-mem", required=True, type=BYTES, help="Memory to plan for, e.g. 24GiB.")
@click.option(
    "--preset",
    type=click.Choice(["default", "resenc-m", "resenc-l", "resenc-xl"]),
    default="default",
    show_default=True,
    help="nnU-Net's planner to run: the default (PlainConvUNet) or a ResEnc preset.",
)
@click.option("--device", default=None, help="Whose calibrations: trace or a GPU name.")
@db_option
@json_option
def plan(
    dataset: str,
    configuration: str,
    gpu_mem: int,
    preset: str,
    device: str | None,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Run nnU-Net's own planner with memprobe's measured need, and write a plans file.

    Reads dataset.json (nnUNet_raw) and dataset_fingerprint.json (nnUNet_preprocessed); the
    plans are written beside nnU-Net's as ``<plans>_memprobe.json``. Each topology the planner
    visits needs a calibration (with --step nnunet --precision fp16-mixed --deep-supervision);
    a missing one is named, ready to run.

    \b
    memprobe nnunet plan -d 4 --gpu-mem 24GiB --preset resenc-l
    nnUNetv2_preprocess -d 4 -plans_name nnUNetResEncUNetLPlans_memprobe -c 3d_fullres
    nnUNetv2_train 4 3d_fullres 0 -p nnUNetResEncUNetLPlans_memprobe
    """
    from memprobe.integrations.nnunet.dataset_files import (
        check_configuration,
        check_dataset,
        dataset_argument,
    )
    from memprobe.integrations.nnunet.planner import memprobe_plans_name, planner_base

    check_configuration(configuration)
    planner_base(preset)  # nnunetv2 missing: named before anything is read
    dataset = str(dataset_argument(dataset))
    check_dataset(_dataset_id(dataset))
    budget_bytes = gpu_mem
    used: dict[str, str] = {}  # arch -> the calibration that answered for it
    planner = _planner(preset, dataset, budget_bytes, configuration, db_path, device, used)
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net's planner prints its progress
        plans = planner.plan_experiment()
    chosen = plans["configurations"].get(configuration)
    if chosen is None:
        from memprobe.core.errors import InvalidInputError

        raise InvalidInputError(
            f"nnU-Net planned no {configuration!r}: choose one of {', '.join(plans['configurations'])}"
        )
    row = {
        "configuration": configuration,
        "patch": "x".join(map(str, chosen["patch_size"])),
        "batch": chosen["batch_size"],
        "network": chosen["architecture"]["network_class_name"].rsplit(".", 1)[-1],
        "strides": _strides(chosen["architecture"]["arch_kwargs"]["strides"]),
    }
    name = memprobe_plans_name(preset)
    transpose = [int(axis) for axis in plans["transpose_forward"]]
    notes = (
        f"planned within {format_bytes(budget_bytes)} with measured need; plans file {name}.json",
        *_transpose_note(transpose),
        *(f"calibration of {arch}: {calibration}" for arch, calibration in used.items()),
        f"next: nnUNetv2_preprocess -d {dataset} -plans_name {name} -c {configuration}; "
        f"nnUNetv2_train {dataset} {configuration} FOLD -p {name}",
    )
    data = {"plans_name": name, **row, "transpose_forward": transpose, "calibrations": used}
    emit(Report(data, (("", [row]),), notes), as_json)


def _transpose_note(transpose: Sequence[int]) -> tuple[str, ...]:
    if list(transpose) == [0, 1, 2]:
        return ()
    order = " ".join(map(str, transpose))
    return (
        f"axes transposed as nnU-Net does (transpose_forward {order}: the largest spacing first); "
        "the patch and strides are in that order",
    )


def _strides(strides: Sequence[Sequence[int]]) -> str:
    return ".".join("".join(map(str, s)) for s in strides[1:])


def _planner(
    preset: str,
    dataset: str,
    budget_bytes: int,
    configuration: str,
    db: str | None,
    device: str | None,
    used: dict[str, str],
) -> Any:
    from memprobe.api import estimate
    from memprobe.integrations.nnunet.planner import measured_planner

    def need(arch: str, patch: Sequence[int], batch: int, in_channels: int, out_channels: int) -> float:
        found = estimate(
            arch,
            patch,
            batch,
            "fp16-mixed",
            optimizer="sgd",
            in_channels=in_channels,
            out_channels=out_channels,
            deep_supervision=True,
            step="nnunet",
            db=db,
            device=device,
        )
        calibration = found.calibration
        used[arch] = f"{calibration.device}, {calibration.source}, created {calibration.created_at[:19]}"
        return found.need.total_bytes

    return _with_dataset_errors(
        lambda: measured_planner(preset, _dataset_id(dataset), budget_bytes, need, configuration)
    )


def _dataset_id(dataset: str) -> str | int:
    return int(dataset) if dataset.isdigit() else dataset


def _with_dataset_errors(make: Callable[[], Any]) -> Any:
    """nnU-Net's own errors for a missing dataset or fingerprint, as one line with the fix."""
    from memprobe.core.errors import InvalidInputError
    from memprobe.integrations.nnunet.fingerprint import EXTRACT_HINT

    try:
        return make()
    except RuntimeError as error:
        if "Fingerprint" in str(error) or "fingerprint" in str(error):
            raise InvalidInputError(f"the dataset has no fingerprint: {EXTRACT_HINT}") from error
        raise InvalidInputError(f"nnU-Net cannot plan this dataset: {error}") from error
    except (FileNotFoundError, KeyError, TypeError) as error:
        raise InvalidInputError(
            f"nnU-Net cannot find the dataset ({type(error).__name__}: {error}): check nnUNet_raw and "
            "nnUNet_preprocessed"
        ) from error
