"""Rebuild the allocator's state at the first recorded event, from addresses alone.

Recording usually starts after the model's weights and optimizer state exist, so the trace
frees blocks it never allocated and uses segments it never created. Both are visible:

- a segment existed before recording if it is in the final ``segments`` or is freed in the
  trace, but is never ``segment_alloc``-ed in the trace before that;
- a block was live before recording if the trace frees it without allocating it first, or if
  it is still allocated at the dump with no ``alloc`` event for its address.

Everything else inside those segments was free. A block live before recording is charged its
rounded size, plus the unsplit tail up to its next neighbour where the split rule says the
allocator kept it whole (a free remainder of the large pool is always above 1 MiB). Its next
neighbour is the next block live before recording, or the first block the trace allocates
after it while it is still live (the allocator only ever allocates at a free block's start).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memprobe.backends.caching_allocator import SMALL_SEGMENT_BYTES, round_size, should_split
from memprobe.snapshots.events import ALLOC, SEGMENT_ALLOC, SEGMENT_FREE, TraceEvent

_LIVE_STATES = {"active_allocated", "active_pending_free"}


@dataclass(frozen=True)
class StartSegment:
    address: int
    size: int
    small: bool
    expandable: bool = False


@dataclass(frozen=True)
class StartBlock:
    address: int
    requested_bytes: int
    block_bytes: int


@dataclass(frozen=True)
class StartState:
    """Segments and live blocks at the first event, and what had to be assumed to get them."""

    segments: tuple[StartSegment, ...]
    blocks: tuple[StartBlock, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def reserved_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    @property
    def allocated_bytes(self) -> int:
        return sum(block.block_bytes for block in self.blocks)


def free_action(events: Sequence[TraceEvent]) -> str:
    """The action that returns a block to the cache: ``free_completed``, else ``free_requested``."""
    actions = {event.action for event in events}
    return (
        "free_completed"
        if "free_completed" in actions or "free_requested" not in actions
        else "free_requested"
    )


def rebuild_start_state(
    snapshot: dict[str, Any], events: Sequence[TraceEvent], device_index: int
) -> StartState:
    """The state the allocator was in when the first of ``events`` was recorded."""
    freed = free_action(events)
    live: set[int] = set()
    touched: set[int] = set()
    freed_before_alloc: dict[int, int] = {}
    freed_at: dict[int, int] = {}  # a block live before recording -> the event index that frees it
    allocs: list[tuple[int, int]] = []  # (address, event index) of every allocation
    created: set[int] = set()
    segments: dict[int, StartSegment] = {}
    for event in events:
        if event.action == ALLOC:
            allocs.append((event.address, event.index))
            live.add(event.address)
            touched.add(event.address)
        elif event.action == freed:
            if event.address not in live and event.address not in touched:
                freed_before_alloc[event.address] = event.size
                freed_at[event.address] = event.index
            live.discard(event.address)
            touched.add(event.address)
        elif event.action == SEGMENT_ALLOC:
            created.add(event.address)
        elif event.action == SEGMENT_FREE and event.address not in created and event.address not in segments:
            segments[event.address] = StartSegment(
                event.address, event.size, event.size == SMALL_SEGMENT_BYTES
            )
    final_blocks: dict[int, tuple[int, int]] = {}
    for raw in _device_segments(snapshot, device_index):
        address = int(raw["address"])
        if address not in created:
            segments.setdefault(address, StartSegment(
                address, int(raw["total_size"]), raw.get("segment_type") == "small", bool(raw.get("is_expandable"))
            ))  # fmt: skip
        for block in raw.get("blocks") or ():
            block_address = int(block["address"])
            if block.get("state") in _LIVE_STATES and block_address not in touched:
                requested = int(block.get("requested_size") or block["size"])
                final_blocks[block_address] = (requested, int(block["size"]))
    return _place_blocks(segments, freed_before_alloc, final_blocks, _Neighbours(sorted(allocs), freed_at))


def _device_segments(snapshot: dict[str, Any], device_index: int) -> list[dict[str, Any]]:
    return [
        raw
        for raw in snapshot.get("segments") or ()
        if isinstance(raw, dict) and int(raw.get("device", 0)) == device_index
        and isinstance(raw.get("address"), int) and isinstance(raw.get("total_size"), int)
    ]  # fmt: skip


class _Neighbours:
    """The first allocation after a block's end made while that block was still live."""

    def __init__(self, allocs: list[tuple[int, int]], freed_at: dict[int, int]) -> None:
        self._allocs = allocs
        self._freed_at = freed_at

    def next_allocated(self, address: int, end: int, limit: int) -> int | None:
        freed = self._freed_at.get(address, 1 << 62)
        index = bisect.bisect_left(self._allocs, (end, -1))
        while index < len(self._allocs) and self._allocs[index][0] < limit:
            if self._allocs[index][1] < freed:
                return self._allocs[index][0]
            index += 1
        return None


def _place_blocks(
    segments: dict[int, StartSegment],
    freed_before_alloc: dict[int, int],
    final_blocks: dict[int, tuple[int, int]],
    neighbours: _Neighbours,
) -> StartState:
    starts = sorted(segments)
    notes: list[str] = []
    occupied = sorted({*freed_before_alloc, *final_blocks})
    blocks: list[StartBlock] = []
    for position, address in enumerate(occupied):
        segment = _containing(segments, starts, address)
        if segment is None:
            size = round_size(freed_before_alloc.get(address, final_blocks.get(address, (0, 0))[0]))
            notes.append(f"a block at {address:#x} lies in no known segment: a segment of {size} B assumed")
            segment = StartSegment(address, size, size <= 1 << 20)
            segments[address] = segment
            bisect.insort(starts, address)
        if address in final_blocks:
            requested, block_bytes = final_blocks[address]
        else:
            requested = freed_before_alloc[address]
            block_bytes = round_size(requested)
            following = occupied[position + 1] if position + 1 < len(occupied) else None
            end = segment.address + segment.size
            boundary = following if following is not None and following < end else end
            allocated_next = neighbours.next_allocated(address, address + block_bytes, boundary)
            boundary = allocated_next if allocated_next is not None else boundary
            tail = boundary - (address + block_bytes)
            if tail > 0 and not should_split(tail, segment.small, segment.expandable):
                block_bytes += tail
        blocks.append(StartBlock(address, requested, block_bytes))
    return StartState(tuple(segments[start] for start in starts), tuple(blocks), tuple(notes))


def _containing(segments: dict[int, StartSegment], starts: list[int], address: int) -> StartSegment | None:
    index = bisect.bisect_right(starts, address) - 1
    if index < 0:
        return None
    segment = segments[starts[index]]
    return segment if address < segment.address + segment.size else None
