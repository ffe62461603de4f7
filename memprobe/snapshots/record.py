"""``memprobe.record_step()``: record one step of a user's own training as a snapshot.

Wrapped around a training step on a GPU, it records the caching allocator's history for the
step, dumps the snapshot, and writes what was trained beside it (``FILE.memprobe.json``), so
``memprobe snapshot import FILE`` can store the step's real peaks without asking again::

    with memprobe.record_step("step.pickle", arch="mednext", patch=(128, 128, 128), batch=2,
                              precision="bf16-mixed"):
        loss = train_step(batch)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memprobe.backends.memory_history import MemoryHistory, TorchMemoryHistory
from memprobe.core.config import StepConfig, make_step_config
from memprobe.core.output_paths import check_output_path, write_atomically

SIDECAR_SUFFIX = ".memprobe.json"
MAX_ENTRIES = 1_000_000  # events kept by PyTorch's ring buffer: a 3D step makes tens of thousands


def sidecar_path(snapshot_path: str | Path) -> Path:
    return Path(f"{snapshot_path}{SIDECAR_SUFFIX}")


@contextmanager
def record_step(
    path: str | Path,
    *,
    arch: str,
    patch: Sequence[int],
    batch: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    in_channels: int = 1,
    out_channels: int = 2,
    deep_supervision: bool = False,
    history: MemoryHistory | None = None,
    gpu_facts: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[StepConfig]:
    """Record the CUDA memory history of the step run inside the ``with`` block.

    The configuration is validated before anything is recorded; the snapshot and its sidecar
    are written only when the block finishes without an exception.

    Args:
        path: the snapshot file to write (a pickle, as PyTorch writes it).
        arch, patch, batch, precision, optimizer, in_channels, out_channels, deep_supervision:
            what the step trains, as ``memprobe probe`` takes them.
        history: the recorder (default: ``torch.cuda``'s).
        gpu_facts: the GPU's name, memory and versions, for the sidecar (default: this GPU's).
    """
    config = make_step_config(arch, patch, batch, precision=precision, optimizer=optimizer,
                              in_channels=in_channels, out_channels=out_channels,
                              deep_supervision=deep_supervision)  # fmt: skip
    target = check_output_path(path, "record_step path")
    recorder = history or TorchMemoryHistory()
    recorder.synchronize()
    recorder.start(MAX_ENTRIES)
    try:
        yield config
        recorder.synchronize()
        handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
        os.close(handle)
        try:
            recorder.dump(partial)
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
        facts = (gpu_facts or _this_gpu)()
        write_atomically(sidecar_path(target), json.dumps({"config": config.to_dict(), **facts}, indent=1))
    finally:
        recorder.stop()


def _this_gpu() -> dict[str, Any]:
    import torch

    from memprobe.backends.cuda import TorchCudaRuntime

    runtime = TorchCudaRuntime()
    return {
        "gpu": torch.cuda.get_device_name(),
        "gpu_memory_bytes": runtime.total_memory_bytes(),
        **runtime.versions(),
    }
