"""Replay a step's allocation events through the allocator model its settings call for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from memprobe.backends.caching_allocator import FREE, CachingAllocatorModel, Event, ReplayResult
from memprobe.backends.expandable_segments import ExpandableSegmentsModel

AllocatorModel = CachingAllocatorModel | ExpandableSegmentsModel


def allocator_model(
    *,
    expandable_segments: bool = False,
    limit_bytes: int | None = None,
    max_split_size: int | None = None,
    roundup_power2_divisions: Sequence[int] = (),
) -> AllocatorModel:
    """The model of the caching allocator under these ``PYTORCH_CUDA_ALLOC_CONF`` settings."""
    if expandable_segments:
        return ExpandableSegmentsModel(limit_bytes=limit_bytes)
    return CachingAllocatorModel(
        limit_bytes=limit_bytes,
        max_split_size=max_split_size,
        roundup_power2_divisions=roundup_power2_divisions,
    )


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
    model = allocator_model(expandable_segments=expandable_segments, limit_bytes=limit_bytes)
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
