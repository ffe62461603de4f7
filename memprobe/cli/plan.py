"""``memprobe plan``: the whole training plan, each value with its reason."""

from __future__ import annotations

import click

from memprobe.cli.options import (
    BATCH,
    BYTES,
    CHANNELS,
    LEARNING_RATE,
    SHAPE_SIZE,
    SPACING_MM,
    arch_option,
    checkpointing_option,
    data_parallel_options,
    db_option,
    emit,
    training_step_option,
)
from memprobe.cli.render import Report
from memprobe.planning.size_search import DEFAULT_SAFETY


@click.command()
@arch_option
@click.option(
    "--gpu-mem", default=None, type=BYTES, help="Memory to plan for, e.g. 24GiB; default the detected GPU's."
)
@click.option("--precision", default=None, help="Override: fp32, fp16-mixed or bf16-mixed (default: by GPU).")
@click.option(
    "--patch", nargs=3, type=SHAPE_SIZE, default=None, metavar="D H W", help="Override the patch size."
)
@click.option("--batch", type=BATCH, default=None, help="Override the batch size.")
@click.option("--optimizer", default="adamw", show_default=True, help="adamw, or sgd (nnU-Net's).")
@click.option("--lr", type=LEARNING_RATE, default=None, help="Override the learning rate.")
@click.option(
    "--spacing", nargs=3, type=SPACING_MM, default=None, metavar="Z Y X", help="Voxel spacing in mm."
)
@click.option(
    "--median-shape", nargs=3, type=SHAPE_SIZE, default=None, metavar="D H W", help="Median image shape."
)
@click.option(
    "--nnunet-fingerprint",
    "nnunet_fingerprint",
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
    "--num-gpus",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="GPUs to plan dataloader workers for (4 each); not data parallelism, which --gpus plans.",
)
@click.option("--in-channels", default=1, show_default=True, type=CHANNELS, help="Input channels.")
@click.option("--out-channels", default=2, show_default=True, type=CHANNELS, help="Output classes.")
@click.option("--deep-supervision", is_flag=True, help="Plan for deep-supervision heads.")
@training_step_option
@checkpointing_option
@data_parallel_options
@click.option("--device", default=None, help="Whose calibration: trace or a GPU name.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--yaml", "as_yaml", is_flag=True, help="Print YAML.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Plan this PyTorch Connectomics YAML config: fill the values it leaves unset.",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the planned config here."
)
def plan(
    arch: str,
    gpu_mem: int | None,
    precision: str | None,
    patch: tuple[int, ...] | None,
    batch: int | None,
    optimizer: str,
    lr: float | None,
    spacing: tuple[float, ...] | None,
    median_shape: tuple[int, ...] | None,
    nnunet_fingerprint: str | None,
    effective_batch: int | None,
    safety: float,
    num_gpus: int,
    in_channels: int,
    out_channels: int,
    deep_supervision: bool,
    training_step: str,
    checkpointing: bool,
    gpus: int,
    strategy: str | None,
    device: str | None,
    db_path: str | None,
    as_json: bool,
    as_yaml: bool,
    config_path: str | None,
    out_path: str | None,
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
    if config_path is not None or out_path is not None:
        from memprobe.cli.pytc_config_plan import plan_config_view

        return plan_config_view(
            config_path, out_path, gpu_mem, safety, num_gpus, db_path, device, as_json, gpus, strategy
        )
    from memprobe.cli.budget import budget_note, resolve_budget
    from memprobe.cli.render.plans import calibration_data, calibration_text, check_prediction, need_rows
    from memprobe.training_plan import make_plan

    budget_bytes, gpu = resolve_budget(gpu_mem)
    if nnunet_fingerprint is not None:
        from memprobe.cli.options import geometry_from_fingerprint

        spacing, median_shape = geometry_from_fingerprint(nnunet_fingerprint, spacing, median_shape)
    result = make_plan(
        arch,
        budget_bytes,
        gpu=gpu,
        precision=precision,
        patch=patch or None,
        batch=batch,
        spacing=spacing or None,
        median_shape=median_shape or None,
        effective_batch=effective_batch,
        safety=safety,
        num_gpus=num_gpus,
        lr=lr,
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        db=db_path,
        device=device,
        step=training_step,
        checkpointing=checkpointing,
        optimizer=optimizer,
        strategy=strategy,
        world_size=gpus,
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
