"""``memprobe nnunet plan``: nnU-Net's planner with memprobe's measured need, in one command."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import click

from memprobe.cli.options import BYTES, db_option, emit, json_option
from memprobe.cli.progress import Progress
from memprobe.cli.render import Report
from memprobe.core.units import format_bytes

if TYPE_CHECKING:
    from memprobe.integrations.nnunet.plan_run import NnunetPlan
    from memprobe.integrations.nnunet.topology_sources import CalibrationStep, StepCallback


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
@click.option(
    "--device",
    default=None,
    help="What calibrates a missing topology, and whose calibrations answer: trace, cpu, cuda or a GPU's "
    "name (default: the GPU present, else trace).",
)
@click.option(
    "--no-calibrate",
    is_flag=True,
    help="Calibrate nothing: list the topologies without a calibration or a validated prediction (exit 3).",
)
@db_option
@json_option
def plan(
    dataset: str,
    configuration: str,
    gpu_mem: int,
    preset: str,
    device: str | None,
    no_calibrate: bool,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Run nnU-Net's own planner with memprobe's measured need, and write a plans file.

    Reads dataset.json (nnUNet_raw) and dataset_fingerprint.json (nnUNet_preprocessed); the
    plans are written beside nnU-Net's as ``<plans>_memprobe.json``. Each topology the planner
    visits is answered by its own calibration (yours, or shipped with memprobe), else by a
    prediction from its network's topology family where that was validated, else it is
    calibrated on the spot (nnU-Net's step, fp16-mixed, deep supervision) and stored, so an
    interrupted plan resumes and a second run measures nothing.

    \b
    memprobe nnunet plan -d 4 --gpu-mem 24GiB --preset resenc-l
    nnUNetv2_preprocess -d 4 -plans_name nnUNetResEncUNetLPlans_memprobe -c 3d_fullres
    nnUNetv2_train 4 3d_fullres 0 -p nnUNetResEncUNetLPlans_memprobe
    """
    from memprobe.integrations.nnunet.plan_run import plan_dataset

    with _progress() as on_step:
        result = plan_dataset(
            dataset,
            gpu_mem,
            preset,
            configuration,
            device=device,
            db=db_path,
            calibrate=not no_calibrate,
            on_step=on_step,
        )
    emit(_report(result), as_json)


@contextlib.contextmanager
def _progress() -> Iterator[StepCallback]:
    """One progress display for every calibration of the plan; nothing shows when none is needed."""
    with Progress("nnunet plan: calibrating topologies", 1) as progress:

        def on_step(step: CalibrationStep) -> None:
            progress.length = max(progress.length, step.number * step.expected_steps)
            stored = " (stored)" if step.reused else ""
            progress.advance(f"{step.measurement.config.label()}{stored}")  # the label names the topology

        yield on_step


def _report(result: NnunetPlan) -> Report:
    row = {
        "configuration": result.configuration,
        "patch": "x".join(map(str, result.patch)),
        "batch": result.batch,
        "network": result.network,
        "strides": result.arch.split("[", 1)[1].rstrip("]"),
        "need": format_bytes(result.need.total_bytes),
    }
    topologies = [
        {"topology": a.arch, "figure": a.figure.value, "chosen": "yes" if a.arch == result.arch else ""}
        for a in result.topologies
    ]
    name = result.plans_name
    notes = (
        f"planned within {format_bytes(result.budget_bytes)} with measured need; plans file {result.plans_file}",
        *_transpose_note(result.transpose_forward),
        *(f"calibration of {a.arch}: {a.figure.value}, {a.source}" for a in result.topologies),
        f"{len(result.calibrated)} topologies calibrated, {result.steps_measured} steps measured, "
        f"{result.seconds:.0f} s",
        *(f"warning: {warning}" for warning in result.warnings),
        f"next: nnUNetv2_preprocess -d {result.dataset} -plans_name {name} -c {result.configuration}; "
        f"nnUNetv2_train {result.dataset} {result.configuration} FOLD -p {name}",
    )
    data = {
        "plans_name": name,
        "plans_file": result.plans_file,
        **row,
        "need_bytes": round(result.need.total_bytes),
        "transpose_forward": list(result.transpose_forward),
        "topologies": [
            {"topology": a.arch, "figure": a.figure.value, "from": a.source} for a in result.topologies
        ],
        "calibrations": {a.arch: a.source for a in result.topologies},
        "calibrated": list(result.calibrated),
        "steps_measured": result.steps_measured,
        "seconds": round(result.seconds, 1),
        "warnings": list(result.warnings),
    }
    return Report(data, (("", [row]), ("topologies the planner visited", topologies)), notes)


def _transpose_note(transpose: Sequence[int]) -> tuple[str, ...]:
    if list(transpose) == [0, 1, 2]:
        return ()
    order = " ".join(map(str, transpose))
    return (
        f"axes transposed as nnU-Net does (transpose_forward {order}: the largest spacing first); "
        "the patch and strides are in that order",
    )
