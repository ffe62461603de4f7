"""``memprobe probe``: measure one training step."""

from __future__ import annotations

from typing import Any

import click

from memprobe.cli.inference import inference_mode, probe_view
from memprobe.cli.options import (
    BATCH,
    BYTES,
    arch_option,
    custom_arch_with_rule,
    data_parallel_options,
    emit,
    json_option,
    patch_option,
    shape_rule_options,
    step_options,
)
from memprobe.cli.render import Report
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


@click.command()
@inference_mode(probe_view, ("batch", "optimizer", "deep_supervision", "budget", "isolate"))
@arch_option
@patch_option(required=True)
@click.option("--batch", default=2, show_default=True, type=BATCH, help="Batch size.")
@step_options
@shape_rule_options
@click.option(
    "--device",
    default=None,
    help="cuda, trace (fake tensors, no GPU) or cpu; default cuda if present, else trace.",
)
@click.option(
    "--budget",
    default=None,
    type=BYTES,
    help="Cap CUDA memory at this size, e.g. 24GiB (emulates a smaller GPU).",
)
@click.option("--isolate", is_flag=True, help="Run the step in a child process (a crash becomes a result).")
@click.option(
    "--snapshot",
    "snapshot_path",
    default=None,
    metavar="FILE",
    help="Write the step as a PyTorch memory snapshot (.pickle, or .json): on trace/cpu the simulated "
    "allocator's, on cuda the real one recorded. Read it with python -m torch.cuda._memory_viz.",
)
@data_parallel_options
@click.option("--bucket-cap-mb", type=click.FloatRange(min=0, min_open=True), default=25.0, show_default=True,
              help="DDP's bucket_cap_mb.")  # fmt: skip
@click.option("--gradient-as-bucket-view", is_flag=True, help="DDP's gradient_as_bucket_view.")
@json_option
def probe(
    arch: str,
    patch: tuple[int, int, int],
    batch: int,
    precision: str,
    optimizer: str,
    in_channels: int,
    out_channels: int,
    deep_supervision: bool,
    training_step: str,
    checkpointing: bool,
    divisors: tuple[int, int, int] | None,
    min_patch: tuple[int, int, int] | None,
    device: str | None,
    budget: int | None,
    isolate: bool,
    snapshot_path: str | None,
    gpus: int,
    strategy: str | None,
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
    from memprobe.backends import get_backend
    from memprobe.core.config import make_step_config
    from memprobe.training.named_steps import load_step

    arch = custom_arch_with_rule(arch, divisors, min_patch, in_channels, out_channels, find=False)
    config = make_step_config(
        arch,
        patch,
        batch,
        precision=precision,
        optimizer=optimizer,
        in_channels=in_channels,
        out_channels=out_channels,
        deep_supervision=deep_supervision,
        step=training_step,
        checkpointing=checkpointing,
    )
    load_step(config.step)  # a wrong reference is refused before anything runs
    if gpus > 1 or strategy is not None or gradient_as_bucket_view:
        from memprobe.backends.distributed import DistributedOptions
        from memprobe.core.config import data_parallel
        from memprobe.core.errors import InvalidInputError

        layout = data_parallel(strategy, gpus)
        if gradient_as_bucket_view and layout["strategy"] != "ddp":
            raise InvalidInputError("--gradient-as-bucket-view is DDP's: add --gpus N (N of 2 or more)")
        options = DistributedOptions(layout["strategy"], gpus, bucket_cap_mb, gradient_as_bucket_view)  # type: ignore[arg-type]
        _probe_per_rank(config, options, device, as_json)
        return
    budget_bytes = budget
    backend = get_backend(device, budget_bytes=budget_bytes, isolate=isolate)  # refuses a bad device first
    if snapshot_path is not None:
        _prepare_snapshot(backend, snapshot_path, isolate)
    click.echo(f"measuring {config.label()} on {backend.kind.value} ...", err=True)
    measurement = backend.measure(config)
    if snapshot_path is not None and measurement.ok:
        _write_snapshot(backend, snapshot_path)
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


def _prepare_snapshot(backend: Any, path: str, isolate: bool) -> None:
    """Check ``--snapshot``'s file and ask the backend to keep what it needs, before measuring."""
    from memprobe.core.errors import InvalidInputError
    from memprobe.core.output_paths import check_output_path

    check_output_path(path, "--snapshot", suffixes=(".pickle", ".pkl", ".json"))
    if isolate:
        raise InvalidInputError("--snapshot records in this process: drop --isolate")
    if hasattr(backend, "record_trace"):
        backend.record_trace = True
    else:
        backend.snapshot_path = path


def _write_snapshot(backend: Any, path: str) -> None:
    if getattr(backend, "last_trace", None) is None:
        return  # cuda: the backend dumped the real snapshot itself
    from memprobe.snapshots.export import snapshot_from_trace, write_snapshot

    write_snapshot(path, snapshot_from_trace(backend.last_trace))
    click.echo(f"wrote {path}: the step as the simulated caching allocator would record it", err=True)


def _probe_per_rank(config: Any, options: Any, device: str | None, as_json: bool) -> None:
    """One rank's step under DDP or FSDP2, with the per-rank and global batch."""
    from memprobe.backends import default_device_kind
    from memprobe.backends.distributed import measure_per_rank
    from memprobe.planning.exports import data_parallel, data_parallel_note

    device = device or default_device_kind().value

    click.echo(
        f"measuring {config.label()} as 1 of {options.world_size} {options.strategy.value} ranks on {device} ...",
        err=True,
    )
    rank = measure_per_rank(config, options, device)
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
