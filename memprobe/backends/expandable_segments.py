"""The caching allocator with ``expandable_segments:True``: one virtual range per pool, mapped in pages.

Followed: ``c10/cuda/CUDACachingAllocator.cpp`` (PyTorch v2.5 to v2.9): ``ExpandableSegment``
reserves a virtual range per stream and pool and maps physical pages into it on demand (2 MiB
pages for the small pool, 20 MiB for the large one), so a request never causes a new
``cudaMalloc`` segment of its own size.

- Best fit among mapped free blocks, except that a block bordering unmapped space counts as
  the size it could grow to (``get_free_block``'s ``expandable_size`` rule).
- Nothing fits: ``find_expandable_block`` takes the lowest-address unmapped block (or the free
  block right before it) with enough free address space after it, and ``map_block`` maps the
  whole pages the request needs, merging with free mapped neighbours.
- Blocks split whenever at least 512 bytes remain; freed blocks merge with free neighbours of
  the same mapped state.
- ``empty_cache`` (and an allocation failing under a limit) unmaps every whole page inside a
  free block, also in the middle of a segment; the partial pages at its ends stay mapped.

One stream and no graph pools, as the rest of the model.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from memprobe.backends.caching_allocator import (
    LARGE_SEGMENT_BYTES,
    MIN_BLOCK_BYTES,
    SMALL_REQUEST_BYTES,
    SMALL_SEGMENT_BYTES,
    AllocatorStats,
    round_size,
)

VIRTUAL_BYTES = 1 << 40  # each pool's reserved address range; only its end would ever matter


class _Page:
    """A block of an expandable segment: mapped or not, allocated or free."""

    __slots__ = ("address", "allocated", "base", "mapped", "next", "prev", "size", "small")

    def __init__(self, address: int, size: int, small: bool, base: int, mapped: bool) -> None:
        self.address, self.size, self.small, self.base, self.mapped = address, size, small, base, mapped
        self.allocated = False
        self.prev: _Page | None = None
        self.next: _Page | None = None

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class MappedRange:
    """Mapped memory at the start of a replay: an address range of one pool."""

    address: int
    size: int
    small: bool


class ExpandableSegmentsModel(AllocatorStats):
    """The allocator's state under ``expandable_segments:True``, driven by :meth:`malloc` and :meth:`free`."""

    def __init__(self, *, limit_bytes: int | None = None) -> None:
        super().__init__()
        self.expandable = True
        self.limit_bytes = limit_bytes
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # mapped free (size, address)
        self._free_at: dict[int, _Page] = {}
        self._unmapped: dict[bool, list[int]] = {True: [], False: []}  # addresses of unmapped blocks
        self._unmapped_at: dict[int, _Page] = {}
        self._live: dict[int, tuple[_Page, int]] = {}
        self._bases: dict[bool, list[int]] = {True: [], False: []}
        self._next_base = 1 << 44

    @property
    def segment_count(self) -> int:
        return len(self._bases[True]) + len(self._bases[False])

    # Allocation ---------------------------------------------------------------------------

    def malloc(self, serial: int, nbytes: int) -> bool:
        """Allocate ``nbytes`` for ``serial``; False when the limit makes it an OOM."""
        if nbytes <= 0:
            return True
        size = round_size(nbytes)
        small = size <= SMALL_REQUEST_BYTES
        reserved_before = self.reserved_bytes
        block = self._best_fit(size, small)
        if block is None:
            block = self._map_for(size, small)
            if block is None:
                self.release_cached_segments()
                block = self._map_for(size, small)
            if block is None:
                return False
        self.last_grown_bytes = max(0, self.reserved_bytes - reserved_before)
        self.last_block_address = block.address
        self._hand_out(serial, block, size, nbytes)
        return True

    def free(self, serial: int) -> None:
        entry = self._live.pop(serial, None)
        if entry is None:
            return
        block, nbytes = entry
        self.allocated_bytes -= block.size
        self.requested_bytes -= nbytes
        block.allocated = False
        self._insert_free(self._merge_neighbours(block))

    def release_cached_segments(self) -> None:
        """``empty_cache``: unmap every whole page inside a free block."""
        for small in (True, False):
            for _, address in list(self._free[small]):
                block = self._free_at.get(address)
                if block is not None:
                    self._unmap(block)

    # Seeding a replay that starts mid-run -------------------------------------------------

    def add_segment(self, base: int, small: bool, mapped: list[MappedRange]) -> None:
        """A segment that already exists at ``base``: its mapped ranges free, the rest unmapped."""
        self._bases[small].append(base)
        self._bases[small].sort()
        cursor, previous = base, None
        for piece in sorted(mapped, key=lambda piece: piece.address):
            if piece.address > cursor:
                previous = self._append(previous, _Page(cursor, piece.address - cursor, small, base, False))
            previous = self._append(previous, _Page(piece.address, piece.size, small, base, True))
            self.reserved_bytes += piece.size
            cursor = piece.address + piece.size
        self._append(previous, _Page(cursor, base + VIRTUAL_BYTES - cursor, small, base, False))
        self._note_peaks()

    def place(self, serial: int, address: int, nbytes: int, block_bytes: int | None = None) -> bool:
        """Allocate at ``address`` (a block live before the replay); False if no free mapped memory is there."""
        block = self._free_containing(address)
        size = block_bytes or round_size(nbytes)
        if block is None or address + size > block.end:
            return False
        self._remove_free(block)
        if block.address < address:
            rest = self._split(block, address - block.address)
            self._insert_free(block)
            block = rest
        self._hand_out(serial, block, size, nbytes)
        return True

    def _hand_out(self, serial: int, block: _Page, size: int, nbytes: int) -> None:
        """Split ``size`` off the front of free ``block`` (at 512 bytes, always) and allocate it."""
        if block.size - size >= MIN_BLOCK_BYTES:
            self._insert_free(self._split(block, size))
        block.allocated = True
        self._live[serial] = (block, nbytes)
        self._charge(block.size, nbytes)

    # Internals ----------------------------------------------------------------------------

    def _append(self, previous: _Page | None, block: _Page) -> _Page:
        block.prev = previous
        if previous is not None:
            previous.next = block
        (self._insert_free if block.mapped else self._insert_unmapped)(block)
        return block

    def _best_fit(self, size: int, small: bool) -> _Page | None:
        pool = self._free[small]
        index = bisect.bisect_left(pool, (size, -1))
        if index == len(pool):
            return None
        while index + 1 < len(pool) and _growable(self._free_at[pool[index + 1][1]]) < _growable(
            self._free_at[pool[index][1]]
        ):
            index += 1
        return self._remove_free(self._free_at[pool[index][1]])

    def _map_for(self, size: int, small: bool) -> _Page | None:
        """``try_allocate_expandable_block``: map pages until a free run holds ``size``."""
        candidate = self._expandable_candidate(size, small)
        if not candidate.mapped:
            mapped = self._map(candidate, min(candidate.size, size))
            if mapped is None:
                return None
            candidate = mapped
        while candidate.size < size:
            following = candidate.next
            assert following is not None and not following.mapped
            mapped = self._map(following, min(size - candidate.size, following.size))
            if mapped is None:
                return None
            candidate = mapped
        return self._remove_free(candidate)

    def _expandable_candidate(self, size: int, small: bool) -> _Page:
        """``find_expandable_block``: the lowest unmapped block with room, else a new segment."""
        for address in self._unmapped[small]:
            block = self._unmapped_at[address]
            if block.prev is not None and not block.prev.allocated:
                block = block.prev
            room = 0
            cursor_or_none: _Page | None = block
            while room < size and cursor_or_none is not None and not cursor_or_none.allocated:
                room, cursor_or_none = room + cursor_or_none.size, cursor_or_none.next
            if room >= size:
                return block
        base, self.segment_address_hint = self.segment_address_hint, None
        if base is None:
            base, self._next_base = self._next_base, self._next_base + VIRTUAL_BYTES + (1 << 40)
        self._bases[small].append(base)
        self._bases[small].sort()
        return self._append(None, _Page(base, VIRTUAL_BYTES, small, base, False))

    def _map(self, block: _Page, size: int) -> _Page | None:
        """``map_block``: map the whole pages of ``size`` at the start of unmapped ``block``."""
        page = SMALL_SEGMENT_BYTES if block.small else LARGE_SEGMENT_BYTES
        mapped = min(block.size, -(-size // page) * page)
        if self.limit_bytes is not None and self.reserved_bytes + mapped > self.limit_bytes:
            return None
        self._remove_unmapped(block)
        if mapped < block.size:
            self._insert_unmapped(self._split(block, mapped))
        block.mapped = True
        self.reserved_bytes += mapped
        self._note_peaks()
        merged = self._merge_neighbours(block)
        self._insert_free(merged)
        return merged

    def _unmap(self, block: _Page) -> None:
        """``unmap_block``: give back the whole pages inside free ``block``."""
        page = SMALL_SEGMENT_BYTES if block.small else LARGE_SEGMENT_BYTES
        start = block.base + -(-(block.address - block.base) // page) * page
        end = block.base + (block.end - block.base) // page * page
        if end <= start:
            return
        self._remove_free(block)
        if start > block.address:
            self._insert_free(block)
            block = self._split(block, start - block.address)
        if end < block.end:
            self._insert_free(self._split(block, end - block.address))
        block.mapped = False
        self.reserved_bytes -= block.size
        block = self._merge_neighbours(block)
        if block.prev is None and block.next is None:
            self._bases[block.small].remove(block.base)  # the whole range unmapped: the segment goes
            return
        self._insert_unmapped(block)

    def _split(self, block: _Page, first_bytes: int) -> _Page:
        """Cut ``block`` after ``first_bytes``; returns the second part (same mapped state, free)."""
        rest = _Page(
            block.address + first_bytes, block.size - first_bytes, block.small, block.base, block.mapped
        )
        rest.prev, rest.next = block, block.next
        if block.next is not None:
            block.next.prev = rest
        block.next = rest
        block.size = first_bytes
        return rest

    def _merge_neighbours(self, block: _Page) -> _Page:
        """``try_merge_blocks`` with both neighbours: free ones of the same mapped state join it."""
        for neighbour in (block.prev, block.next):
            if neighbour is None or neighbour.allocated or neighbour.mapped != block.mapped:
                continue
            (self._remove_free if neighbour.mapped else self._remove_unmapped)(neighbour)
            first, second = (neighbour, block) if neighbour.address < block.address else (block, neighbour)
            first.size += second.size
            first.next = second.next
            if second.next is not None:
                second.next.prev = first
            block = first
        return block

    def _insert_free(self, block: _Page) -> None:
        bisect.insort(self._free[block.small], (block.size, block.address))
        self._free_at[block.address] = block

    def _remove_free(self, block: _Page) -> _Page:
        pool = self._free[block.small]
        del pool[bisect.bisect_left(pool, (block.size, block.address))]
        del self._free_at[block.address]
        return block

    def _insert_unmapped(self, block: _Page) -> None:
        bisect.insort(self._unmapped[block.small], block.address)
        self._unmapped_at[block.address] = block

    def _remove_unmapped(self, block: _Page) -> None:
        addresses = self._unmapped[block.small]
        del addresses[bisect.bisect_left(addresses, block.address)]
        del self._unmapped_at[block.address]

    def _free_containing(self, address: int) -> _Page | None:
        for block in self._free_at.values():
            if block.address <= address < block.end:
                return block
        return None


def _growable(block: _Page) -> int:
    """The size a free block could grow to: itself and the unmapped space right after it."""
    following = block.next
    return block.size + (following.size if following is not None and not following.mapped else 0)
