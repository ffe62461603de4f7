"""Replay a step's allocations through a model of PyTorch's CUDA caching allocator.

What ends a run with "CUDA out of memory" is the allocator's *reserve* (the segments it took
with ``cudaMalloc``), not the tensors alone: requests are rounded, small ones are packed into
2 MiB segments, mid-sized ones split 20 MiB segments, and a freed block stays cached for the
next request of a size it can hold. The trace backend records every storage allocation and
free in order; replaying them here gives what the GPU's allocator would report.

Followed: ``c10/cuda/CUDACachingAllocator.cpp`` of PyTorch v2.5-v2.9 (``round_size``,
``get_allocation_size``, ``get_free_block``, ``should_split``, ``free_block`` with
``try_merge_blocks``, ``alloc_block`` / ``release_cached_blocks`` on failure, and
``ExpandableSegment`` for ``expandable_segments:True``), one stream and no graph pools. Two
settings of ``PYTORCH_CUDA_ALLOC_CONF`` are followed when given (both off by default):
``max_split_size`` (blocks at or above it are never split, and serve only requests within
20 MiB of their size; ``release_available_cached_blocks`` under a limit is not modelled) and
``roundup_power2_divisions`` (16 entries, one per power-of-two interval from 1 MiB up).

- Requests are rounded up to 512 bytes. Up to 1 MiB goes to the small pool, whose segments
  are 2 MiB; larger requests go to the large pool: a 20 MiB segment below 10 MiB, else the
  request rounded up to 2 MiB.
- The smallest free block that holds the request is used (ties: lowest address). It is split
  when the remainder is at least 512 B (small pool) or more than 1 MiB (large pool);
  otherwise the whole block counts as allocated (an unsplit tail is *allocated* memory).
- A freed block merges with free neighbours of its segment and stays cached.
- Under a limit (``set_per_process_memory_fraction``), a ``cudaMalloc`` that would exceed it
  first releases every fully free cached segment and retries; only then is it an OOM.
- ``expandable_segments:True`` is its own model (``expandable_segments.py``); ``allocator_model``
  in ``allocator_replay.py`` picks one.

Pure Python with bisection over sorted free lists: a step's few thousand events replay in
milliseconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
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


def should_split(
    remaining: int, small: bool, expandable: bool, request: int = 0, max_split_size: int | None = None
) -> bool:
    """``should_split``: small-pool and expandable blocks split at 512 B; large ones above 1 MiB.

    With ``max_split_size``, a large-pool block is split only for a request below it.
    """
    if small or expandable:
        return remaining >= MIN_BLOCK_BYTES
    return remaining > SMALL_REQUEST_BYTES and (max_split_size is None or request < max_split_size)


def round_size_power2(nbytes: int, divisions: Sequence[int]) -> int:
    """``round_size`` with ``roundup_power2_divisions``: up to the next 1/divisions of a power of two."""
    if nbytes < MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    interval = min(max(nbytes.bit_length() - 1 - 20, 0), len(divisions) - 1) if divisions else 0
    parts = divisions[interval] if divisions else 0
    if parts <= 1 or nbytes <= MIN_BLOCK_BYTES * parts:
        return round_size(nbytes)
    if nbytes & (nbytes - 1) == 0:
        return nbytes
    floor = 1 << (nbytes.bit_length() - 1)
    step = floor >> (parts.bit_length() - 1)
    if step == 0:
        return 2 * floor
    return -(-nbytes // step) * step


class Block:
    """A block of a segment: where it starts, its size, whether it is allocated, its neighbours."""

    __slots__ = ("address", "allocated", "next", "prev", "segment", "size", "small")

    def __init__(self, address: int, size: int, small: bool, segment: int) -> None:
        self.address = address
        self.size = size
        self.small = small
        self.segment = segment
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None

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


class AllocatorStats:
    """What ``torch.cuda.memory_stats`` counts: current and peak bytes, overall and per span."""

    def __init__(self) -> None:
        self.allocated_bytes = self.reserved_bytes = self.requested_bytes = 0
        self.peak_allocated_bytes = self.peak_reserved_bytes = self.peak_requested_bytes = 0
        self.span_peak_allocated_bytes = self.span_peak_reserved_bytes = 0
        # Where the next new segment starts, when a replay of a real trace knows (else synthetic).
        self.segment_address_hint: int | None = None
        # What the last malloc did: the bytes it reserved (0: served from the cache) and its block.
        self.last_grown_bytes = 0
        self.last_block_address = 0

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

    def _charge(self, block_bytes: int, requested: int) -> None:
        """Count a block handed out for ``requested`` bytes."""
        self.allocated_bytes += block_bytes
        self.requested_bytes += requested
        self._note_peaks()


class CachingAllocatorModel(AllocatorStats):
    """The caching allocator's state, driven by :meth:`malloc` and :meth:`free`."""

    def __init__(
        self,
        *,
        limit_bytes: int | None = None,
        max_split_size: int | None = None,
        roundup_power2_divisions: Sequence[int] = (),
    ) -> None:
        self.expandable = False  # expandable segments: ExpandableSegmentsModel
        self.limit_bytes = limit_bytes
        self.max_split_size = max_split_size
        self.roundup_power2_divisions = tuple(roundup_power2_divisions)
        super().__init__()
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # small? -> sorted keys
        self._blocks: dict[tuple[int, int], Block] = {}  # free blocks by key
        self._live: dict[int, tuple[Block, int]] = {}  # serial -> (block, requested bytes)
        self._segments: dict[int, int] = {}  # segment id -> mapped bytes
        self._next_address = 1 << 40
        self._segment_ids = 0

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def malloc(self, serial: int, nbytes: int) -> bool:
        """Allocate ``nbytes`` for ``serial``; False when the limit makes it an OOM."""
        if nbytes <= 0:
            return True  # PyTorch hands out no block for an empty storage
        size = (
            round_size_power2(nbytes, self.roundup_power2_divisions)
            if self.roundup_power2_divisions
            else round_size(nbytes)
        )
        small = size <= SMALL_REQUEST_BYTES
        reserved_before = self.reserved_bytes
        block = self._take_free_block(size, small)
        if block is None:
            block = self._grow(size, small)
            if block is None:
                self.release_cached_segments()
                block = self._grow(size, small)
            if block is None:
                return False
        remaining = block.size - size
        if should_split(remaining, small, False, size, self.max_split_size):
            rest = Block(block.address + size, remaining, small, block.segment)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._insert_free(rest)
        block.allocated = True
        self._live[serial] = (block, nbytes)
        self.last_grown_bytes = max(0, self.reserved_bytes - reserved_before)
        self.last_block_address = block.address
        self._charge(block.size, nbytes)
        return True

    def add_segment(self, address: int, size: int, small: bool) -> Block:
        """Add a segment that already exists (a replay that starts mid-run), all of it free."""
        self._segment_ids += 1
        self._segments[self._segment_ids] = size
        self.reserved_bytes += size
        self._note_peaks()
        block = Block(address, size, small, self._segment_ids)
        self._insert_free(block)
        self._next_address = max(self._next_address, address + size + (1 << 30))
        return block

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
                if block.prev is None and block.next is None:
                    self._remove_free(block)
                    self.reserved_bytes -= self._segments.pop(block.segment)

    # Free lists ---------------------------------------------------------------------------

    def _take_free_block(self, size: int, small: bool) -> Block | None:
        pool = self._free[small]
        index = bisect.bisect_left(pool, (size, -1))
        if index == len(pool):
            return None
        block = self._blocks[pool[index]]
        if self._oversize_refuses(block, size, small):
            return None
        return self._remove_free(block)

    def _oversize_refuses(self, block: Block, size: int, small: bool) -> bool:
        """``max_split_size``: an oversize block serves only large requests within 20 MiB of its size."""
        limit = self.max_split_size
        if limit is None or small:
            return False
        return size < limit <= block.size or (size >= limit and block.size >= size + LARGE_SEGMENT_BYTES)

    def _insert_free(self, block: Block) -> None:
        key = block.key
        bisect.insort(self._free[block.small], key)
        self._blocks[key] = block

    def _remove_free(self, block: Block) -> Block:
        key = block.key
        pool = self._free[block.small]
        del pool[bisect.bisect_left(pool, key)]
        del self._blocks[key]
        return block

    def _merge(self, block: Block, neighbour: Block) -> Block:
        """``try_merge_blocks``: join two adjacent free blocks of one segment."""
        first, second = (neighbour, block) if neighbour.address < block.address else (block, neighbour)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        return first

    # Segments -----------------------------------------------------------------------------

    def _grow(self, size: int, small: bool) -> Block | None:
        """``alloc_block``: a new segment for ``size`` (None when the limit refuses it)."""
        mapped = segment_size(size)
        if self.limit_bytes is not None and self.reserved_bytes + mapped > self.limit_bytes:
            return None
        self._segment_ids += 1
        self._segments[self._segment_ids] = mapped
        self.reserved_bytes += mapped
        self._note_peaks()
        address, self.segment_address_hint = self.segment_address_hint, None
        if address is None:
            address = self._next_address
            self._next_address += mapped + (1 << 30)  # segments are never adjacent
        return Block(address, mapped, small, self._segment_ids)
