"""``memprobe plan``: the whole training plan, each value with its reason."""

from __future__ import annotations

import click

from memprobe.cli.options import BATCH, BYTES, LEARNING_RATE, SHAPE_SIZE, SPACING_MM, db_option, emit
from memprobe.cli.pytc_config_plan import config_file_mode
from memprobe.cli.render import Report
from memprobe.cli.setup_options import SetupChoice, command, setup_options
from memprobe.planning.size_search import DEFAULT_SAFETY


@command(
    renamed={"--nnunet-fingerprint": "--fingerprint", "--num-gpus": "--gpus", "--device": "--calibrated-on"}
)
@setup_options()
@click.option(
    "--gpu-mem", default=None, type=BYTES, help="Memory to plan for, e.g. 24GiB; default the detected GPU's."
)
@click.option(
    "--patch", nargs=3, type=SHAPE_SIZE, default=None, metavar="D H W", help="Override the patch size."
)
@click.option("--batch", type=BATCH, default=None, help="Override the batch size.")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Override the learning rate.")
@click.option(
    "--spacing", nargs=3, type=SPACING_MM, default=None, metavar="Z Y X", help="Voxel spacing in mm."
)
@click.option(
    "--median-shape", nargs=3, type=SHAPE_SIZE, default=None, metavar="D H W", help="Median image shape."
)
@click.option(
    "--fingerprint",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="nnU-Net's dataset_fingerprint.json: spacing and median shape as its planner derives them.",
)
@click.option("--effective-batch", type=BATCH, default=None, help="Batch to reach by accumulation.")
@click.option(
    "--safety",
    default=DEFAULT_SAFETY,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of the budget the whole need may use, on top of the calibrated margin.",
)
@click.option(
    "--calibrated-on",
    default=None,
    help="Whose calibration: trace or a GPU name (default: the detected GPU, else trace); "
    "--device is its old name.",
)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--yaml", "as_yaml", is_flag=True, help="Print YAML.")
@config_file_mode
def plan(
    setup: SetupChoice,
    gpu_mem: int | None,
    patch: tuple[int, ...] | None,
    batch: int | None,
    lr: float | None,
    spacing: tuple[float, ...] | None,
    median_shape: tuple[int, ...] | None,
    fingerprint: str | None,
    effective_batch: int | None,
    safety: float,
    calibrated_on: str | None,
    db_path: str | None,
    as_json: bool,
    as_yaml: bool,
) -> None:
    """Plan patch, batch, precision, accumulation, workers and learning rate, with reasons.

    Any value given on the command line is kept as a manual override.

    \b
    memprobe plan --arch mednext --gpu-mem 24GiB --spacing 1 1 1 --median-shape 128 256 256
    memprobe plan --arch dynunet --gpu-mem 80GiB --batch 2 --yaml
    memprobe plan --config mednext_auto.yaml --gpu-mem 24GiB --out planned.yaml
    memprobe plan --arch basicunet --gpu-mem 40GiB --gpus 4 --strategy ddp --json
    memprobe plan --config mednext_auto.yaml --gpu-mem 80GiB --gpus 4 --strategy ddp --out planned.yaml

    With --gpus N the batch is per rank (from a calibration of that layout); --json and --yaml
    also give the global batch and nnU-Net's and Lightning's batch_size. With --config too, the
    config's data.batch_size is the per-rank batch (PyTorch Connectomics and Lightning take it
    per device). Under DDP the plan names the bucket settings its calibration rests on.
    """
    from memprobe.cli.budget import budget_note, resolve_budget
    from memprobe.cli.render.plans import calibration_data, calibration_text, check_prediction, need_rows
    from memprobe.training_plan import make_plan

    budget_bytes, gpu = resolve_budget(gpu_mem)
    if fingerprint is not None:
        from memprobe.cli.options import geometry_from_fingerprint

        spacing, median_shape = geometry_from_fingerprint(fingerprint, spacing, median_shape)
    result = make_plan(
        setup.arch,
        budget_bytes,
        gpu=gpu,
        patch=patch or None,
        batch=batch,
        spacing=spacing or None,
        median_shape=median_shape or None,
        effective_batch=effective_batch,
        safety=safety,
        lr=lr,
        db=db_path,
        device=calibrated_on,
        precision=setup.precision,
        **setup.overrides(),
    )
    check_prediction(result.need.total_bytes, result.arch)
    rows = [
        {"setting": name, "value": value.value, "reason": value.reason}
        for name, value in result.values.items()
    ]
    data = {
        "arch": result.arch,
        **{name: value.value for name, value in result.values.items()},
        "reasons": {name: value.reason for name, value in result.values.items()},
        "predicted_peak_bytes": round(result.predicted_peak_bytes),
        "need": result.need.to_dict(),
        "budget_bytes": result.budget_bytes,
        "calibration": calibration_data(result.calibration),
        "warnings": list(result.warnings),
        **result.exports(),
    }
    notes = (
        *result.data_parallel_notes(),
        f"calibration: {calibration_text(result.calibration)}",
        budget_note(budget_bytes, gpu, gpu_mem),
        *(f"warning: {w}" for w in result.warnings),
    )
    tables = (
        (f"Plan for {result.arch}", rows),
        ("What the plan needs", need_rows(result.need, budget_bytes * safety)),
    )
    emit(Report(data, tables, notes), as_json, "yaml" if as_yaml else None)
