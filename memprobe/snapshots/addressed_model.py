"""The allocator model with real addresses: blocks placed where a real trace says they were.

A replay of a real trace runs two of these side by side: one is told where every block and
segment went (the GPU's own decisions, which give the real peaks), the other decides for
itself from the same start state and the same requests (the model under test).
"""

from __future__ import annotations

import bisect

from memprobe.backends.caching_allocator import (
    Block,
    CachingAllocatorModel,
    round_size,
    round_size_power2,
    should_split,
)
from memprobe.core.errors import InvalidInputError
from memprobe.snapshots.settings import FollowedSettings


class AddressedAllocatorModel(CachingAllocatorModel):
    """A ``CachingAllocatorModel`` that can also place blocks and drop segments by address."""

    def __init__(self, settings: FollowedSettings) -> None:
        super().__init__(
            max_split_size=settings.max_split_size,
            roundup_power2_divisions=settings.roundup_power2_divisions,
        )
        self._free_starts: list[int] = []
        self._free_at: dict[int, Block] = {}

    def _insert_free(self, block: Block) -> None:
        super()._insert_free(block)
        bisect.insort(self._free_starts, block.address)
        self._free_at[block.address] = block

    def _remove_free(self, block: Block) -> Block:
        super()._remove_free(block)
        del self._free_starts[bisect.bisect_left(self._free_starts, block.address)]
        del self._free_at[block.address]
        return block

    def free_block_at(self, address: int) -> Block | None:
        """The free block that contains ``address``, if any."""
        index = bisect.bisect_right(self._free_starts, address) - 1
        if index < 0:
            return None
        block = self._free_at[self._free_starts[index]]
        return block if address < block.address + block.size else None

    def place(self, serial: int, address: int, nbytes: int, block_bytes: int | None = None) -> None:
        """Allocate ``nbytes`` at ``address`` (the allocator chose it), splitting as it would.

        ``block_bytes`` forces the block's size (known from a snapshot's final blocks).

        Raises:
            InvalidInputError: no free memory of a known segment is at ``address``.
        """
        block = self.free_block_at(address)
        rounded = (
            round_size_power2(nbytes, self.roundup_power2_divisions)
            if self.roundup_power2_divisions
            else round_size(nbytes)
        )
        size = block_bytes if block_bytes is not None else rounded
        if block is None or address + size > block.address + block.size:
            raise InvalidInputError(
                f"the trace allocates {nbytes} B at {address:#x}, where no free memory of a known "
                "segment is: its allocations and frees do not match (a damaged or cut trace)"
            )
        self._remove_free(block)
        if block.address < address:
            block = self._split_off(block, address - block.address, keep_first_free=True)
        remaining = block.size - size
        forced_split = block_bytes is not None and remaining > 0
        if forced_split or should_split(remaining, block.small, self.expandable, size, self.max_split_size):
            self._split_off(block, size, keep_first_free=False)
        block.allocated = True
        self._live[serial] = (block, nbytes)
        self._charge(block.size, nbytes)

    def _split_off(self, block: Block, first_bytes: int, *, keep_first_free: bool) -> Block:
        """Split ``block`` after ``first_bytes``; the free part goes back to the free list."""
        rest = Block(block.address + first_bytes, block.size - first_bytes, block.small, block.segment)
        rest.prev, rest.next = block, block.next
        if block.next is not None:
            block.next.prev = rest
        block.next = rest
        block.size = first_bytes
        if keep_first_free:
            self._insert_free(block)
            return rest
        self._insert_free(rest)
        return block

    def release_segment(self, address: int) -> bool:
        """``segment_free`` of the segment at ``address``; False if it is not wholly free here."""
        block = self._free_at.get(address)
        if block is None or block.prev is not None or block.next is not None:
            return False
        self._remove_free(block)
        self.reserved_bytes -= self._segments.pop(block.segment)
        return True

    def segment_address_of(self, serial: int) -> int:
        """Where the segment that holds live allocation ``serial`` starts."""
        block: Block | None = self._live[serial][0]
        while block is not None and block.prev is not None:
            block = block.prev
        return block.address if block is not None else 0

    def segment_heads(self) -> list[Block]:
        """The first block of every segment, in address order."""
        blocks = [*(entry[0] for entry in self._live.values()), *self._free_at.values()]
        return sorted((block for block in blocks if block.prev is None), key=lambda block: block.address)
