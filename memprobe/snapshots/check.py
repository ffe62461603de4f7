"""Replay a real snapshot's trace through the allocator model and compare it with the GPU.

Two models start from the state rebuilt at the first event (``start_state``). The *real* one
is told where the GPU put every block and which segments it created or released, so its
peaks are the GPU's (allocated blocks are sized by the split rule, checked against the blocks
at the dump). The *simulated* one gets only the requests and decides for itself, with each
run of ``segment_free`` events applied as the ``empty_cache()`` (or OOM retry) it was. Every
allocation is one decision: a cached block, or a new segment of some size; the report counts
how often the two agree and names the first time they do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from memprobe.backends.caching_allocator import SMALL_SEGMENT_BYTES, round_size
from memprobe.backends.expandable_segments import ExpandableSegmentsModel
from memprobe.core.errors import InvalidInputError
from memprobe.snapshots.addressed_model import AddressedAllocatorModel
from memprobe.snapshots.events import (
    ALLOC,
    SEGMENT_ALLOC,
    SEGMENT_FREE,
    SEGMENT_MAP,
    SEGMENT_UNMAP,
    TraceEvent,
    device_trace,
)
from memprobe.snapshots.mapped_ranges import MappedStart, mapped_at_start
from memprobe.snapshots.reader import LoadedSnapshot
from memprobe.snapshots.settings import FollowedSettings, followed_settings
from memprobe.snapshots.start_state import StartState, free_action, rebuild_start_state

SIMULATED_MARK = "memprobe_simulated"


@dataclass(frozen=True)
class Disagreement:
    """The first allocation the model decided differently from the GPU."""

    event_index: int
    request_bytes: int
    real: str
    simulated: str


@dataclass(frozen=True)
class SnapshotCheck:
    """How the allocator model's replay of a real trace compares with the real allocator."""

    path: str
    device_index: int
    events_replayed: int
    allocations: int
    start_segments: int
    start_reserved_bytes: int
    start_allocated_bytes: int
    real_peak_reserved_bytes: int
    simulated_peak_reserved_bytes: int
    real_peak_allocated_bytes: int
    simulated_peak_allocated_bytes: int
    real_final_reserved_bytes: int
    simulated_final_reserved_bytes: int
    decision_agreement: float
    address_agreement: float | None
    first_disagreement: Disagreement | None
    settings_not_followed: tuple[str, ...]
    notes: tuple[str, ...]
    simulated_snapshot: bool = False

    @property
    def peak_reserved_error(self) -> float:
        """Simulated minus real peak reserved, as a fraction of the real one."""
        return self.simulated_peak_reserved_bytes / max(self.real_peak_reserved_bytes, 1) - 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["peak_reserved_error"] = self.peak_reserved_error
        return data

    def __repr__(self) -> str:
        return (
            f"SnapshotCheck({self.path!r}, peak reserved real {self.real_peak_reserved_bytes} "
            f"vs simulated {self.simulated_peak_reserved_bytes}, agreement {self.decision_agreement:.4f})"
        )


def check_snapshot(
    loaded: LoadedSnapshot,
    device_index: int | None = None,
    from_event: int | None = None,
    to_event: int | None = None,
) -> SnapshotCheck:
    """Replay ``loaded``'s trace of one device and compare the model with the real allocator.

    The peaks cover events ``from_event`` to ``to_event`` (positions in the device's recorded
    trace, both included; default the whole trace); decisions are counted over the same span.

    Raises:
        InvalidInputError: no trace, several devices and none chosen, or a trace whose frees
            do not match its allocations.
    """
    snapshot = loaded.snapshot
    device_index, events = device_trace(snapshot, device_index)
    settings = followed_settings(snapshot.get("allocator_settings"))
    start = rebuild_start_state(
        snapshot, events, device_index
    )  # from the whole trace, whatever span is measured
    replay: _Replay
    if settings.expandable_segments:
        replay = _ExpandableReplay(start, mapped_at_start(snapshot, events, device_index))
    else:
        replay = _SegmentReplay(start, settings)
    if from_event is not None or to_event is not None:
        events = _window(events, from_event, to_event)
    replay.run(events, free_action(events), from_event)
    final_real = sum(int(raw["total_size"]) for raw in snapshot.get("segments") or ()
                     if int(raw.get("device", 0)) == device_index)  # fmt: skip
    notes = [*start.notes, *replay.notes]
    if to_event is None and replay.real_reserved_bytes != final_real:
        notes.append(
            f"the trace ends with {replay.real_reserved_bytes} B reserved but the dump holds {final_real} B: "
            "the dump was taken later than the last recorded event, or the trace lost events"
        )
    simulated = replay.simulated
    return SnapshotCheck(
        path=loaded.path,
        device_index=device_index,
        events_replayed=len(events),
        allocations=replay.allocations,
        start_segments=replay.start_segments,
        start_reserved_bytes=replay.start_reserved_bytes,
        start_allocated_bytes=start.allocated_bytes,
        real_peak_reserved_bytes=replay.real_peak_reserved_bytes,
        simulated_peak_reserved_bytes=simulated.peak_reserved_bytes,
        real_peak_allocated_bytes=replay.real_peak_allocated_bytes,
        simulated_peak_allocated_bytes=simulated.peak_allocated_bytes,
        real_final_reserved_bytes=final_real,
        simulated_final_reserved_bytes=simulated.reserved_bytes,
        decision_agreement=replay.same_decisions / max(replay.allocations, 1),
        address_agreement=replay.same_addresses / max(replay.allocations, 1)
        if replay.compares_addresses
        else None,
        first_disagreement=replay.first_disagreement,
        settings_not_followed=settings.not_followed,
        notes=tuple(notes),
        simulated_snapshot=bool(snapshot.get(SIMULATED_MARK)),
    )


class _Replay:
    """The real allocator and the model, driven by one trace: what both kinds of replay share."""

    compares_addresses = True
    simulated: AddressedAllocatorModel | ExpandableSegmentsModel

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._serial_at: dict[int, int] = {}
        self._serial = 0
        self.allocations = self.same_decisions = self.same_addresses = 0
        self.first_disagreement: Disagreement | None = None
        self._grown_since_alloc = 0  # bytes the GPU reserved since the last allocation
        self._releasing = False

    # What each kind provides
    start_segments = 0
    start_reserved_bytes = 0

    @property
    def real_reserved_bytes(self) -> int:
        raise NotImplementedError

    @property
    def real_peak_reserved_bytes(self) -> int:
        raise NotImplementedError

    @property
    def real_peak_allocated_bytes(self) -> int:
        raise NotImplementedError

    def _reset_peaks(self) -> None:
        raise NotImplementedError

    def _real_alloc(self, serial: int, event: TraceEvent) -> None:
        raise NotImplementedError

    def _real_free(self, serial: int) -> None:
        raise NotImplementedError

    def _segment_alloc(self, event: TraceEvent) -> None:
        raise NotImplementedError

    def _segment_free(self, event: TraceEvent) -> None:
        raise NotImplementedError

    # The loop
    def _new_serial(self, address: int) -> int:
        self._serial += 1
        self._serial_at[address] = self._serial
        return self._serial

    def run(self, events: Sequence[TraceEvent], freed: str, measure_from: int | None = None) -> None:
        for event in events:
            if measure_from is not None and event.index >= measure_from:
                measure_from = None  # the span measured begins: peaks restart here
                self._reset_peaks()
                self.allocations = self.same_decisions = self.same_addresses = 0
                self.first_disagreement = None
            if event.action not in (SEGMENT_FREE, SEGMENT_UNMAP):
                self._releasing = False
            if event.action == ALLOC:
                self._alloc(event)
            elif event.action == freed:
                self._free(event)
            elif event.action in (SEGMENT_ALLOC, SEGMENT_MAP):
                self._grown_since_alloc += event.size
                self._segment_alloc(event)
            elif event.action in (SEGMENT_FREE, SEGMENT_UNMAP):
                if not self._releasing:  # one empty_cache() (or OOM retry) frees a run of segments
                    self.simulated.release_cached_segments()
                    self._releasing = True
                self._segment_free(event)

    def _alloc(self, event: TraceEvent) -> None:
        if event.address in self._serial_at:
            raise InvalidInputError(
                f"trace event {event.index} allocates {event.address:#x} while it is still allocated: "
                "the trace's frees do not match its allocations"
            )
        serial = self._new_serial(event.address)
        real_grown, self._grown_since_alloc = self._grown_since_alloc, 0
        self._real_alloc(serial, event)
        self.simulated.malloc(serial, event.size)
        self.simulated.segment_address_hint = None
        simulated_grown = self.simulated.last_grown_bytes
        self.allocations += 1
        same = simulated_grown == real_grown
        self.same_decisions += same
        self.same_addresses += self.simulated.last_block_address == event.address
        if not same and self.first_disagreement is None:
            self.first_disagreement = Disagreement(event.index, event.size, _decision(real_grown),
                                                   _decision(simulated_grown))  # fmt: skip

    def _free(self, event: TraceEvent) -> None:
        serial = self._serial_at.pop(event.address, None)
        if serial is None:
            raise InvalidInputError(
                f"trace event {event.index} frees {event.address:#x}, which is not allocated: "
                "the trace's frees do not match its allocations"
            )
        self._real_free(serial)
        self.simulated.free(serial)


class _SegmentReplay(_Replay):
    """Segments of their own (the default): both sides are address-exact allocator models."""

    def __init__(self, start: StartState, settings: FollowedSettings) -> None:
        super().__init__()
        self.real = AddressedAllocatorModel(settings)
        self.simulated = AddressedAllocatorModel(settings)
        for model in (self.real, self.simulated):
            for segment in start.segments:
                model.add_segment(segment.address, segment.size, segment.small)
        for block in start.blocks:
            serial = self._new_serial(block.address)
            for model in (self.real, self.simulated):
                model.place(serial, block.address, block.requested_bytes, block.block_bytes)
        self.start_segments, self.start_reserved_bytes = len(start.segments), start.reserved_bytes
        self._reset_peaks()
        self._new_segment_address: int | None = None

    @property
    def real_reserved_bytes(self) -> int:
        return self.real.reserved_bytes

    @property
    def real_peak_reserved_bytes(self) -> int:
        return self.real.peak_reserved_bytes

    @property
    def real_peak_allocated_bytes(self) -> int:
        return self.real.peak_allocated_bytes

    def _reset_peaks(self) -> None:
        self.real.reset_peaks()
        self.simulated.reset_peaks()

    def _real_alloc(self, serial: int, event: TraceEvent) -> None:
        self.simulated.segment_address_hint, self._new_segment_address = self._new_segment_address, None
        self.real.place(serial, event.address, event.size)

    def _real_free(self, serial: int) -> None:
        self.real.free(serial)

    def _segment_alloc(self, event: TraceEvent) -> None:
        self.real.add_segment(event.address, event.size, event.size == SMALL_SEGMENT_BYTES)
        self._new_segment_address = event.address

    def _segment_free(self, event: TraceEvent) -> None:
        if not self.real.release_segment(event.address):
            raise InvalidInputError(
                f"trace event {event.index} frees the segment at {event.address:#x}, which is not "
                "a wholly free segment here: the trace does not match its allocations"
            )


class _ExpandableReplay(_Replay):
    """``expandable_segments:True``: the GPU's side is counted from its map/unmap events and blocks.

    Blocks of expandable segments always split at 512 bytes, so the real allocated bytes are
    the rounded requests; the reserve is what the trace mapped. The model decides its own
    mappings from the same mapped ranges and live blocks at the first event.
    """

    def __init__(self, start: StartState, mapped: MappedStart) -> None:
        super().__init__()
        self.simulated = ExpandableSegmentsModel()
        for small, base in mapped.bases.items():
            self.simulated.add_segment(base, small, mapped.ranges[small])
        self._real_blocks: dict[int, int] = {}
        for block in start.blocks:
            serial = self._new_serial(block.address)
            self._real_blocks[serial] = block.block_bytes
            if not self.simulated.place(serial, block.address, block.requested_bytes, block.block_bytes):
                self.notes.append(
                    f"a block live before recording at {block.address:#x} lies outside the mapped ranges"
                )
        self.start_segments = sum(len(pieces) for pieces in mapped.ranges.values())
        self.start_reserved_bytes = self._reserved = mapped.mapped_bytes
        self._allocated = sum(self._real_blocks.values())
        self._reset_peaks()

    @property
    def real_reserved_bytes(self) -> int:
        return self._reserved

    @property
    def real_peak_reserved_bytes(self) -> int:
        return self._peak_reserved

    @property
    def real_peak_allocated_bytes(self) -> int:
        return self._peak_allocated

    def _reset_peaks(self) -> None:
        self._peak_reserved, self._peak_allocated = self._reserved, self._allocated
        self.simulated.reset_peaks()

    def _note(self) -> None:
        self._peak_reserved = max(self._peak_reserved, self._reserved)
        self._peak_allocated = max(self._peak_allocated, self._allocated)

    def _real_alloc(self, serial: int, event: TraceEvent) -> None:
        self._real_blocks[serial] = round_size(event.size)
        self._allocated += self._real_blocks[serial]
        self._note()

    def _real_free(self, serial: int) -> None:
        self._allocated -= self._real_blocks.pop(serial, 0)

    def _segment_alloc(self, event: TraceEvent) -> None:
        self._reserved += event.size
        self._note()

    def _segment_free(self, event: TraceEvent) -> None:
        self._reserved -= event.size


def _window(events: list[TraceEvent], first: int | None, last: int | None) -> list[TraceEvent]:
    """The events up to ``last`` (the state before ``first`` still has to be replayed)."""
    count = events[-1].index + 1 if events else 0
    if (first is not None and not 0 <= first < count) or (last is not None and not 0 <= last < count):
        raise InvalidInputError(f"--from-event/--to-event must lie within the trace's events 0..{count - 1}")
    if first is not None and last is not None and first > last:
        raise InvalidInputError(f"--from-event {first} comes after --to-event {last}: swap them")
    return [event for event in events if last is None or event.index <= last]


def _decision(grown_bytes: int) -> str:
    return f"new segment of {grown_bytes} B" if grown_bytes else "cached block"
