"""``memprobe snapshot``: meet real GPUs through PyTorch memory snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from memprobe.cli.options import (
    BATCH,
    BYTES,
    CHANNELS,
    INDEX,
    PATCH_SIZE,
    db_option,
    emit,
    json_option,
)
from memprobe.cli.render import Report
from memprobe.core.units import format_bytes

if TYPE_CHECKING:
    from memprobe.snapshots.check import SnapshotCheck

_EVENT = INDEX
_WHAT = (
    "the allocator model alone, replaying this trace's own requests from the state rebuilt at its first "
    "event; not memprobe's tracing of a network"
)


@click.group()
def snapshot() -> None:
    """Check the allocator model against real CUDA snapshots; import real runs as measurements.

    \b
    memprobe snapshot check snap.pickle
    memprobe snapshot import snap.pickle --arch mednext --patch 128 128 128 --batch 2 --precision bf16-mixed --gpu "NVIDIA A100-SXM4-80GB"
    """


def device_index_option(function: Any) -> Any:
    return click.option("--device-index", type=INDEX, default=None,
                        help="The GPU whose trace to use (default: the only one with a trace).")(function)  # fmt: skip


@snapshot.command("check")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@device_index_option
@json_option
def check(files: tuple[str, ...], device_index: int | None, as_json: bool) -> None:
    """Replay a snapshot's trace through the allocator model and compare with the real allocator.

    FILE is what torch.cuda.memory._dump_snapshot wrote (a pickle, read without running any
    code in it), or the same dictionary as .json / .json.gz.

    \b
    memprobe snapshot check snap.pickle
    memprobe snapshot check run1.pickle run2.pickle --json
    """
    from memprobe.snapshots.check import check_snapshot
    from memprobe.snapshots.reader import load_snapshot

    results = [check_snapshot(load_snapshot(file), device_index) for file in files]
    data: Any = results[0].to_dict() if len(results) == 1 else [result.to_dict() for result in results]
    notes = [
        f"what this measures: {_WHAT}",
        "peaks over the replayed trace (the real ones rebuilt from its addresses)",
    ]
    for result in results:
        notes += [f"{result.path}: {note}" for note in (*result.notes, *_setting_notes(result))]
        if result.first_disagreement is not None:
            first = result.first_disagreement
            notes.append(f"{result.path}: first disagreement at event {first.event_index} "
                         f"({first.request_bytes} B): GPU {first.real}, model {first.simulated}")  # fmt: skip
        if result.simulated_snapshot:
            notes.append(f"{result.path}: written by memprobe (simulated), not recorded on a GPU")
    emit(
        Report(
            data, (("Allocator model vs the real allocator", [_check_row(r) for r in results]),), tuple(notes)
        ),
        as_json,
    )


def _check_row(result: SnapshotCheck) -> dict[str, object]:
    return {
        "snapshot": result.path if len(result.path) <= 60 else f"...{result.path[-57:]}",
        "events": result.events_replayed,
        "peak reserved real": format_bytes(result.real_peak_reserved_bytes),
        "simulated": format_bytes(result.simulated_peak_reserved_bytes),
        "error %": round(100 * result.peak_reserved_error, 3),
        "peak allocated real": format_bytes(result.real_peak_allocated_bytes),
        "simulated ": format_bytes(result.simulated_peak_allocated_bytes),
        "same decisions %": round(100 * result.decision_agreement, 2),
        "final reserved real": format_bytes(result.real_final_reserved_bytes),
        "simulated  ": format_bytes(result.simulated_final_reserved_bytes),
    }


def _setting_notes(result: SnapshotCheck) -> list[str]:
    return [f"allocator setting not followed by the model: {name}" for name in result.settings_not_followed]


@snapshot.command("import")
@click.argument("file", metavar="FILE")
@click.option(
    "--arch", default=None, help="The network trained (a registered name); default from record_step's file."
)
@click.option("--patch", nargs=3, type=PATCH_SIZE, default=None, metavar="D H W", help="Patch size trained.")
@click.option("--batch", type=BATCH, default=None, help="Batch size trained.")
@click.option("--precision", type=click.Choice(["fp32", "fp16-mixed", "bf16-mixed", "fp16", "bf16"]), default=None,
              help="Precision trained (default from record_step's file, else fp32).")  # fmt: skip
@click.option(
    "--optimizer", type=click.Choice(["adamw", "sgd"]), default=None, help="Optimizer (default adamw)."
)
@click.option("--in-channels", type=CHANNELS, default=None, help="Input channels (default 1).")
@click.option("--out-channels", type=CHANNELS, default=None, help="Output classes (default 2).")
@click.option("--deep-supervision", is_flag=True, default=None, help="Trained with deep-supervision heads.")
@click.option("--gpu", default=None, help="GPU name, as torch.cuda.get_device_name() gives it.")
@click.option("--gpu-memory", type=BYTES, default=None, help="The GPU's total memory, e.g. 80GiB.")
@click.option(
    "--from-event", type=_EVENT, default=None, help="First trace event of the step (default: the first)."
)
@click.option(
    "--to-event", type=_EVENT, default=None, help="Last trace event of the step (default: the last)."
)
@device_index_option
@db_option
@json_option
def import_snapshot(file: str, gpu: str | None, gpu_memory: int | None, from_event: int | None,
                    to_event: int | None, device_index: int | None, db_path: str | None, as_json: bool,
                    **trained: Any) -> None:  # fmt: skip
    """Store a real GPU run's peak allocated and reserved as a CUDA measurement (source "snapshot").

    The configuration comes from the options, else from the FILE.memprobe.json that
    memprobe.record_step() wrote beside the snapshot.

    \b
    memprobe snapshot import step.pickle
    memprobe snapshot import run.pickle --arch mednext --patch 128 128 128 --batch 2 \\
        --precision bf16-mixed --gpu "NVIDIA A100-SXM4-80GB" --gpu-memory 80GiB
    """
    from memprobe.core.config import StepConfig, make_step_config
    from memprobe.core.errors import InvalidInputError
    from memprobe.snapshots.measure import measurement_from_snapshot, read_sidecar
    from memprobe.store.database import Database

    recorded = read_sidecar(file)
    stored = StepConfig.from_dict(recorded["config"]).to_dict() if recorded else {}
    # What the step trained (--arch, --patch, --batch, --precision, ...): given wins, else record_step's file.
    values: dict[str, Any] = {**stored, **{key: value for key, value in trained.items() if value is not None}}
    missing = [f"--{key}" for key in ("arch", "patch", "batch") if values.get(key) is None]
    if missing:
        raise InvalidInputError(
            f"say what the snapshot trained: {', '.join(missing)} (no record_step file beside it)"
        )
    config = make_step_config(
        values["arch"], values["patch"], values["batch"], precision=values.get("precision", "fp32"),
        optimizer=values.get("optimizer", "adamw"), in_channels=values.get("in_channels", 1),
        out_channels=values.get("out_channels", 2), deep_supervision=bool(values.get("deep_supervision")),
    )  # fmt: skip
    imported = measurement_from_snapshot(
        file, config, gpu=gpu or recorded.get("gpu"), gpu_memory_bytes=gpu_memory or recorded.get("gpu_memory_bytes"),
        device_index=device_index, from_event=from_event, to_event=to_event, versions=recorded,
    )  # fmt: skip
    database = Database.open(db_path)
    try:
        row_id = database.add_measurement(imported.measurement)
    finally:
        database.close()
    m = imported.measurement
    row = {
        "configuration": config.label(),
        "GPU": m.environment.device_name,
        "peak allocated": format_bytes(m.peak_allocated_bytes),
        "peak reserved": format_bytes(m.peak_reserved_bytes),
        "events": imported.check.events_replayed,
    }
    notes = (
        "peaks of the real allocator over the span, rebuilt from the snapshot's addresses "
        "(max_memory_allocated / max_memory_reserved as if reset at its first event)",
        f"stored as measurement {row_id} (device cuda, reserved source 'snapshot') in {database.location}",
    )
    emit(
        Report(
            {**m.to_dict(), "id": row_id, "check": imported.check.to_dict()}, (("Imported", [row]),), notes
        ),
        as_json,
    )


@snapshot.command("verify")
@db_option
@json_option
def verify(db_path: str | None, as_json: bool) -> None:
    """Trace each imported snapshot's configuration and compare with its real peaks (no GPU needed).

    The rows memprobe verify measures on a GPU, with the GPU side taken from the runs
    `memprobe snapshot import` stored.

    \b
    memprobe snapshot verify
    memprobe snapshot verify --db lab.sqlite --json
    """
    from memprobe.cli.progress import Progress
    from memprobe.verify.results import to_record
    from memprobe.verify.snapshot_runs import verify_snapshots

    with Progress("tracing imported snapshots", 1) as progress:

        def advance(index: int, total: int, item: str) -> None:
            progress.length = max(progress.length, total)
            progress.advance(item)

        rows = verify_snapshots(db_path, advance)
    table = [
        {
            "configuration": item.row.label,
            "GPU": item.gpu,
            "real allocated": format_bytes(item.row.cuda_allocated_bytes),
            "trace allocated": format_bytes(item.row.traced_allocated_bytes),
            "error %": _percent(item.row.allocated_error),
            "real reserved": format_bytes(item.row.cuda_reserved_bytes),
            "simulated reserved": format_bytes(item.row.simulated_reserved_bytes),
            "error %  ": _percent(item.row.reserved_error),
        }
        for item in rows
    ]
    notes = (
        (
            "real: the peaks of runs recorded on a GPU and imported with `memprobe snapshot import`; trace: the same "
            "configuration traced here; error: (trace - real) / real, negative where trace under-predicts",
        )
        if rows
        else ("no imported snapshots in this database: `memprobe snapshot import FILE ...` stores one",)
    )
    data = [{"gpu": item.gpu, **to_record(item.row), "allocated_error": item.row.allocated_error,
             "reserved_error": item.row.reserved_error} for item in rows]  # fmt: skip
    emit(Report(data, (("Trace vs imported real runs", table),), notes), as_json)


def _percent(value: float | None) -> object:
    return "-" if value is None else round(100 * value, 2)
