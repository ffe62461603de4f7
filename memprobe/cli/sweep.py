"""``memprobe sweep``: calibrations as submitit jobs, on this machine or a SLURM cluster."""

from __future__ import annotations

import click

from memprobe.cli.options import BYTES, MINUTES, db_option, emit, json_option
from memprobe.cli.render import Report
from memprobe.cli.setup_options import SetupChoice, command, setup_options


@command(renamed={"--budget": "--gpu-mem"})
@setup_options(many_archs=True, many_precisions=True, arch_default=None)
@click.option("--card", "cards", multiple=True,
              help="Card type, one job each (on SLURM its --constraint); default any card.")  # fmt: skip
@click.option("--device", default=None, help="cuda, trace or cpu on each node; default cuda if present.")
@click.option(
    "--gpu-mem",
    default=None,
    type=BYTES,
    help="Memory each calibration's searches plan for (default: the card's).",
)
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: processes on this machine; slurm: jobs on a SLURM cluster.")  # fmt: skip
@click.option("--slurm-partition", default=None, help="SLURM partition.")
@click.option("--slurm-gres", default=None, help="SLURM generic resources (default: gpu:N for --gpus N).")
@click.option("--slurm-constraint", default=None, help="SLURM constraint for every job.")
@click.option("--slurm-time", type=MINUTES, default=240, show_default=True,
              help="SLURM time limit of each job, in minutes.")  # fmt: skip
@click.option("--folder", default=None, help="Job logs and sweep.json (default: beside --db FILE.sweep).")
@click.option("--wait/--no-wait", default=None,
              help="Wait for the jobs (default: with --executor local).")  # fmt: skip
@click.option("--status", "status_only", is_flag=True, help="Only show what finished and what failed.")
@db_option
@json_option
def sweep(
    setup: SetupChoice,
    cards: tuple[str, ...],
    device: str | None,
    gpu_mem: int | None,
    executor: str,
    slurm_partition: str | None,
    slurm_gres: str | None,
    slurm_constraint: str | None,
    slurm_time: int,
    folder: str | None,
    wait: bool | None,
    status_only: bool,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Calibrate each (architecture, precision, card type) as its own job; a rerun submits only what is missing.

    Every job writes into --db: give a PostgreSQL URL (or a file on a shared disk) on a cluster.

    \b
    memprobe sweep --arch mednext --arch unet --precision fp32 --precision bf16-mixed
    memprobe sweep --arch mednext --executor slurm --slurm-partition gpu --card a100 --card h100 \\
        --db postgresql://me@db.lab/memprobe
    memprobe sweep --arch mednext --arch unet --status
    memprobe sweep --arch mednext --executor slurm --gpus 4 --strategy ddp --device cuda

    A job that died without a result (killed, out of host memory) shows as failed, with the
    reason its log gives; a rerun resubmits it.
    """
    import os
    from pathlib import Path

    from memprobe.core.config import data_parallel
    from memprobe.store.database import ENV_VARIABLE, database_url, default_db_path
    from memprobe.sweep import DEFAULT_PRECISION, SweepJob, SweepSpec, default_folder, run_sweep, sweep_status
    from memprobe.sweep import cards as card_types

    db = db_path or os.environ.get(ENV_VARIABLE) or str(default_db_path())
    if database_url(db) is None:
        db = str(Path(db).expanduser().resolve())  # the jobs run elsewhere
    layout = data_parallel(setup.strategy, setup.world_size)  # a wrong layout is refused before any job runs
    gpus = setup.world_size
    overrides = {k: v for k, v in setup.overrides().items() if k not in ("strategy", "world_size")}
    spec = SweepSpec(
        setup.archs,
        tuple(p or DEFAULT_PRECISION for p in setup.precisions),
        card_types(cards),
        db,
        Path(folder) if folder else default_folder(db),
        executor,
        device,
        None if gpu_mem is None else f"{gpu_mem}B",  # the jobs read it as text
        {
            "partition": slurm_partition or "",
            "gres": slurm_gres or f"gpu:{gpus}",
            "constraint": slurm_constraint or "",
            "time": str(slurm_time),
        },
        str(layout["strategy"]),
        gpus,
        overrides,
    )

    def progress(job: SweepJob) -> None:
        click.echo(f"{job.key}: {job.state.value}" + (f" ({job.detail})" if job.detail else ""), err=True)

    if status_only:
        jobs = sweep_status(spec)
    else:
        jobs = run_sweep(spec, wait=executor == "local" if wait is None else wait, on_progress=progress)
    rows = [
        {"job": job.key, "state": job.state.value, "id": job.job_id or "-", "detail": job.detail or ""}
        for job in jobs
    ]
    emit(Report([job.to_dict() for job in jobs], (("Sweep", rows),)), as_json)
