"""Turn a user's real GPU snapshot into a CUDA measurement in the benchmark database.

The peaks are the real allocator's over the chosen span (the whole trace, an event range, or
the step ``record_step`` recorded), rebuilt from the trace's addresses: reserved exactly as
``max_memory_reserved`` counts it, allocated as ``max_memory_allocated`` does, blocks after
splitting. The measurement's ``reserved_source`` is "snapshot". A snapshot memprobe itself
simulated is refused: it is a prediction, not a GPU's truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprobe.core.config import StepConfig
from memprobe.core.errors import InvalidInputError
from memprobe.core.input_files import read_input_text
from memprobe.core.measurement import Environment, Measurement
from memprobe.snapshots.check import SnapshotCheck, check_snapshot
from memprobe.snapshots.reader import LoadedSnapshot, load_snapshot
from memprobe.snapshots.record import sidecar_path
from memprobe.store.snapshot_evidence import SNAPSHOT_SOURCE

UNNAMED_GPU = "unnamed GPU (snapshot)"


@dataclass(frozen=True)
class ImportedSnapshot:
    """The measurement a snapshot gave, and the replay it came from."""

    measurement: Measurement
    check: SnapshotCheck


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """What ``record_step`` wrote beside the snapshot (empty when there is none)."""
    side = sidecar_path(path)
    if not side.exists():
        return {}
    text = read_input_text(side, "the record_step file")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise InvalidInputError(
            f"{side} is damaged ({type(error).__name__}): remove it or record the step again"
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise InvalidInputError(f"{side} holds no 'config': remove it or record the step again")
    return data


def measurement_from_snapshot(
    path: str | Path,
    config: StepConfig,
    *,
    gpu: str | None = None,
    gpu_memory_bytes: int | None = None,
    device_index: int | None = None,
    from_event: int | None = None,
    to_event: int | None = None,
    versions: dict[str, Any] | None = None,
) -> ImportedSnapshot:
    """The real peaks of ``path``'s trace as a CUDA measurement of ``config``.

    Raises:
        InvalidInputError: the file is no real snapshot (simulated, damaged, no trace).
    """
    loaded: LoadedSnapshot = load_snapshot(path)
    check = check_snapshot(loaded, device_index, from_event, to_event)
    if check.simulated_snapshot:
        raise InvalidInputError(
            f"{path} was written by memprobe's trace backend (a prediction): only snapshots recorded "
            "on a GPU can be imported as CUDA measurements"
        )
    facts = {key: value for key, value in (versions or {}).items()
             if key in ("driver_version", "cuda_version", "cudnn_version", "torch_version")}  # fmt: skip
    environment = Environment(
        device_kind="cuda",
        device_name=gpu or UNNAMED_GPU,
        total_memory_bytes=gpu_memory_bytes,
        memprobe_version=_memprobe_version(),
        **facts,
    )
    measurement = Measurement(
        config=config,
        environment=environment,
        peak_allocated_bytes=check.real_peak_allocated_bytes,
        peak_reserved_bytes=check.real_peak_reserved_bytes,
        reserved_source=SNAPSHOT_SOURCE,
        simulated_allocated_bytes=check.simulated_peak_allocated_bytes,
    )
    return ImportedSnapshot(measurement, check)


def _memprobe_version() -> str:
    from memprobe.__version__ import __version__

    return __version__
