"""``memprobe probe``: measure one training step."""

from __future__ import annotations

from typing import Any

import click

from memprobe.cli.inference import inference_mode, probe_view
from memprobe.cli.options import (
    BATCH,
    BYTES,
    custom_arch_with_rule,
    emit,
    json_option,
    patch_option,
    shape_rule_options,
    training_option,
)
from memprobe.cli.render import Report
from memprobe.cli.setup_options import SetupChoice, command, setup_options
from memprobe.core.measurement import Measurement
from memprobe.core.units import format_bytes


def measurement_row(m: Measurement) -> dict[str, object]:
    return {
        "configuration": m.config.label(),
        "device": m.environment.device_name,
        "peak allocated": "OOM" if m.oom else (m.error or format_bytes(m.peak_allocated_bytes)),
        f"peak reserved ({m.reserved_source or '-'})": format_bytes(m.peak_reserved_bytes)
        if m.peak_reserved_bytes
        else "-",
        "step s": round(m.step_seconds, 2) if m.step_seconds else "-",
    }


@command(renamed={"--budget": "--gpu-mem"})
@inference_mode(probe_view)
@setup_options()
@patch_option(required=True)
@training_option("--batch", default=2, show_default=True, type=BATCH, help="Batch size.")
@shape_rule_options
@click.option(
    "--device",
    default=None,
    help="cuda, trace (fake tensors, no GPU) or cpu; default cuda if present, else trace.",
)
@training_option(
    "--gpu-mem",
    default=None,
    type=BYTES,
    help="Cap CUDA memory at this size, e.g. 24GiB (emulates a smaller GPU); --budget is its old name.",
)
@click.option(
    "--isolate",
    is_flag=True,
    help="Run the step (or inference) in a child process (a crash becomes a result).",
)
@training_option(
    "--snapshot",
    "snapshot_path",
    default=None,
    metavar="FILE",
    help="Write the step as a PyTorch memory snapshot (.pickle, or .json): on trace/cpu the simulated "
    "allocator's, on cuda the real one recorded. Read it with python -m torch.cuda._memory_viz.",
)
@training_option("--bucket-cap-mb", type=click.FloatRange(min=0, min_open=True), default=25.0,
                 show_default=True, help="DDP's bucket_cap_mb.")  # fmt: skip
@training_option("--gradient-as-bucket-view", is_flag=True, help="DDP's gradient_as_bucket_view.")
@json_option
def probe(
    setup: SetupChoice,
    patch: tuple[int, int, int],
    batch: int,
    divisors: tuple[int, int, int] | None,
    min_patch: tuple[int, int, int] | None,
    device: str | None,
    gpu_mem: int | None,
    isolate: bool,
    snapshot_path: str | None,
    bucket_cap_mb: float,
    gradient_as_bucket_view: bool,
    as_json: bool,
) -> None:
    """Run one real training step and report its peak memory.

    The step is forward, Dice+CE loss, backward and optimizer step (or the --step chosen); the
    peak is read on the second step, when optimizer state exists. On CUDA it is max_memory_allocated (and
    max_memory_reserved); on trace and cpu every tensor allocation is counted the same way.
    With --gpus N one rank of DDP or FSDP2 is measured: on trace and cpu in this process (a fake
    process group), on cuda with N ranks launched, one per GPU, the worst rank reported.

    \b
    memprobe probe --arch mednext --patch 128 128 128 --batch 2 --device trace
    memprobe probe --arch basicunet --patch 96 96 96 --batch 4 --precision bf16-mixed --json
    memprobe probe --arch basicunet --patch 96 96 96 --step mytrain:step --device trace
    memprobe probe --arch basicunet --patch 96 96 96 --batch 2 --gpus 4 --strategy fsdp --device trace
    """
    from memprobe import api

    arch = custom_arch_with_rule(
        setup.arch, divisors, min_patch, setup.in_channels, setup.out_channels, find=False
    )
    if setup.world_size > 1 or setup.strategy is not None or gradient_as_bucket_view:
        rank = api.probe_ranks(arch, patch, batch, setup.precision, device=device, bucket_cap_mb=bucket_cap_mb,
                               gradient_as_bucket_view=gradient_as_bucket_view, on_start=_say_rank,
                               **setup.overrides())  # fmt: skip
        _show_rank(rank, as_json)
        return
    measurement = api.probe(arch, patch, batch, setup.precision, device=device, gpu_mem=gpu_mem, isolate=isolate,
                            snapshot=snapshot_path, on_start=_say, **setup.overrides())  # fmt: skip
    if snapshot_path is not None and measurement.ok and measurement.environment.device_kind != "cuda":
        click.echo(
            f"wrote {snapshot_path}: the step as the simulated caching allocator would record it", err=True
        )
    if measurement.error is not None:  # an isolated probe's process crashed or exited
        from memprobe.core.errors import ModelError

        raise ModelError(f"the model exited abnormally: {measurement.error}")
    kind = measurement.environment.device_kind
    notes = [
        f"peak allocated = {'torch.cuda.max_memory_allocated' if kind == 'cuda' else 'live tensor storage, counted as the CUDA caching allocator does (512-byte blocks)'}"
        f" on {kind} ({measurement.environment.device_name}); "
        "phases: "
        + ", ".join(
            f"{k} {format_bytes(v)}" for k, v in measurement.phase_peaks_bytes.items() if "." not in k
        )
    ]
    if kind != "cuda":
        notes.append(
            "peak reserved is simulated: the step's allocations replayed through a model of the CUDA caching "
            f"allocator (which would count {format_bytes(measurement.simulated_allocated_bytes)} allocated); "
            "the CUDA context and cuDNN workspaces are not in either figure"
        )
    else:
        notes.append(f"CUDA context outside the allocator: {format_bytes(measurement.context_bytes)}")
    emit(Report(measurement.to_dict(), (("", [measurement_row(measurement)]),), tuple(notes)), as_json)


def _say(config: Any, kind: str) -> None:
    click.echo(f"measuring {config.label()} on {kind} ...", err=True)


def _say_rank(config: Any, kind: str) -> None:
    click.echo(f"measuring {config.label()} as 1 of {config.world_size} {config.strategy.value} ranks on {kind} ...",
               err=True)  # fmt: skip


def _show_rank(rank: Any, as_json: bool) -> None:
    """One rank's step under DDP or FSDP2, with the per-rank and global batch."""
    from memprobe.planning.exports import data_parallel, data_parallel_note

    config, options = rank.measurement.config, rank.options
    global_batch = config.batch * options.world_size
    row = {
        **measurement_row(rank.measurement),
        "strategy": f"{options.strategy.value} x{options.world_size}",
        "per-rank batch": config.batch,
        "global batch": global_batch,
        "DDP buckets": format_bytes(rank.gradient_bucket_bytes) if rank.gradient_bucket_bytes else "-",
        **{f"{kind} per rank": format_bytes(value) for kind, value in rank.state_bytes.items()},
    }
    notes = (data_parallel_note(config.batch, options.strategy.value, options.world_size),)
    data = {**rank.to_dict(), **data_parallel(config.batch, options.strategy.value, options.world_size)}
    emit(Report(data, (("", [row]),), notes), as_json)
