"""Trace against the user's own real GPU runs: ``memprobe verify``'s table, from imported snapshots.

Each imported snapshot is a CUDA measurement of one configuration (``memprobe snapshot
import``). Tracing the same configuration gives the row ``memprobe verify`` would measure on
that GPU: traced allocated and simulated reserved against the real peaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memprobe.core.measurement import Measurement
from memprobe.store.snapshot_evidence import snapshot_measurements
from memprobe.verify.results import VerifyRow


@dataclass(frozen=True)
class SnapshotVerifyRow:
    """A verify row whose CUDA side is an imported snapshot, and the GPU it ran on."""

    gpu: str
    row: VerifyRow


def verify_snapshots(
    db_path: str | Path | None = None, progress: Callable[[int, int, str], None] | None = None
) -> list[SnapshotVerifyRow]:
    """Trace every imported snapshot's configuration and pair it with the real peaks."""
    from memprobe.backends.trace_backend import TraceBackend

    imported = snapshot_measurements(db_path)
    backend = TraceBackend()
    rows = []
    for index, real in enumerate(imported):
        if progress is not None:
            progress(index, len(imported), real.config.label())
        traced = backend.measure(real.config)
        rows.append(SnapshotVerifyRow(real.environment.device_name, _row(real, traced)))
    return rows


def _row(real: Measurement, traced: Measurement) -> VerifyRow:
    config = real.config
    return VerifyRow(
        label=config.label(),
        arch=config.arch,
        patch=config.patch,
        batch=config.batch,
        precision=config.precision.value,
        traced_allocated_bytes=traced.peak_allocated_bytes,
        simulated_reserved_bytes=traced.peak_reserved_bytes,
        cuda_allocated_bytes=real.peak_allocated_bytes,
        cuda_reserved_bytes=real.peak_reserved_bytes,
    )
