"""Tests of the caching-allocator replay: one per rule of CUDACachingAllocator.cpp, peaks derived by hand."""

from __future__ import annotations

import pytest

from memprobe.backends.allocator_replay import allocator_model, replay
from memprobe.backends.caching_allocator import FREE, Event

KIB, MIB = 2**10, 2**20


def _alloc(serial: int, nbytes: int) -> Event:
    return (serial, nbytes, "op")


def _free(serial: int) -> Event:
    return (serial, FREE, "")


def test_requests_are_rounded_to_512_bytes_in_2mib_small_segments() -> None:
    """1 byte counts as a 512-byte block; 513 bytes as 1024; both share one 2 MiB segment."""
    result = replay([_alloc(1, 1), _alloc(2, 513)])
    assert result.peak_allocated_bytes == 512 + 1024
    assert result.peak_requested_bytes == 514
    assert result.peak_reserved_bytes == 2 * MIB and result.segments == 1


def test_small_pool_splits_down_to_a_512_byte_remainder() -> None:
    """1 MiB and 1 MiB - 512 fill a 2 MiB segment but for 512 bytes, which still serve a request."""
    result = replay([_alloc(1, MIB), _alloc(2, MIB - 512), _alloc(3, 100)])
    assert result.peak_allocated_bytes == 2 * MIB
    assert result.peak_reserved_bytes == 2 * MIB and result.segments == 1


def test_mid_sized_requests_split_a_20mib_segment() -> None:
    """Requests between 1 and 10 MiB are cut from 20 MiB segments: three 5 MiB blocks fit one."""
    result = replay([_alloc(1, 5 * MIB), _alloc(2, 5 * MIB), _alloc(3, 5 * MIB)])
    assert result.peak_allocated_bytes == 15 * MIB
    assert result.peak_reserved_bytes == 20 * MIB and result.segments == 1


def test_a_large_block_keeps_a_tail_of_1mib_or_less_as_allocated() -> None:
    """11 MiB gets a 12 MiB segment; its 1 MiB remainder is not split, so 12 MiB count as allocated."""
    result = replay([_alloc(1, 11 * MIB)])
    assert result.peak_allocated_bytes == 12 * MIB == result.peak_reserved_bytes
    assert result.peak_requested_bytes == 11 * MIB


def test_a_large_block_splits_a_tail_over_1mib() -> None:
    """10 MiB + 1 B rounds to 10 MiB + 512 in a 12 MiB segment; the 2 MiB - 512 tail is split off."""
    result = replay([_alloc(1, 10 * MIB + 1)])
    assert result.peak_allocated_bytes == 10 * MIB + 512
    assert result.peak_reserved_bytes == 12 * MIB


def test_best_fit_takes_the_smallest_cached_block_that_holds_the_request() -> None:
    """With 12 MiB and 14 MiB segments cached, a 11.5 MiB request takes the 12 MiB one: no new segment."""
    events = [_alloc(1, 14 * MIB), _alloc(2, 12 * MIB), _free(1), _free(2), _alloc(3, 11 * MIB + 512 * KIB)]
    result = replay(events, measure_from=4)
    assert result.peak_allocated_bytes == 12 * MIB  # the 512 KiB tail is not split in the large pool
    assert result.peak_reserved_bytes == 26 * MIB and result.segments == 2


def test_freed_neighbours_merge_so_a_larger_request_reuses_the_segment() -> None:
    """Two 5 MiB blocks freed from one 20 MiB segment merge with its free tail: 18 MiB then fits."""
    events = [_alloc(1, 5 * MIB), _alloc(2, 5 * MIB), _free(1), _free(2), _alloc(3, 18 * MIB)]
    result = replay(events)
    assert result.peak_reserved_bytes == 20 * MIB and result.segments == 1


def test_the_cache_is_kept_from_warm_up_to_the_measured_step() -> None:
    """Peaks are reset where the measured step begins, but the warm-up's cached segment stays reserved."""
    events = [_alloc(1, 5 * MIB), _free(1), _alloc(2, 3 * MIB)]
    result = replay(events, measure_from=2)
    assert result.peak_allocated_bytes == 3 * MIB
    assert result.peak_reserved_bytes == 20 * MIB and result.segments == 1


def test_expandable_segments_map_pages_instead_of_new_segments() -> None:
    """12 MiB then 6 MiB: a 12 MiB and a 20 MiB segment, or one mapped 20 MiB page holding both."""
    events = [_alloc(1, 12 * MIB), _alloc(2, 6 * MIB)]
    plain = replay(events)
    expandable = replay(events, expandable_segments=True)
    assert plain.peak_reserved_bytes == 32 * MIB and plain.segments == 2
    assert expandable.peak_reserved_bytes == 20 * MIB and expandable.segments == 1
    assert plain.peak_allocated_bytes == expandable.peak_allocated_bytes == 18 * MIB
    grown = replay([*events, _alloc(3, 10 * MIB)], expandable_segments=True)
    assert grown.peak_reserved_bytes == 40 * MIB and grown.segments == 1  # one more page, same segment


def test_under_a_limit_cached_segments_are_released_before_an_oom() -> None:
    """At 30 MiB, a cached 20 MiB segment is given back so a 12 MiB segment can be taken."""
    events = [_alloc(1, 5 * MIB), _free(1), _alloc(2, 12 * MIB)]
    result = replay(events, limit_bytes=30 * MIB)
    assert not result.oom
    assert result.peak_reserved_bytes == 20 * MIB and result.segments == 1


def test_an_oom_names_the_request_when_nothing_can_be_released() -> None:
    """A live 5 MiB block pins its 20 MiB segment: 16 MiB more cannot fit 20 MiB of limit."""
    result = replay([_alloc(1, 5 * MIB), (2, 16 * MIB, "aten.convolution.default")], limit_bytes=20 * MIB)
    assert result.oom and result.oom_request_bytes == 16 * MIB and result.oom_op == "aten.convolution.default"


def test_span_peaks_are_each_span_own() -> None:
    """Each span reports its own peaks; the overall peaks cover every span."""
    events = [_alloc(1, 5 * MIB), _free(1), _alloc(2, 30 * MIB), _free(2), _alloc(3, KIB)]
    result = replay(events, spans=[(0, "forward"), (2, "backward"), (4, "optimizer")])
    assert result.span_peaks["forward"] == (5 * MIB, 20 * MIB)
    assert result.span_peaks["backward"] == (30 * MIB, 50 * MIB)
    assert result.span_peaks["optimizer"] == (KIB, 52 * MIB)
    assert result.peak_allocated_bytes == 30 * MIB and result.peak_reserved_bytes == 52 * MIB


def test_empty_storages_and_unknown_frees_are_ignored() -> None:
    model = allocator_model()
    assert model.malloc(1, 0)
    model.free(1)
    model.free(99)
    assert model.allocated_bytes == model.reserved_bytes == 0


@pytest.mark.parametrize("expandable", [False, True])
def test_random_traffic_keeps_the_books(expandable: bool) -> None:
    """Allocated never exceeds reserved; freeing everything leaves nothing allocated."""
    import random

    rng = random.Random(7)
    model = allocator_model(expandable_segments=expandable)
    live: list[int] = []
    for serial in range(1, 3000):
        if live and rng.random() < 0.45:
            model.free(live.pop(rng.randrange(len(live))))
        else:
            model.malloc(serial, rng.choice([100, 4 * KIB, 700 * KIB, 3 * MIB, 11 * MIB, 40 * MIB]))
            live.append(serial)
        assert model.requested_bytes <= model.allocated_bytes <= model.reserved_bytes
    for serial in live:
        model.free(serial)
    assert model.allocated_bytes == 0 and model.requested_bytes == 0
    model.release_cached_segments()
    assert model.reserved_bytes == 0 or expandable
