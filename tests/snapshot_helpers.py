"""Hand-made snapshots: segments, blocks and a trace, as PyTorch writes them."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path
from typing import Any

MIB = 1 << 20
GPU_TRACES = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "gpu_traces"
SETTINGS = {"PYTORCH_CUDA_ALLOC_CONF": "", "max_split_size": -1, "garbage_collection_threshold": 0.0,
            "expandable_segments": False}  # fmt: skip


def event(action: str, address: int, size: int) -> dict[str, Any]:
    return {"action": action, "addr": address, "size": size, "stream": 0, "time_us": 0, "frames": []}


def alloc(address: int, size: int) -> list[dict[str, Any]]:
    return [event("alloc", address, size)]


def free(address: int, size: int) -> list[dict[str, Any]]:
    return [event("free_requested", address, size), event("free_completed", address, size)]


def segment(
    address: int, total: int, blocks: list[tuple[int, int, str]], kind: str = "large"
) -> dict[str, Any]:
    """A segment at the dump; ``blocks`` are (address, size, state)."""
    return {
        "device": 0, "address": address, "total_size": total, "segment_type": kind, "stream": 0,
        "is_expandable": False, "frames": [],
        "blocks": [{"address": a, "size": s, "requested_size": s, "state": state, "frames": []}
                   for a, s, state in blocks],
    }  # fmt: skip


def snapshot(segments: list[dict[str, Any]], trace: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    return {"segments": segments, "device_traces": [trace], "allocator_settings": {**SETTINGS, **settings}}


def write_pickle(path: Path, data: Any) -> Path:
    path.write_bytes(pickle.dumps(data))
    return path


def shared_trace(name_part: str) -> Path:
    return next(path for path in sorted(GPU_TRACES.glob("*.json.gz")) if name_part in path.name)


def load_shared(name_part: str) -> dict[str, Any]:
    return json.loads(gzip.decompress(shared_trace(name_part).read_bytes()))["snapshot"]
