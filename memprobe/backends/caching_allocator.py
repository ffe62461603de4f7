"""Replay a step's allocations through a model of PyTorch's CUDA caching allocator.

What ends a run with "CUDA out of memory" is the allocator's *reserve* (the segments it took
with ``cudaMalloc``), not the tensors alone: requests are rounded, small ones are packed into
2 MiB segments, mid-sized ones split 20 MiB segments, and a freed block stays cached for the
next request of a size it can hold. The trace backend records every storage allocation and
free in order; replaying them here gives what the GPU's allocator would report.

Followed: ``c10/cuda/CUDACachingAllocator.cpp`` of PyTorch v2.5-v2.9 (``round_size``,
``get_allocation_size``, ``get_free_block``, ``should_split``, ``free_block`` with
``try_merge_blocks``, ``alloc_block`` / ``release_cached_blocks`` on failure, and
``ExpandableSegment`` for ``expandable_segments:True``), with its defaults:
``max_split_size`` unlimited, no ``roundup_power2_divisions``, one stream, no graph pools.

- Requests are rounded up to 512 bytes. Up to 1 MiB goes to the small pool, whose segments
  are 2 MiB; larger requests go to the large pool: a 20 MiB segment below 10 MiB, else the
  request rounded up to 2 MiB.
- The smallest free block that holds the request is used (ties: lowest address). It is split
  when the remainder is at least 512 B (small pool) or more than 1 MiB (large pool);
  otherwise the whole block counts as allocated (an unsplit tail is *allocated* memory).
- A freed block merges with free neighbours of its segment and stays cached.
- Under a limit (``set_per_process_memory_fraction``), a ``cudaMalloc`` that would exceed it
  first releases every fully free cached segment and retries; only then is it an OOM.
- Expandable segments: one growing segment per pool, mapped in pages of 2 MiB (small pool)
  or 20 MiB (large pool); blocks split whenever the remainder is at least 512 B. A release
  under a limit unmaps the free pages at the end of a segment only (PyTorch can also unmap
  free pages in the middle), so the model errs towards more reserve, not less.

Pure Python with bisection over sorted free lists: a step's few thousand events replay in
milliseconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MIN_BLOCK_BYTES = 512  # kMinBlockSize
SMALL_REQUEST_BYTES = 1 << 20  # kSmallSize: requests up to this go to the small pool
SMALL_SEGMENT_BYTES = 2 << 20  # kSmallBuffer
LARGE_SEGMENT_BYTES = 20 << 20  # kLargeBuffer
MIN_LARGE_ALLOC_BYTES = 10 << 20  # kMinLargeAlloc
ROUND_LARGE_BYTES = 2 << 20  # kRoundLarge

# An event: (serial, requested bytes, op name) allocates; (serial, FREE, "") frees that serial.
FREE = -1
Event = tuple[int, int, str]


def round_size(nbytes: int) -> int:
    """``round_size``: at least one 512-byte block, else a multiple of 512 bytes."""
    if nbytes < MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    return -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES


def segment_size(size: int) -> int:
    """``get_allocation_size``: the cudaMalloc a rounded request causes when no cached block fits."""
    if size <= SMALL_REQUEST_BYTES:
        return SMALL_SEGMENT_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_SEGMENT_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


def should_split(remaining: int, small: bool, expandable: bool) -> bool:
    """``should_split``: small-pool and expandable blocks split at 512 B; large ones above 1 MiB."""
    if small or expandable:
        return remaining >= MIN_BLOCK_BYTES
    return remaining > SMALL_REQUEST_BYTES


class _Block:
    __slots__ = ("address", "allocated", "next", "prev", "segment", "size", "small")

    def __init__(self, address: int, size: int, small: bool, segment: int) -> None:
        self.address = address
        self.size = size
        self.small = small
        self.segment = segment
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.size, self.address)


@dataclass(frozen=True)
class ReplayResult:
    """What the allocator would report for the replayed span (after its peaks were reset).

    ``peak_allocated_bytes`` counts blocks as ``max_memory_allocated`` does (after splitting,
    so unsplit tails count); ``peak_reserved_bytes`` counts segments as
    ``max_memory_reserved`` does; ``peak_requested_bytes`` counts the bytes asked for.
    """

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    peak_requested_bytes: int
    segments: int
    oom: bool = False
    oom_request_bytes: int | None = None
    oom_op: str | None = None
    span_peaks: dict[str, tuple[int, int]] = field(default_factory=dict)


class CachingAllocatorModel:
    """The caching allocator's state, driven by :meth:`malloc` and :meth:`free`."""

    def __init__(self, *, expandable_segments: bool = False, limit_bytes: int | None = None) -> None:
        self.expandable = expandable_segments
        self.limit_bytes = limit_bytes
        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.requested_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.peak_requested_bytes = 0
        self.span_peak_allocated_bytes = 0
        self.span_peak_reserved_bytes = 0
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # small? -> sorted keys
        self._blocks: dict[tuple[int, int], _Block] = {}  # free blocks by key
        self._live: dict[int, tuple[_Block, int]] = {}  # serial -> (block, requested bytes)
        self._segments: dict[int, int] = {}  # segment id -> mapped bytes
        self._tails: dict[bool, _Block] = {}  # expandable: last block of each pool's segment
        self._next_address = 1 << 40

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def reset_peaks(self) -> None:
        """``reset_peak_memory_stats``: peaks restart from the current values."""
        self.peak_allocated_bytes = self.allocated_bytes
        self.peak_reserved_bytes = self.reserved_bytes
        self.peak_requested_bytes = self.requested_bytes
        self.reset_span()

    def reset_span(self) -> None:
        """Start a span: its peaks restart from the current values, the overall peaks go on."""
        self.span_peak_allocated_bytes = self.allocated_bytes
        self.span_peak_reserved_bytes = self.reserved_bytes

    def _note_peaks(self) -> None:
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        self.peak_requested_bytes = max(self.peak_requested_bytes, self.requested_bytes)
        self.span_peak_allocated_bytes = max(self.span_peak_allocated_bytes, self.allocated_bytes)
        self.span_peak_reserved_bytes = max(self.span_peak_reserved_bytes, self.reserved_bytes)

    def malloc(self, serial: int, nbytes: int) -> bool:
        """Allocate ``nbytes`` for ``serial``; False when the limit makes it an OOM."""
        if nbytes <= 0:
            return True  # PyTorch hands out no block for an empty storage
        size = round_size(nbytes)
        small = size <= SMALL_REQUEST_BYTES
        block = self._take_free_block(size, small)
        if block is None:
            block = self._grow(size, small)
            if block is None:
                self.release_cached_segments()
                block = self._grow(size, small)
            if block is None:
                return False
        remaining = block.size - size
        if should_split(remaining, small, self.expandable):
            rest = _Block(block.address + size, remaining, small, block.segment)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            elif self.expandable:
                self._tails[small] = rest
            block.next = rest
            block.size = size
            self._insert_free(rest)
        block.allocated = True
        self._live[serial] = (block, nbytes)
        self.allocated_bytes += block.size
        self.requested_bytes += nbytes
        self._note_peaks()
        return True

    def free(self, serial: int) -> None:
        entry = self._live.pop(serial, None)
        if entry is None:
            return  # an empty storage, or one allocated before the replay began
        block, nbytes = entry
        self.allocated_bytes -= block.size
        self.requested_bytes -= nbytes
        block.allocated = False
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove_free(neighbour)
                block = self._merge(block, neighbour)
        self._insert_free(block)

    def release_cached_segments(self) -> None:
        """``release_cached_blocks``: give back every segment no allocated block lives in."""
        for small in (True, False):
            for key in list(self._free[small]):
                block = self._blocks[key]
                if self.expandable:
                    self._unmap_free_tail(block)
                elif block.prev is None and block.next is None:
                    self._remove_free(block)
                    self.reserved_bytes -= self._segments.pop(block.segment)

    # Free lists ---------------------------------------------------------------------------

    def _take_free_block(self, size: int, small: bool) -> _Block | None:
        pool = self._free[small]
        index = bisect.bisect_left(pool, (size, -1))
        if index == len(pool):
            return None
        return self._remove_free(self._blocks[pool[index]])

    def _insert_free(self, block: _Block) -> None:
        key = block.key
        bisect.insort(self._free[block.small], key)
        self._blocks[key] = block

    def _remove_free(self, block: _Block) -> _Block:
        key = block.key
        pool = self._free[block.small]
        del pool[bisect.bisect_left(pool, key)]
        del self._blocks[key]
        return block

    def _merge(self, block: _Block, neighbour: _Block) -> _Block:
        """``try_merge_blocks``: join two adjacent free blocks of one segment."""
        first, second = (neighbour, block) if neighbour.address < block.address else (block, neighbour)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        elif self.expandable:
            self._tails[first.small] = first
        return first

    # Segments -----------------------------------------------------------------------------

    def _grow(self, size: int, small: bool) -> _Block | None:
        """Reserve more device memory for ``size``: a new segment, or more pages of an expandable one."""
        if self.expandable:
            return self._map_pages(size, small)
        mapped = segment_size(size)
        if self.limit_bytes is not None and self.reserved_bytes + mapped > self.limit_bytes:
            return None
        segment = len(self._segments) and max(self._segments) + 1
        self._segments[segment] = mapped
        self.reserved_bytes += mapped
        self._note_peaks()
        block = _Block(self._next_address, mapped, small, segment)
        self._next_address += mapped + (1 << 30)  # segments are never adjacent
        return block

    def _map_pages(self, size: int, small: bool) -> _Block | None:
        page = SMALL_SEGMENT_BYTES if small else LARGE_SEGMENT_BYTES
        segment = 0 if small else 1
        tail = self._tails.get(small)
        reuse_tail = tail is not None and not tail.allocated
        needed = size - (tail.size if reuse_tail and tail is not None else 0)
        mapped = -(-needed // page) * page
        if self.limit_bytes is not None and self.reserved_bytes + mapped > self.limit_bytes:
            return None
        self._segments[segment] = self._segments.get(segment, 0) + mapped
        self.reserved_bytes += mapped
        self._note_peaks()
        if reuse_tail and tail is not None:
            self._remove_free(tail)
            tail.size += mapped
            return tail
        address = tail.address + tail.size if tail is not None else (1 << 40) * (2 + segment)
        block = _Block(address, mapped, small, segment)
        block.prev = tail
        if tail is not None:
            tail.next = block
        self._tails[small] = block
        return block

    def _unmap_free_tail(self, block: _Block) -> None:
        if block is not self._tails.get(block.small):
            return
        page = SMALL_SEGMENT_BYTES if block.small else LARGE_SEGMENT_BYTES
        offset_in_page = block.address % page
        first_whole_page = block.address + (page - offset_in_page) % page
        unmapped = (block.address + block.size - first_whole_page) // page * page
        if unmapped <= 0:
            return
        self._remove_free(block)
        block.size -= unmapped
        self._segments[block.segment] -= unmapped
        self.reserved_bytes -= unmapped
        if block.size > 0:
            self._insert_free(block)
        else:
            self._tails[block.small] = block.prev  # type: ignore[assignment]
            if block.prev is not None:
                block.prev.next = None


def replay(
    events: Iterable[Event],
    *,
    measure_from: int = 0,
    spans: Sequence[tuple[int, str]] = (),
    expandable_segments: bool = False,
    limit_bytes: int | None = None,
) -> ReplayResult:
    """Replay ``events`` and report the allocator's peaks from event ``measure_from`` on.

    Everything before ``measure_from`` (the network's parameters, a warm-up step) shapes the
    cache, as it does on a GPU, but the peaks are reset there, as ``CudaBackend`` resets them
    before the measured step. ``spans`` are (first event index, name) pairs at or after
    ``measure_from``, in order: each span's own peaks (allocated, reserved) are reported too.
    Stops at the first OOM.
    """
    model = CachingAllocatorModel(expandable_segments=expandable_segments, limit_bytes=limit_bytes)
    starts = {index: name for index, name in spans if index >= measure_from}
    span_peaks: dict[str, tuple[int, int]] = {}
    current: str | None = None
    count = 0
    for count, (serial, nbytes, op) in enumerate(events):
        if count == measure_from:
            model.reset_peaks()
        if count in starts:
            if current is not None:
                span_peaks[current] = (model.span_peak_allocated_bytes, model.span_peak_reserved_bytes)
            model.reset_span()
            current = starts[count]
        if nbytes == FREE:
            model.free(serial)
        elif not model.malloc(serial, nbytes):
            return ReplayResult(
                model.peak_allocated_bytes,
                model.peak_reserved_bytes,
                model.peak_requested_bytes,
                model.segment_count,
                oom=True,
                oom_request_bytes=nbytes,
                oom_op=op,
            )
    if measure_from > count:
        model.reset_peaks()
    if current is not None:
        span_peaks[current] = (model.span_peak_allocated_bytes, model.span_peak_reserved_bytes)
    return ReplayResult(
        model.peak_allocated_bytes,
        model.peak_reserved_bytes,
        model.peak_requested_bytes,
        model.segment_count,
        span_peaks=span_peaks,
    )
