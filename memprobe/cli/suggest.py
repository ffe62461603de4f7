"""``memprobe suggest``: the largest batch (or patch) that fits, from calibrations, in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from memprobe.cli.budget import budget_note
from memprobe.cli.inference import inference_mode, suggest_view
from memprobe.cli.options import (
    BATCH,
    BYTES,
    SHAPE_SIZE,
    SPACING_MM,
    db_option,
    emit,
    patch_option,
    training_option,
)
from memprobe.cli.render import Report
from memprobe.cli.render.plans import calibration_data, calibration_text, check_prediction, need_rows
from memprobe.cli.setup_options import SetupChoice, command, setup_options
from memprobe.core.units import format_bytes, format_shape
from memprobe.planning.size_search import DEFAULT_SAFETY, largest_batch_rule

if TYPE_CHECKING:
    from memprobe.alternatives import Alternative


@command(renamed={"--nnunet-fingerprint": "--fingerprint", "--device": "--calibrated-on"})
@inference_mode(suggest_view, suggest=True)
@setup_options()
@patch_option(required=False)
@training_option(
    "--batch",
    default=None,
    type=BATCH,
    help="Plan the largest patch for this batch (when --patch is not given).",
)
@click.option(
    "--gpu-mem",
    default=None,
    type=BYTES,
    help="Memory to plan for, e.g. 24GiB, 24GB, 24000MiB or 24; default the detected GPU's free memory.",
)
@training_option(
    "--options",
    "show_options",
    is_flag=True,
    help="Also list what would make it fit: other precisions, checkpointing, SGD, a smaller patch, "
    "accumulation (each from its own calibration). Shown by itself when nothing fits.",
)
@click.option(
    "--safety",
    default=DEFAULT_SAFETY,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of the budget the whole need may use, on top of the calibrated margin.",
)
@training_option(
    "--effective-batch",
    default=None,
    type=BATCH,
    help="Batch to reach by gradient accumulation.",
)
@training_option(
    "--spacing",
    nargs=3,
    type=SPACING_MM,
    default=None,
    metavar="Z Y X",
    help="Voxel spacing in mm (shapes the patch).",
)
@training_option(
    "--median-shape",
    nargs=3,
    type=SHAPE_SIZE,
    default=None,
    metavar="D H W",
    help="Median image shape (caps the patch).",
)
@training_option("--all-archs", is_flag=True, help="Compare every calibrated architecture.")
@click.option(
    "--calibrated-on",
    default=None,
    help="Whose calibration: trace or a GPU name (default: the detected GPU, else trace); "
    "--device is its old name.",
)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--yaml", "as_yaml", is_flag=True, help="Print YAML (with PyTorch Connectomics and nnU-Net fragments)."
)
def suggest(
    setup: SetupChoice,
    patch: tuple[int, ...] | None,
    batch: int | None,
    gpu_mem: int | None,
    show_options: bool,
    safety: float,
    effective_batch: int | None,
    spacing: tuple[float, ...] | None,
    median_shape: tuple[int, ...] | None,
    fingerprint: str | None,
    all_archs: bool,
    calibrated_on: str | None,
    db_path: str | None,
    as_json: bool,
    as_yaml: bool,
) -> None:
    """Suggest the largest batch for a patch, or the largest patch for a batch.

    Answers from calibrations (your database first, then those shipped with memprobe),
    without importing torch. When even batch 1 does not fit, the alternatives that would
    (as with --options) are listed and the exit code is 3, with the smallest need.

    \b
    memprobe suggest --patch 128 128 128 --gpu-mem 24GiB
    memprobe suggest --patch 96 96 96 --arch basicunet --precision bf16-mixed --effective-batch 8
    memprobe suggest --batch 2 --spacing 5 0.8 0.8 --median-shape 64 320 320 --gpu-mem 24GiB
    memprobe suggest --patch 128 128 128 --gpu-mem 80GiB --all-archs --json
    memprobe suggest --patch 192 192 192 --gpu-mem 12GiB --options --effective-batch 4
    memprobe suggest --patch 128 128 128 --gpu-mem 40GiB --gpus 4 --strategy ddp --json

    With --gpus N the plan is per rank, from a calibration of that layout (`memprobe calibrate
    --gpus N --strategy ...`); the output gives the global batch and nnU-Net's and Lightning's
    batch_size for it.
    """
    from memprobe.cli.budget import resolve_budget
    from memprobe.core.config import precision_with_reason
    from memprobe.suggestion import suggest as suggest_from_calibrations

    budget_bytes, gpu = resolve_budget(gpu_mem)
    precision, precision_text = precision_with_reason(setup.precision, gpu)
    if fingerprint is not None:
        from memprobe.cli.options import geometry_from_fingerprint

        spacing, median_shape = geometry_from_fingerprint(fingerprint, spacing, median_shape)
    found = suggest_from_calibrations(
        setup.arch,
        budget_bytes,
        precision,
        patch=patch,  # whole numbers (click); the library checks them against the network
        batch=batch,
        all_archs=all_archs,
        safety=safety,
        effective_batch=effective_batch,
        spacing=spacing,
        median_shape=median_shape,
        db=db_path,
        device=calibrated_on,
        options=show_options,
        on_skip=lambda note: click.echo(note, err=True),
        **setup.overrides(),
    )
    notes = (precision_text, budget_note(budget_bytes, gpu, gpu_mem))
    if found.nothing_fits is not None:
        emit(_options_report(None, found.alternatives or (), notes), as_json)
        raise found.nothing_fits  # exit 3, with the smallest need
    if patch is None:
        report = _patch_report(list(found.patch_plans), budget_bytes, notes)
    else:
        report = _batch_report(list(found.batch_plans), budget_bytes, notes)
    if found.alternatives is not None:
        report = _options_report(report, found.alternatives, notes)
    emit(report, as_json, "yaml" if as_yaml else None)


def _options_report(
    report: Report | None, found: Sequence[Alternative], budget_text: tuple[str, ...]
) -> Report:
    """``report`` (None: nothing fits as asked) with the alternatives' table and data added."""
    from memprobe.cli.render.alternatives import options_data, options_rows

    title = "What would make it fit" if report is None else "Alternatives"
    table = (f"{title} (same patch and budget, one change each)", options_rows(list(found)))
    if report is None:
        data: dict[str, Any] = {"fits": False, "alternatives": options_data(list(found))}
        return Report(data, (table,), ("nothing fits as asked", *budget_text))
    data = {**report.data, "alternatives": options_data(list(found))}
    return Report(data, (*report.tables, table), report.notes)


def _batch_report(plans: list[Any], budget_bytes: int, budget_text: tuple[str, ...]) -> Report:
    from memprobe.core.enums import Precision
    from memprobe.planning.exports import pytc_config

    rows, data, notes = [], [], []
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for p in plans:
        check_prediction(p.need.total_bytes, p.arch)
        rows.append(
            {
                "arch": p.arch,
                "patch": format_shape(p.patch),
                "batch": p.batch,
                "precision": p.calibration.precision,
                "allocated": format_bytes(p.need.allocated_bytes),
                "total need": format_bytes(p.need.total_bytes),
                "of budget": f"{p.utilisation:.0%}",
                "accumulate": p.accumulate_grad_batches,
                "calibration": calibration_text(p.calibration),
            }
        )
        precision = Precision(p.calibration.precision)
        data.append(
            {
                "arch": p.arch,
                "patch": list(p.patch),
                "batch": p.batch,
                "predicted_peak_bytes": round(p.predicted_peak_bytes),
                "next_batch_peak_bytes": round(p.next_batch_peak_bytes),
                "need": p.need.to_dict(),
                "next_batch_total_bytes": round(p.next_need.total_bytes),
                "budget_bytes": p.budget_bytes,
                "safety": p.safety,
                "largest_batch_rule": largest_batch_rule(p.budget_bytes, p.safety),
                "utilisation": round(p.utilisation, 4),
                "accumulate_grad_batches": p.accumulate_grad_batches,
                "effective_batch": p.effective_batch,
                "precision": precision.value,
                "calibration": calibration_data(p.calibration),
                "warnings": list(p.warnings),
                "pytorch_connectomics": pytc_config(
                    p.patch, p.batch, precision.lightning_name, p.accumulate_grad_batches
                ),
                **_data_parallel(p.patch, p.batch, p.calibration),
            }
        )
        if len(plans) <= 3:
            tables.append((f"What batch {p.batch} of {p.arch} needs", need_rows(p.need, p.usable_bytes)))
        notes += _data_parallel_notes(p.batch, p.calibration)
        notes += [f"warning: {w}" for w in p.warnings]
    notes += [
        *budget_text[:-1],
        budget_text[-1] + (f" x safety {plans[0].safety}" if plans and plans[0].safety != 1 else ""),
    ]
    if plans:
        notes.append(f"the {largest_batch_rule(budget_bytes, plans[0].safety)}")
    if len(plans) > 3:
        notes.append("each plan's term-by-term need is in --json")
    return Report(data if len(data) != 1 else data[0], (("", rows), *tables), tuple(notes))


def _patch_report(plans: list[Any], budget_bytes: int, budget_text: tuple[str, ...]) -> Report:
    from memprobe.core.enums import Precision
    from memprobe.planning.exports import pytc_config

    rows, data, notes = [], [], []
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for p in plans:
        check_prediction(p.need.total_bytes, p.arch)
        precision = Precision(p.calibration.precision)
        rows.append(
            {
                "arch": p.arch,
                "batch": p.batch,
                "patch": format_shape(p.patch),
                "precision": precision.value,
                "allocated": format_bytes(p.need.allocated_bytes),
                "total need": format_bytes(p.need.total_bytes),
                "of budget": f"{p.utilisation:.0%}",
                "calibration": calibration_text(p.calibration),
            }
        )
        data.append(
            {
                "arch": p.arch,
                "batch": p.batch,
                "patch": list(p.patch),
                "predicted_peak_bytes": round(p.predicted_peak_bytes),
                "need": p.need.to_dict(),
                "budget_bytes": p.budget_bytes,
                "safety": p.safety,
                "precision": precision.value,
                "reasons": list(p.reasons),
                "warnings": list(p.warnings),
                "calibration": calibration_data(p.calibration),
                "pytorch_connectomics": pytc_config(p.patch, p.batch, precision.lightning_name, 1),
                **_data_parallel(p.patch, p.batch, p.calibration),
            }
        )
        notes += _data_parallel_notes(p.batch, p.calibration)
        if len(plans) <= 3:
            patch = format_shape(p.patch)
            tables.append(
                (
                    f"What {patch} at batch {p.batch} of {p.arch} needs",
                    need_rows(p.need, p.budget_bytes * p.safety),
                )
            )
        notes += [f"{p.arch}: {reason}" for reason in p.reasons]
        notes += [f"warning: {w}" for w in p.warnings]
    notes += budget_text
    if plans:
        notes.append(
            f"the largest patch whose whole need fits {format_bytes(plans[0].budget_bytes * plans[0].safety)}"
        )
    return Report(data if len(data) != 1 else data[0], (("", rows), *tables), tuple(notes))


def _data_parallel(patch: Any, per_rank_batch: int, calibration: Any) -> dict[str, Any]:
    from memprobe.planning.exports import batch_exports

    return batch_exports(patch, per_rank_batch, calibration.strategy, calibration.world_size)


def _data_parallel_notes(per_rank_batch: int, calibration: Any) -> list[str]:
    from memprobe.planning.exports import data_parallel_note

    if calibration.strategy == "single":
        return []
    return [data_parallel_note(per_rank_batch, calibration.strategy, calibration.world_size)]
