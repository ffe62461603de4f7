"""``memprobe verify``: is memprobe right on this GPU? Trace against CUDA, and suggestions run for real."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from memprobe.cli.options import BYTES, db_option, emit, json_option
from memprobe.cli.setup_options import command
from memprobe.core.enums import Precision
from memprobe.core.errors import DeviceUnavailableError
from memprobe.core.units import DEFAULT_GPU_MEM_BYTES

if TYPE_CHECKING:
    from memprobe.verify.run import VerifyTools

QUICK_TIME_LIMIT_SECONDS = 330  # --quick must end within 6 minutes; the item in flight finishes
INCOMPLETE_EXIT_CODE = 75  # EX_TEMPFAIL: stopped at the time limit, run again to continue
NEEDS_CUDA = (
    "memprobe verify needs a CUDA GPU: none is available here; run `scripts/gpu_truth.sh OUT_DIR` "
    "on a GPU machine, or measure here with `memprobe probe --device trace` "
    "(`memprobe verify --rehearse` rehearses the flow on the CPU, without GPU truth)"
)


@command(renamed={"--budget": "--gpu-mem"})
@click.option(
    "--arch", "archs", multiple=True, help="Only these architectures (repeat); default: the whole table."
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice([p.value for p in Precision]),
    help="Only these precisions (repeat).",
)
@click.option(
    "--gpu-mem",
    default=DEFAULT_GPU_MEM_BYTES,
    show_default="24GiB",
    type=BYTES,
    help="Emulated GPU size for the suggestion checks (set_per_process_memory_fraction).",
)
@click.option(
    "--quick", is_flag=True, help="The part of the table that ends within 6 minutes on an H100/H200."
)
@click.option(
    "--out",
    "out_dir",
    default="gpu_truth",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for measurements.jsonl, verify.json and gpu_truth.md; a rerun continues from it.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=1),
    default=None,
    help=f"Start no new measurement after this many seconds (default {QUICK_TIME_LIMIT_SECONDS} with --quick).",
)
@click.option(
    "--rehearse", is_flag=True, help="Run the flow on the CPU (cpu backend for CUDA): NOT GPU truth."
)
@db_option
@json_option
def verify(
    archs: tuple[str, ...],
    precisions: tuple[str, ...],
    gpu_mem: int,
    quick: bool,
    out_dir: Path,
    time_limit: float | None,
    rehearse: bool,
    db_path: str | None,
    as_json: bool,
) -> None:
    """Check memprobe against a real GPU: trace vs CUDA memory, and suggestions run for real.

    For each configuration of a fixed table (every architecture at fp32 and bf16-mixed in two
    sizes, MedNeXt and BasicUNet also fp16-mixed) runs trace and CUDA and compares peak
    allocated and reserved memory; measures the CUDA context; runs each `suggest` answer at the
    emulated --gpu-mem for 3 steps, and batch + 1; lists the allocations CUDA made that trace did
    not see in one step of MedNeXt and SwinUNETR. Each result is appended to
    OUT/measurements.jsonl as it is taken: a run cut short continues where it stopped when run
    again. Exit code 75: stopped at the time limit; 1: a suggestion did not fit.

    \b
    memprobe verify --quick --out gpu_truth
    memprobe verify --arch mednext --precision bf16-mixed --gpu-mem 16GiB
    memprobe verify --rehearse --arch tests.tiny_models:tiny_net --precision fp32 --gpu-mem 16MiB
    """
    from memprobe.cli.render.verify_tables import OUTPUT_NAMES, build_report, write_outputs
    from memprobe.core.output_paths import check_output_folder
    from memprobe.store.database import database_files
    from memprobe.verify import LOG_NAME, ResultLog, build_plan
    from memprobe.verify.run import run_verify

    if not rehearse:
        from memprobe.backends import cuda_available

        if not cuda_available():  # before anything is written
            raise DeviceUnavailableError(NEEDS_CUDA)
    plan = build_plan(archs or None, precisions or None, quick=quick, budget_bytes=gpu_mem)
    reading = database_files(db_path)
    *_, log_path = check_output_folder(out_dir, (*OUTPUT_NAMES, LOG_NAME), reading=reading)
    tools = _tools(rehearse, db_path)
    log = ResultLog(log_path, tools.device)
    limit = time_limit if time_limit is not None else (QUICK_TIME_LIMIT_SECONDS if quick else None)
    result = run_verify(plan, tools, log, on_progress=_progress, time_limit_seconds=limit)
    write_outputs(result, out_dir, reading=reading)
    emit(build_report(result), as_json)
    click.echo(f"wrote {out_dir}/gpu_truth.md and verify.json ({log.reused} results reused)", err=True)
    if result.unsafe:
        click.echo(
            f"memprobe: {len(result.unsafe)} suggestions did not fit: see {out_dir}/gpu_truth.md", err=True
        )
        raise click.exceptions.Exit(1)
    if not result.complete:
        click.echo("memprobe: stopped at the time limit: run the same command again to continue", err=True)
        raise click.exceptions.Exit(INCOMPLETE_EXIT_CODE)


def _tools(rehearse: bool, db_path: str | None) -> VerifyTools:
    if rehearse:
        from memprobe.verify.rehearsal import rehearsal_tools

        return rehearsal_tools(db_path)
    from memprobe.verify.run import cuda_tools

    return cuda_tools(db_path)


def _progress(index: int, total: int, item: str, reused: bool) -> None:
    click.echo(f"[{index}/{total}] {item}{' (stored)' if reused else ''}", err=True)
