"""A VerifyResult as tables (printed, and written as gpu_truth.md) and verify.json: presentation only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from memprobe.cli.render import Report
from memprobe.core.errors import InvalidInputError
from memprobe.core.output_paths import check_output_folder, write_atomically
from memprobe.core.units import format_bytes, format_shape
from memprobe.verify.results import VerifyResult

JSON_NAME = "verify.json"
MARKDOWN_NAME = "gpu_truth.md"
OUTPUT_NAMES = (JSON_NAME, MARKDOWN_NAME)
UNSEEN_SHOWN = 8  # per recorded step; verify.json has them all
REHEARSAL_NOTE = (
    "REHEARSAL on the CPU: the 'CUDA' columns are the cpu backend, not a GPU; nothing here is GPU truth"
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def _size(value: int | None, oom: bool = False) -> str:
    return "OOM" if oom else format_bytes(value)


def build_report(result: VerifyResult) -> Report:
    """Four tables: trace vs CUDA, suggestion safety, the context, allocations trace did not see."""
    rows = [
        {
            "configuration": r.label,
            "cudnn.benchmark": "on" if r.cudnn_benchmark else "off",
            "traced allocated": _size(r.traced_allocated_bytes),
            "CUDA allocated": _size(r.cuda_allocated_bytes, r.cuda_oom),
            "error %": _percent(r.allocated_error),
            "simulated reserved": _size(r.simulated_reserved_bytes),
            "CUDA reserved": _size(r.cuda_reserved_bytes, r.cuda_oom),
            "reserved error %": _percent(r.reserved_error),
        }
        for r in result.rows
    ]
    safety = [
        {
            "arch": s.arch,
            "patch": format_shape(s.patch),
            "precision": s.precision,
            "suggested batch": s.suggested_batch,
            "3 steps fit": "yes" if s.fits_suggested else "NO",
            "batch + 1 fits": "yes" if s.fits_next else "no",
            "true largest": f"{s.true_largest_batch}{'+' if s.capped else ''}",
            "left unused": s.batches_left_unused,
            "suggested from": s.suggestion_source,
        }
        for s in result.safety
    ]
    context = []
    if result.context is not None:
        c = result.context
        context.append(
            {
                "GPU memory": format_bytes(c.total_bytes),
                "used before (NVML)": format_bytes(c.used_before_bytes),
                "used after init": format_bytes(c.used_after_init_bytes),
                "PyTorch reserved": format_bytes(c.reserved_after_init_bytes),
                "CUDA context": format_bytes(c.context_bytes),
            }
        )
    unseen = [
        {"step": h.label, "size": format_bytes(u.size_bytes), "count": u.count, "op (innermost frame)": u.op}
        for h in result.history
        for u in h.unseen[:UNSEEN_SHOWN]
    ]
    return Report(
        result.to_dict(),
        (
            ("Trace vs CUDA: peak allocated and reserved (error = (trace - CUDA) / CUDA)", rows),
            (f"Suggestion safety at {format_bytes(result.budget_bytes)} (3 consecutive steps)", safety),
            ("CUDA context", context),
            (f"Allocations CUDA made that trace did not see (largest {UNSEEN_SHOWN} per step)", unseen),
        ),
        _notes(result),
    )


def _notes(result: VerifyResult) -> tuple[str, ...]:
    notes = [REHEARSAL_NOTE] if result.rehearsal else []
    errors = [abs(r.allocated_error) for r in result.rows if r.allocated_error is not None]
    if errors:
        notes.append(f"allocated: worst |error| {100 * max(errors):.1f}% over {len(errors)} configurations")
    for h in result.history:
        notes.append(
            f"{h.label}: {h.cuda_allocations} CUDA allocations, {h.trace_allocations} traced; "
            f"unseen by trace: {sum(u.count for u in h.unseen)} ({format_bytes(h.unseen_bytes)})"
        )
    if result.safety:
        notes.append(
            "the budget caps PyTorch's allocator (set_per_process_memory_fraction); a real card of that "
            "size also holds the CUDA context, which suggest's safety margin (0.9) has to cover"
        )
    notes += [
        f"UNSAFE: suggested batch {s.suggested_batch} for {s.arch} {s.precision} did not fit"
        for s in result.unsafe
    ]
    notes += [f"failed: {failure}" for failure in result.failures]
    if result.pending:
        notes.append(
            f"incomplete: {len(result.pending)} items not reached in time; run the same command again to continue"
        )
    return tuple(notes)


def _environment_lines(result: VerifyResult) -> list[str]:
    env = result.environment
    keys = (
        "device_name",
        "total_memory_bytes",
        "driver_version",
        "cuda_version",
        "cudnn_version",
        "torch_version",
        "monai_version",
        "memprobe_version",
    )
    return [
        f"- {key}: {format_bytes(env.get(key)) if key == 'total_memory_bytes' else env.get(key)}"
        for key in keys
    ]


def write_outputs(result: VerifyResult, out_dir: Path, *, reading: Iterable[str | Path] = ()) -> None:
    """Write ``verify.json`` (everything) and ``gpu_truth.md`` (the tables) into ``out_dir``, each whole.

    Both are checked like any ``--out`` first: never a file in ``reading`` (the database).

    Raises:
        InvalidInputError: a file cannot be written, or is one memprobe reads.
    """
    json_path, markdown_path = check_output_folder(out_dir, OUTPUT_NAMES, reading=reading)
    _write(json_path, json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    _write(markdown_path, _markdown(result))


def _markdown(result: VerifyResult) -> str:
    from tabulate import tabulate

    report = build_report(result)
    title = (
        "REHEARSAL (CPU, not GPU truth)" if result.rehearsal else str(result.environment.get("device_name"))
    )
    markdown = [f"# memprobe verify: trace against CUDA on {title}", "", *_environment_lines(result)]
    for heading, rows in report.tables:
        table = tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else "(none)"
        markdown += ["", f"## {heading}", "", table]
    markdown += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    return "\n".join(markdown) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole: a full disk leaves the last run's file, not half of this one's."""
    try:
        write_atomically(path, text)
    except OSError as error:
        raise InvalidInputError(f"cannot write {path}: {error.strerror or error}") from None
