"""Snapshots: the safe reader, the start state rebuilt mid-run, and the model against real traces."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import pytest

from memprobe.backends.caching_allocator import CachingAllocatorModel, round_size_power2
from memprobe.core.errors import InvalidInputError
from memprobe.snapshots.check import check_snapshot
from memprobe.snapshots.reader import LoadedSnapshot, load_snapshot
from tests.snapshot_helpers import (
    GPU_TRACES,
    MIB,
    alloc,
    free,
    load_shared,
    segment,
    shared_trace,
    snapshot,
    write_pickle,
)

S = 0x7F0000000000  # a segment's address


def _check(data: dict, **options: object):  # type: ignore[no-untyped-def]
    return check_snapshot(LoadedSnapshot("test", data), **options)  # type: ignore[arg-type]


class _Touch:
    """Unpickling this would create a file: the reader must refuse it before it runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.path,))


def test_a_pickle_naming_a_global_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = snapshot([], alloc(S, 512))
    data["payload"] = _Touch(str(marker))
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(InvalidInputError, match=r"refusing to load posix\.mkdir"):
        load_snapshot(path)
    assert not marker.exists()


def test_pickle_json_and_gzip_json_read_the_same(tmp_path: Path) -> None:
    data = load_shared("MAGMA27")
    readings = [
        load_snapshot(write_pickle(tmp_path / "a.pickle", data)).snapshot,
        load_snapshot(_write(tmp_path / "b.json", json.dumps(data).encode())).snapshot,
        load_snapshot(shared_trace("MAGMA27")).snapshot,
    ]
    assert readings[0] == readings[1] == readings[2]
    assert load_snapshot(shared_trace("MAGMA27")).source["repository"] == "MAGMA27/assignment2-systems"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps(snapshot([], alloc(S, 512)))[:-20], "truncated or damaged pickle"),
        (gzip.compress(b'{"segments": []}', mtime=0)[:-6], "truncated or damaged gzip"),
        (b"\x89PNG\r\n", "neither a snapshot pickle nor snapshot JSON"),
        (json.dumps({"device_traces": []}).encode(), "no 'segments' list"),
        (json.dumps({"segments": [], "device_traces": "x"}).encode(), "not a list of per-device"),
    ],
    ids=["cut pickle", "cut gzip", "an image", "no segments", "traces not lists"],
)
def test_foreign_and_damaged_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_snapshot(_write(tmp_path / "f.pickle", content))


def test_a_trace_that_starts_mid_run_is_rebuilt_from_addresses() -> None:
    """Weights (live to the end) and activations (freed in the trace) existed before recording."""
    weights, old = S, S + 4 * MIB
    data = snapshot(
        [segment(S, 20 * MIB, [(weights, 4 * MIB, "active_allocated"), (S + 4 * MIB, 16 * MIB, "inactive")])],
        [*free(old, 6 * MIB), *alloc(old, 8 * MIB), *alloc(old + 8 * MIB, 3 * MIB), *free(old, 8 * MIB)],
    )
    result = _check(data)
    assert result.start_segments == 1 and result.start_reserved_bytes == 20 * MIB
    assert result.start_allocated_bytes == 10 * MIB  # weights + the 6 MiB freed without an alloc
    assert result.real_peak_reserved_bytes == result.simulated_peak_reserved_bytes == 20 * MIB
    assert result.real_peak_allocated_bytes == result.simulated_peak_allocated_bytes == 15 * MIB
    assert result.decision_agreement == 1.0 and result.address_agreement == 1.0
    assert result.first_disagreement is None and result.notes == ()


def test_segments_freed_in_the_trace_existed_before_it_and_a_run_of_frees_is_one_empty_cache() -> None:
    """A cached segment freed by empty_cache() is part of the start state; the model releases it too."""
    data = snapshot(
        [
            segment(S, 20 * MIB, [(S, 4 * MIB, "active_allocated"), (S + 4 * MIB, 16 * MIB, "inactive")]),
            segment(S + (2 << 32), 30 * MIB, [(S + (2 << 32), 30 * MIB, "active_allocated")]),
        ],
        [
            *free(S + (1 << 32), 12 * MIB),
            {"action": "segment_free", "addr": S + (1 << 32), "size": 12 * MIB, "frames": []},
            {"action": "segment_alloc", "addr": S + (2 << 32), "size": 30 * MIB, "frames": []},
            *alloc(S + (2 << 32), 30 * MIB),
        ],
    )
    result = _check(data)
    assert result.start_reserved_bytes == 32 * MIB
    assert result.real_peak_reserved_bytes == result.simulated_peak_reserved_bytes == 50 * MIB
    assert result.decision_agreement == 1.0 and result.address_agreement == 1.0
    assert result.real_final_reserved_bytes == result.simulated_final_reserved_bytes == 50 * MIB
    assert result.notes == ()


def test_a_block_live_before_recording_keeps_the_unsplit_tail_a_later_neighbour_reveals() -> None:
    """Found on Wedsonlin's medium_512 training trace: a 4 MiB block had kept 960 KiB beyond it.

    The trace allocates 960 KiB past the block's end while the block is live; a free remainder
    of the large pool is always above 1 MiB, so the gap was the block's own unsplit tail. Read
    as free memory instead, the model put the next 8 MiB elsewhere and counted 960 KiB less.
    """
    tail = 960 * 1024
    block, later = S, S + 4 * MIB + tail
    data = snapshot(
        [segment(S, 20 * MIB, [(S, 20 * MIB, "inactive")])],
        [*alloc(later, 8 * MIB), *free(block, 4 * MIB), *free(later, 8 * MIB)],
    )
    result = _check(data)
    assert result.start_allocated_bytes == 4 * MIB + tail
    assert result.address_agreement == 1.0
    assert result.real_peak_allocated_bytes == result.simulated_peak_allocated_bytes == 12 * MIB + tail


def test_the_real_medium_512_training_trace_is_replayed_block_for_block() -> None:
    result = check_snapshot(load_snapshot(shared_trace("medium_512_training")))
    assert result.address_agreement == 1.0 and result.decision_agreement == 1.0
    assert result.real_peak_allocated_bytes == result.simulated_peak_allocated_bytes


def test_frees_that_do_not_match_allocations_are_refused() -> None:
    data = snapshot([segment(S, 20 * MIB, [(S, 20 * MIB, "inactive")])],
                    [*alloc(S, 4 * MIB), *alloc(S, 4 * MIB)])  # fmt: skip
    with pytest.raises(InvalidInputError, match="still allocated"):
        _check(data)


def test_no_trace_and_several_devices_are_refused_unless_one_is_chosen() -> None:
    with pytest.raises(InvalidInputError, match="_record_memory_history"):
        _check(snapshot([], []))
    data = snapshot([segment(S, 20 * MIB, [(S, 20 * MIB, "inactive")])], alloc(S, 4 * MIB))
    data["device_traces"].append(alloc(S + (1 << 33), 4 * MIB))
    with pytest.raises(InvalidInputError, match="--device-index"):
        _check(data)
    assert _check(data, device_index=0).device_index == 0


def test_settings_the_model_does_not_follow_are_named() -> None:
    data = snapshot([segment(S, 20 * MIB, [(S, 20 * MIB, "inactive")])], alloc(S, 4 * MIB),
                    garbage_collection_threshold=0.6)  # fmt: skip
    assert _check(data).settings_not_followed == ("garbage_collection_threshold=0.6",)


def test_max_split_size_keeps_oversize_blocks_whole_and_for_large_requests() -> None:
    model = CachingAllocatorModel(max_split_size=32 * MIB)
    model.malloc(1, 40 * MIB)
    model.free(1)
    model.malloc(2, 4 * MIB)  # below max_split_size: the oversize cached block is not used
    assert model.reserved_bytes == 60 * MIB
    model.malloc(3, 36 * MIB)  # within 20 MiB of 40 MiB: served whole, not split
    assert model.reserved_bytes == 60 * MIB and model.allocated_bytes == 44 * MIB  # 4 MiB + 40 MiB whole


def test_roundup_power2_divisions_round_as_pytorch() -> None:
    divisions = (4,) * 16
    assert round_size_power2(102_400, divisions) == 114_688
    assert round_size_power2(1500, divisions) == 1536  # not above 512 x divisions: plain rounding
    assert round_size_power2(1 << 20, divisions) == 1 << 20  # a power of two stays
    assert round_size_power2(5 * MIB + 1, divisions) == 6 * MIB


def test_every_shared_trace_is_in_the_project_with_its_source() -> None:
    sources = json.loads((GPU_TRACES / "sources.json").read_text())
    assert {entry["file"] for entry in sources} == {path.name for path in GPU_TRACES.glob("*.json.gz")}
    assert all(len(entry["commit"]) == 40 for entry in sources)


def _map(action: str, address: int, size: int) -> list[dict[str, object]]:
    return [{"action": action, "addr": address, "size": size, "stream": 0, "time_us": 0, "frames": []}]


def test_expandable_segments_map_pages_and_empty_cache_unmaps_whole_free_pages_anywhere() -> None:
    """Pages of 20 MiB mapped on demand; empty_cache unmaps the free page at the segment's start.

    The trace is what PyTorch's allocator records for this sequence (map_block before each alloc
    that needs pages; unmap_block of the whole pages inside a free block).
    """
    page = 20 * MIB
    trace = [
        *_map("segment_map", S, page), *alloc(S, 12 * MIB), *alloc(S + 12 * MIB, 6 * MIB),
        *_map("segment_map", S + page, page), *alloc(S + 18 * MIB, 10 * MIB),
        *_map("segment_map", S + 2 * page, page), *alloc(S + 28 * MIB, 15 * MIB),
        *free(S, 12 * MIB), *free(S + 12 * MIB, 6 * MIB), *free(S + 18 * MIB, 10 * MIB),
        *_map("segment_unmap", S, page),
    ]  # fmt: skip
    dump = segment(S + page, 2 * page, [(S + page, 8 * MIB, "inactive"), (S + 28 * MIB, 15 * MIB, "active_allocated"),
                                         (S + 43 * MIB, 17 * MIB, "inactive")])  # fmt: skip
    dump["is_expandable"] = True
    result = _check(snapshot([dump], trace, expandable_segments=True))
    assert result.start_reserved_bytes == 0 and result.allocations == 4
    assert result.real_peak_reserved_bytes == result.simulated_peak_reserved_bytes == 3 * page
    assert result.real_peak_allocated_bytes == result.simulated_peak_allocated_bytes == 43 * MIB
    assert result.real_final_reserved_bytes == result.simulated_final_reserved_bytes == 2 * page
    assert result.decision_agreement == 1.0 and result.first_disagreement is None
    assert result.notes == ()


def test_expandable_segments_start_from_the_ranges_mapped_before_recording() -> None:
    """A mapped range and a live block that existed before recording are rebuilt from the dump."""
    page = 20 * MIB
    trace = [
        *alloc(S + 4 * MIB, 10 * MIB),
        *_map("segment_map", S + page, page),
        *alloc(S + 14 * MIB, 8 * MIB),
    ]
    dump = segment(S, 2 * page, [(S, 4 * MIB, "active_allocated"), (S + 4 * MIB, 10 * MIB, "active_allocated"),
                                 (S + 14 * MIB, 8 * MIB, "active_allocated"), (S + 22 * MIB, 18 * MIB, "inactive")])  # fmt: skip
    dump["is_expandable"] = True
    result = _check(snapshot([dump], trace, expandable_segments=True))
    assert result.start_reserved_bytes == page and result.start_allocated_bytes == 4 * MIB
    assert result.real_peak_reserved_bytes == result.simulated_peak_reserved_bytes == 2 * page
    assert result.decision_agreement == 1.0
