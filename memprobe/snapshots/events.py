"""The recorded trace of one device, as plain events in order.

PyTorch records one list per device. Only the caching allocator's actions matter for a
replay: ``alloc`` (requested bytes), ``free_completed`` (the block is back in the cache; a
``free_requested`` precedes it when a stream still used the block), the segment actions, and
``oom``. ``snapshot`` markers and unknown actions are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memprobe.core.errors import InvalidInputError

ALLOC = "alloc"
FREE_REQUESTED = "free_requested"
FREE_COMPLETED = "free_completed"
SEGMENT_ALLOC = "segment_alloc"
SEGMENT_FREE = "segment_free"
SEGMENT_MAP = "segment_map"
SEGMENT_UNMAP = "segment_unmap"
OOM = "oom"
_REPLAYED = {
    ALLOC,
    FREE_REQUESTED,
    FREE_COMPLETED,
    SEGMENT_ALLOC,
    SEGMENT_FREE,
    SEGMENT_MAP,
    SEGMENT_UNMAP,
    OOM,
}


@dataclass(frozen=True)
class TraceEvent:
    """One allocator action: ``index`` is its position in the device's recorded trace."""

    index: int
    action: str
    address: int
    size: int
    frames: tuple[dict[str, Any], ...] = ()


def device_trace(snapshot: dict[str, Any], device_index: int | None = None) -> tuple[int, list[TraceEvent]]:
    """The chosen device's events (default: the only device that has a trace).

    Raises:
        InvalidInputError: no trace was recorded, several devices have one and none was chosen,
            or an event is malformed.
    """
    traces = snapshot.get("device_traces") or []
    recorded = [index for index, trace in enumerate(traces) if trace]
    if device_index is None:
        if not recorded:
            raise InvalidInputError(
                "the snapshot holds no trace (was torch.cuda.memory._record_memory_history() on "
                "before the run?): record one, then dump the snapshot"
            )
        if len(recorded) > 1:
            raise InvalidInputError(
                f"the snapshot has traces of devices {recorded}: choose one with --device-index"
            )
        device_index = recorded[0]
    if not 0 <= device_index < len(traces) or not traces[device_index]:
        raise InvalidInputError(
            f"device {device_index} has no trace in this snapshot; devices with one: {recorded or 'none'}"
        )
    return device_index, [_event(position, raw) for position, raw in enumerate(traces[device_index])
                          if isinstance(raw, dict) and raw.get("action") in _REPLAYED]  # fmt: skip


def _event(position: int, raw: dict[str, Any]) -> TraceEvent:
    address, size = raw.get("addr"), raw.get("size")
    if not _whole(address) or not _whole(size):
        raise InvalidInputError(
            f"trace event {position} ({str(raw.get('action'))[:40]}) has no whole-number addr and size: "
            "the snapshot is damaged"
        )
    frames = raw.get("frames") or ()
    assert isinstance(address, int) and isinstance(size, int)
    return TraceEvent(position, str(raw["action"]), address, size,
                      tuple(frame for frame in frames if isinstance(frame, dict)))  # fmt: skip


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
