"""Write a traced step as a PyTorch memory snapshot, for the viewer people already know.

The step's allocations are replayed through the allocator model, which gives every block an
address in a segment; the measured step's events become the snapshot's trace (``alloc``,
``free_requested``/``free_completed``, ``segment_alloc``), and the model's segments and blocks
at the end become its ``segments``. Each allocation's frames name the op that made it and the
module (or phase) it ran in, so PyTorch's viewer groups them. The dictionary is marked
``memprobe_simulated``: it is a prediction, and ``memprobe snapshot import`` refuses it as
CUDA truth.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from memprobe.backends.caching_allocator import FREE, Block
from memprobe.backends.traced_step import TracedStep
from memprobe.core.output_paths import write_atomically
from memprobe.snapshots.addressed_model import AddressedAllocatorModel
from memprobe.snapshots.check import SIMULATED_MARK
from memprobe.snapshots.settings import FollowedSettings


def snapshot_from_trace(step: TracedStep) -> dict[str, Any]:
    """The snapshot dictionary of ``step``: its measured events and the segments at the end."""
    model = AddressedAllocatorModel(FollowedSettings())
    trace: list[dict[str, Any]] = []
    requested: dict[int, tuple[int, int]] = {}  # serial -> (address, bytes)
    phases = dict(step.phase_starts)
    phase = "before the step"
    modules = step.modules or {}
    for index, (serial, nbytes, op) in enumerate(step.events):
        phase = phases.get(index, phase)
        recorded = index >= step.measured_from
        if nbytes == FREE:
            entry = requested.pop(serial, None)
            model.free(serial)
            if entry is not None and recorded:
                for action in ("free_requested", "free_completed"):
                    trace.append(_event(action, entry[0], entry[1], []))
            continue
        model.malloc(serial, nbytes)
        if nbytes <= 0:
            continue
        address = model.last_block_address
        requested[serial] = (address, nbytes)
        if not recorded:
            continue
        frames = _frames(op, modules.get(serial), phase)
        if model.last_grown_bytes:
            segment_address = model.segment_address_of(serial)
            trace.append(_event("segment_alloc", segment_address, model.last_grown_bytes, frames))
        trace.append(_event("alloc", address, nbytes, frames))
    return {
        "segments": _segments(model, requested),
        "device_traces": [trace],
        "allocator_settings": {"expandable_segments": False, "max_split_size": -1},
        SIMULATED_MARK: True,
        "memprobe_description": step.description,
    }


def write_snapshot(path: str | Path, snapshot: dict[str, Any]) -> None:
    """Write ``snapshot`` as PyTorch does (a pickle), or as JSON for a ``.json`` path; whole or not at all."""
    if str(path).endswith(".json"):
        import json

        write_atomically(path, json.dumps(snapshot))
    else:
        write_atomically(path, pickle.dumps(snapshot, protocol=4))


def _event(action: str, address: int, size: int, frames: list[dict[str, Any]]) -> dict[str, Any]:
    return {"action": action, "addr": address, "size": size, "stream": 0, "time_us": 0, "frames": frames}


def _frames(op: str, module: str | None, phase: str) -> list[dict[str, Any]]:
    """Innermost first, as PyTorch records them: the op, then where it ran."""
    frames = [{"filename": "aten", "line": 0, "name": op}]
    frames.append({"filename": module or phase, "line": 0, "name": phase})
    return frames


def _segments(model: AddressedAllocatorModel, requested: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
    live = {address: size for address, size in requested.values()}
    segments: list[dict[str, Any]] = []
    for first in model.segment_heads():
        blocks: list[dict[str, Any]] = []
        block: Block | None = first
        while block is not None:
            state = "active_allocated" if block.allocated else "inactive"
            wanted = live.get(block.address, 0) if block.allocated else 0
            blocks.append({"address": block.address, "size": block.size, "requested_size": wanted,
                           "state": state, "frames": []})  # fmt: skip
            block = block.next
        total = sum(b["size"] for b in blocks)
        allocated = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
        segments.append({
            "device": 0, "address": first.address, "total_size": total, "allocated_size": allocated,
            "active_size": allocated, "requested_size": sum(b["requested_size"] for b in blocks),
            "stream": 0, "segment_type": "small" if first.small else "large", "segment_pool_id": [0, 0],
            "is_expandable": False, "frames": [], "blocks": blocks,
        })  # fmt: skip
    return segments
