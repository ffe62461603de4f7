"""Expandable segments at the first recorded event: which address ranges were mapped.

With ``expandable_segments:True`` a snapshot's ``segments`` are the contiguous mapped ranges
at the dump, and the trace says what was mapped (``segment_map``) and unmapped
(``segment_unmap``) since recording began. Undoing those, last first, gives the ranges
mapped at the first event. Each range belongs to the pool whose range it touches (an event
of a range not yet known goes to the pool whose known range is nearest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memprobe.backends.expandable_segments import MappedRange
from memprobe.snapshots.events import SEGMENT_MAP, SEGMENT_UNMAP, TraceEvent

Interval = tuple[int, int]


@dataclass(frozen=True)
class MappedStart:
    """Per pool (small?): the mapped ranges at the first event and the segment's lowest address."""

    ranges: dict[bool, list[MappedRange]]
    bases: dict[bool, int]

    @property
    def mapped_bytes(self) -> int:
        return sum(piece.size for pieces in self.ranges.values() for piece in pieces)


def mapped_at_start(snapshot: dict[str, Any], events: Sequence[TraceEvent], device_index: int) -> MappedStart:
    """Undo the trace's mappings on the dump's mapped ranges."""
    pools: dict[bool, list[Interval]] = {True: [], False: []}
    for raw in snapshot.get("segments") or ():
        if isinstance(raw, dict) and int(raw.get("device", 0)) == device_index:
            start = int(raw["address"])
            _add(pools[raw.get("segment_type") == "small"], (start, start + int(raw["total_size"])))
    lowest: dict[bool, int] = {
        small: min((a for a, _ in spans), default=1 << 62) for small, spans in pools.items()
    }
    for event in reversed(events):
        if event.action not in (SEGMENT_MAP, SEGMENT_UNMAP):
            continue
        span = (event.address, event.address + event.size)
        small = _pool_of(pools, event.address)
        lowest[small] = min(lowest[small], event.address)
        if event.action == SEGMENT_MAP:
            _remove(pools[small], span)
        else:
            _add(pools[small], span)
    ranges = {small: [MappedRange(a, b - a, small) for a, b in spans] for small, spans in pools.items()}
    bases = {small: value for small, value in lowest.items() if value < 1 << 62}
    return MappedStart(ranges, bases)


def _pool_of(pools: dict[bool, list[Interval]], address: int) -> bool:
    def distance(spans: list[Interval]) -> int:
        return min((0 if a <= address < b else min(abs(address - a), abs(address - b)) for a, b in spans),
                   default=1 << 62)  # fmt: skip

    return distance(pools[True]) < distance(pools[False])


def _add(spans: list[Interval], span: Interval) -> None:
    start, end = span
    kept = []
    for a, b in spans:
        if b < start or a > end:
            kept.append((a, b))
        else:
            start, end = min(a, start), max(b, end)
    kept.append((start, end))
    spans[:] = sorted(kept)


def _remove(spans: list[Interval], span: Interval) -> None:
    start, end = span
    kept = []
    for a, b in spans:
        if b <= start or a >= end:
            kept.append((a, b))
            continue
        if a < start:
            kept.append((a, start))
        if b > end:
            kept.append((end, b))
    spans[:] = sorted(kept)
